//! The conversation layout the model sees — our contract with the model and with saved sessions.
//!
//! For each turn, in order: the embeddings of that turn's images (num_query_tokens each, in the
//! order given), then `<human>:` + query + `\n<bot>:`, and for finished turns the answer + `\n`.
//! Text between two image slots is tokenized as one piece; the first text piece starts with the
//! vision config's `prompt_prefix` and is encoded with the tokenizer's special tokens (BOS), later
//! pieces without. Role names come from the vision config.json.
//!
//! The real model's training template cannot be checked here, so everything about it lives in
//! [`ChatTemplate`]: change the separator there and nowhere else.

use std::sync::Arc;

use crate::error::Result;
use crate::model::config::VisionRepoConfig;
use crate::tokenizer::ChatTokenizer;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    pub human: String,
    pub bot: String,
    pub prompt_prefix: String,
}

impl ChatTemplate {
    pub fn from_config(cfg: &VisionRepoConfig) -> Self {
        Self {
            human: cfg.human_name.clone(),
            bot: cfg.assistant_name.clone(),
            prompt_prefix: cfg.prompt_prefix.clone(),
        }
    }

    /// The text that asks a question and hands the turn to the model.
    pub fn question(&self, query: &str) -> String {
        format!("{}:{}\n{}:", self.human, query, self.bot)
    }

    /// The text that follows a finished answer.
    pub fn answer(&self, answer: &str) -> String {
        format!("{answer}\n")
    }
}

/// An image as the model pipeline gets it: its content hash (the identity used for caching and
/// in session files), a display name, and the encoded bytes.
#[derive(Clone)]
pub struct ImageData {
    pub hash: String,
    pub name: String,
    pub bytes: Arc<[u8]>,
}

impl std::fmt::Debug for ImageData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageData({}, {} bytes)", self.name, self.bytes.len())
    }
}

impl ImageData {
    pub fn new(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes = bytes.into();
        Self { hash: content_hash(&bytes), name: name.into(), bytes }
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One turn of a conversation; `answer` is `None` for the turn being asked.
#[derive(Debug, Clone, Default)]
pub struct ChatTurn {
    pub images: Vec<ImageData>,
    pub query: String,
    pub answer: Option<String>,
    /// For an answered turn: the index of the first turn the model saw when it answered it
    /// (0: the whole conversation; see [`context_window`]).
    pub context_start: usize,
}

impl ChatTurn {
    /// The question being asked.
    pub fn question(query: impl Into<String>, images: Vec<ImageData>) -> Self {
        Self { images, query: query.into(), answer: None, context_start: 0 }
    }
}

/// A piece of the prompt: text to tokenize, or the slot of an image (index into the images list
/// in order of appearance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Image(usize),
}

/// Lays out the turns as text pieces and image slots.
pub fn segments(template: &ChatTemplate, turns: &[ChatTurn]) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut image_index = 0;
    let mut first_text = true;
    let push_text = |out: &mut Vec<Segment>, text: &mut String, first: &mut bool| {
        if text.is_empty() {
            return;
        }
        let mut piece = std::mem::take(text);
        if *first {
            piece.insert_str(0, &template.prompt_prefix);
            *first = false;
        }
        out.push(Segment::Text(piece));
    };
    for turn in turns {
        for _ in &turn.images {
            push_text(&mut out, &mut text, &mut first_text);
            out.push(Segment::Image(image_index));
            image_index += 1;
        }
        text.push_str(&template.question(&turn.query));
        if let Some(answer) = &turn.answer {
            text.push_str(&template.answer(answer));
        }
    }
    push_text(&mut out, &mut text, &mut first_text);
    out
}

/// A position's identity in the prompt, used to find how much of a cached prompt is reusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptItem {
    Token(u32),
    /// Query token `slot` of the image with this content hash.
    Image {
        hash: Arc<str>,
        slot: usize,
    },
}

/// The tokenized prompt: pieces of token ids and image slots, plus the images in order.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub pieces: Vec<PromptPiece>,
    pub images: Vec<ImageData>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptPiece {
    Tokens(Vec<u32>),
    Image(usize),
}

impl Prompt {
    pub fn build(template: &ChatTemplate, tokenizer: &ChatTokenizer, turns: &[ChatTurn]) -> Result<Self> {
        let mut pieces = Vec::new();
        let mut first = true;
        for seg in segments(template, turns) {
            match seg {
                Segment::Text(text) => {
                    pieces.push(PromptPiece::Tokens(tokenizer.encode(&text, first)?));
                    first = false;
                }
                Segment::Image(i) => pieces.push(PromptPiece::Image(i)),
            }
        }
        let images = turns.iter().flat_map(|t| t.images.iter().cloned()).collect();
        Ok(Self { pieces, images })
    }

    /// The identity of every position, given `query_tokens` positions per image.
    pub fn items(&self, query_tokens: usize) -> Vec<PromptItem> {
        let mut out = Vec::new();
        for piece in &self.pieces {
            match piece {
                PromptPiece::Tokens(ids) => out.extend(ids.iter().map(|&id| PromptItem::Token(id))),
                PromptPiece::Image(i) => {
                    let hash: Arc<str> = self.images[*i].hash.as_str().into();
                    out.extend((0..query_tokens).map(|slot| PromptItem::Image { hash: hash.clone(), slot }));
                }
            }
        }
        out
    }

    pub fn len(&self, query_tokens: usize) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                PromptPiece::Tokens(ids) => ids.len(),
                PromptPiece::Image(_) => query_tokens,
            })
            .sum()
    }
}

/// The part of a conversation the model sees when answering its last turn, and that part's
/// prompt.
#[derive(Debug, Clone)]
pub struct Window {
    /// Index of the first turn in the window.
    pub start: usize,
    pub prompt: Prompt,
    /// Prompt positions (text tokens plus `query_tokens` per image).
    pub len: usize,
}

pub use crate::error::TooLong;

/// Which turns the model sees when answering the last of `turns` (turn n, the unanswered one),
/// with context `context` (max_position_embeddings) and `max_new` positions reserved. The
/// contract (issue 10; tests/fixtures/make_fixtures.py implements it independently):
///
/// 1. Start from the first turn the previous answered turn started from
///    (`turns[n-1].context_start`), or 0 for the first turn.
/// 2. If the layout of turns `start..=n` plus `max_new` exceeds the context, move `start` forward
///    one whole turn at a time until the layout of `start..=n` plus `max_new` is at most half the
///    context (integer division), or `start == n`.
/// 3. If turn n alone plus `max_new` exceeds the context, refuse with the numbers.
///
/// The window is laid out exactly as a whole conversation is (its first piece starts with the
/// prompt prefix and gets BOS). Dropping to half the context, rather than just until it fits,
/// keeps the window stable for several turns, so the KV-cache prefix is reused between trims.
pub fn context_window(
    template: &ChatTemplate,
    tokenizer: &ChatTokenizer,
    turns: &[ChatTurn],
    query_tokens: usize,
    context: usize,
    max_new: usize,
) -> Result<std::result::Result<Window, TooLong>> {
    let Some(n) = turns.len().checked_sub(1) else {
        return Err(crate::Error::Request("there is no question to answer".into()));
    };
    let layout = |start: usize| -> Result<Window> {
        let prompt = Prompt::build(template, tokenizer, &turns[start..])?;
        let len = prompt.len(query_tokens);
        Ok(Window { start, prompt, len })
    };
    let fits = |w: &Window, limit: usize| w.len.saturating_add(max_new) <= limit;
    // A start beyond the question (a damaged file) is no start at all.
    let previous = n.checked_sub(1).map_or(0, |p| turns[p].context_start.min(n));
    let mut window = layout(previous)?;
    if !fits(&window, context) {
        while window.start < n && !fits(&window, context / 2) {
            window = layout(window.start + 1)?;
        }
    }
    if !fits(&window, context) {
        return Ok(Err(TooLong { prompt: window.len, max_new, context }));
    }
    Ok(Ok(window))
}

/// The first turn the model saw for each answered turn of a conversation that arrives without
/// them (an OpenAI client resends the whole history as plain messages), worked out by replaying
/// the rule of [`context_window`]: for each answered turn k in order, `turns[k].context_start`
/// becomes the start `context_window` gives when answering turn k (its answer set aside) after
/// the starts already replayed, with `max_new` positions reserved. A turn that could not have
/// been answered even alone starts at itself. The last turn, if unanswered, is left as it is.
///
/// With the same `max_new` on every request (a client's usual setting), each request's window is
/// the one the previous request answered from, extended or trimmed by the rule, so the KV-cache
/// prefix is reused between turns as in the app. Where the turns were really answered with other
/// settings, the replayed windows may differ from the ones recorded at the time: the app and
/// `ask` keep using the recorded starts.
pub fn replay_context_starts(
    template: &ChatTemplate,
    tokenizer: &ChatTokenizer,
    turns: &mut [ChatTurn],
    query_tokens: usize,
    context: usize,
    max_new: usize,
) -> Result<()> {
    for k in 0..turns.len() {
        let Some(answer) = turns[k].answer.take() else { continue };
        let window = context_window(template, tokenizer, &turns[..=k], query_tokens, context, max_new);
        turns[k].answer = Some(answer);
        turns[k].context_start = match window? {
            Ok(w) => w.start,
            Err(_) => k,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(prefix: &str) -> ChatTemplate {
        ChatTemplate { human: "<human>".into(), bot: "<bot>".into(), prompt_prefix: prefix.into() }
    }

    fn img(name: &str) -> ImageData {
        ImageData::new(name, name.as_bytes().to_vec())
    }

    #[test]
    fn turns_interleave_images_and_text_pieces() {
        let turns = vec![
            ChatTurn { answer: Some("a1".into()), ..ChatTurn::question("q1", vec![img("a"), img("b")]) },
            ChatTurn { answer: Some("a2".into()), ..ChatTurn::question("q2", vec![]) },
            ChatTurn::question("q3", vec![img("c")]),
        ];
        let segs = segments(&template("SYS "), &turns);
        assert_eq!(
            segs,
            vec![
                Segment::Image(0),
                Segment::Image(1),
                Segment::Text("SYS <human>:q1\n<bot>:a1\n<human>:q2\n<bot>:a2\n".into()),
                Segment::Image(2),
                Segment::Text("<human>:q3\n<bot>:".into()),
            ]
        );
    }

    /// The twelve-turn story of the reference fixtures (answered on trimmed windows by
    /// tests/fixtures/make_fixtures.py's independent implementation of the rule): replaying the
    /// rule over the plain history finds the starts the story was answered from.
    #[test]
    fn replayed_starts_equal_the_reference_story() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let cfg: VisionRepoConfig =
            crate::model::config::read_json(&root.join("assets/tiny-ziya/vision/config.json")).unwrap();
        let tokenizer = ChatTokenizer::from_dir(&root.join("assets/tiny-ziya/llm")).unwrap();
        let text = std::fs::read_to_string(root.join("tests/fixtures/reference/cases.json")).unwrap();
        let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
        let story = &cases["long_story"];
        let (context, max_new) = (story["context"].as_u64().unwrap(), story["max_new_tokens"].as_u64().unwrap());
        let reference = story["turns"].as_array().unwrap();
        let mut turns: Vec<ChatTurn> = reference
            .iter()
            .map(|t| {
                let images = t["images"].as_array().unwrap().iter().map(|n| img(n.as_str().unwrap())).collect();
                ChatTurn {
                    answer: Some(t["text"].as_str().unwrap().into()),
                    // Whatever a client's history carries, it is not trusted.
                    context_start: 99,
                    ..ChatTurn::question(t["query"].as_str().unwrap(), images)
                }
            })
            .collect();
        turns.push(ChatTurn::question("next", vec![]));
        let t = ChatTemplate::from_config(&cfg);
        replay_context_starts(&t, &tokenizer, &mut turns, cfg.num_query_tokens, context as usize, max_new as usize)
            .unwrap();
        let got: Vec<usize> = turns[..reference.len()].iter().map(|t| t.context_start).collect();
        let want: Vec<usize> = reference.iter().map(|t| t["context_start"].as_u64().unwrap() as usize).collect();
        assert_eq!(got, want);
        assert!(want.iter().any(|&s| s > 0), "the story is trimmed");
        assert_eq!(turns.last().unwrap().context_start, 0, "the question is left alone");

        // A turn too long to have been answered at all starts at itself.
        let mut turns = vec![
            ChatTurn { answer: Some("a".into()), ..ChatTurn::question("x ".repeat(1000), vec![]) },
            ChatTurn::question("q", vec![]),
        ];
        replay_context_starts(&t, &tokenizer, &mut turns, 32, context as usize, max_new as usize).unwrap();
        assert_eq!(turns[0].context_start, 0);
        let mut turns = vec![
            ChatTurn { answer: Some("a".into()), ..ChatTurn::question("q0", vec![]) },
            ChatTurn { answer: Some("b".into()), ..ChatTurn::question("x ".repeat(1000), vec![]) },
            ChatTurn::question("q", vec![]),
        ];
        replay_context_starts(&t, &tokenizer, &mut turns, 32, context as usize, max_new as usize).unwrap();
        assert_eq!((turns[0].context_start, turns[1].context_start), (0, 1));
    }

    #[test]
    fn text_only_conversation_is_one_piece() {
        let turns = vec![ChatTurn::question("你好", vec![])];
        assert_eq!(segments(&template(""), &turns), vec![Segment::Text("<human>:你好\n<bot>:".into())]);
    }
}
