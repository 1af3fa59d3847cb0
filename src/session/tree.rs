//! The conversation as a tree of turns: editing a question or regenerating an answer adds a
//! sibling version of that turn, and `active_leaf` names the last turn of the conversation being
//! shown; the conversation is the path from the root to it. Pure data: reading and writing
//! files is `format`'s job.

use std::collections::BTreeMap;

use super::images::SessionImage;
use crate::chat::{ChatTurn, ImageData};
use crate::error::{Error, Result};
use crate::generation::{StopReason, Timings};
use crate::sampling::SamplingParams;

/// Identifies a turn within its session.
pub type TurnId = u64;

/// The model a turn was answered by (for the record and for exports).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    pub vision_model: String,
    pub llm_model: String,
    pub dtype: String,
    pub device: String,
}

impl ModelInfo {
    /// The loaded model as a transcript records it.
    pub fn of(m: &crate::engine::ModelSummary) -> Self {
        Self {
            vision_model: m.choice.vision.display().to_string(),
            llm_model: m.choice.llm.describe(),
            dtype: m.precision_label(),
            device: m.device.clone(),
        }
    }
}

/// How one answer was produced.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub stop: StopReason,
    pub timings: Timings,
}

impl TurnStats {
    pub fn of(g: &crate::generation::Generation) -> Self {
        Self {
            prompt_tokens: g.prompt_tokens,
            generated_tokens: g.generated_tokens(),
            stop: g.stop,
            timings: g.timings,
        }
    }

    /// Whether the answer was stopped early by the user.
    pub fn was_stopped(&self) -> bool {
        self.stop == StopReason::Cancelled
    }

    /// Decode speed, as `Generation::tokens_per_second` gives it while answering.
    pub fn tokens_per_second(&self) -> Option<f64> {
        crate::generation::tokens_per_second(self.generated_tokens, self.timings.decode_s)
    }
}

/// One finished exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub id: TurnId,
    /// The turn this one follows; `None` for a first turn.
    pub parent: Option<TurnId>,
    /// Content hashes, in the order the images were given.
    pub images: Vec<String>,
    pub query: String,
    pub answer: String,
    pub token_ids: Vec<u32>,
    pub created_at: u64,
    /// The settings this answer was generated with.
    pub settings: Option<SamplingParams>,
    pub stats: Option<TurnStats>,
    /// The model that answered (recorded when the answer finished).
    pub model: Option<ModelInfo>,
    /// The first turn (index on this turn's branch) the model saw when answering; `None` in
    /// files written before long stories were trimmed, which means 0.
    pub context_start: Option<usize>,
}

/// What a new turn consists of before it has an id and a place in the tree.
#[derive(Debug, Clone, Default)]
pub struct NewTurn {
    pub images: Vec<ImageData>,
    pub query: String,
    pub answer: String,
    pub token_ids: Vec<u32>,
    pub settings: Option<SamplingParams>,
    pub stats: Option<TurnStats>,
    pub model: Option<ModelInfo>,
    pub context_start: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct Session {
    pub title: String,
    pub created_at: u64,
    pub updated_at: u64,
    /// The model and settings of the latest answer (each turn also records its own).
    pub model: Option<ModelInfo>,
    pub settings: Option<SamplingParams>,
    /// Every turn of every branch, in the order they were made.
    pub turns: Vec<Turn>,
    /// The last turn of the conversation being shown.
    pub active_leaf: Option<TurnId>,
    pub images: BTreeMap<String, SessionImage>,
    /// The format version the file was read from, when older than the current one.
    pub migrated_from: Option<u32>,
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Session {
    pub fn new() -> Self {
        let now = now_unix();
        Self { created_at: now, updated_at: now, ..Default::default() }
    }

    /// Adds an image (deduplicated by content) and returns its hash.
    pub fn add_image(&mut self, img: &ImageData) -> String {
        self.images.entry(img.hash.clone()).or_insert_with(|| SessionImage::from_data(img));
        img.hash.clone()
    }

    /// Appends a finished turn after the active leaf; the title defaults to the first question.
    pub fn push_turn(&mut self, turn: NewTurn) -> TurnId {
        self.add_turn(self.active_leaf, turn)
    }

    /// Adds a turn after `parent` (a new version of the turns already there, if any) and makes it
    /// the active leaf.
    pub fn add_turn(&mut self, parent: Option<TurnId>, turn: NewTurn) -> TurnId {
        let hashes = turn.images.iter().map(|i| self.add_image(i)).collect();
        if self.title.is_empty() {
            self.title = title_from(&turn.query);
        }
        // Ids are dense from 0 (loading renumbers), so the next one cannot overflow.
        let id = self.turns.iter().map(|t| t.id.saturating_add(1)).max().unwrap_or(0);
        let now = now_unix();
        // The session's model and settings are those of its latest answer, recorded now (not
        // whenever the file is next saved, when another model may be loaded).
        if turn.model.is_some() {
            self.model = turn.model.clone();
        }
        if turn.settings.is_some() {
            self.settings = turn.settings.clone();
        }
        self.turns.push(Turn {
            id,
            parent,
            images: hashes,
            query: turn.query,
            answer: turn.answer,
            token_ids: turn.token_ids,
            created_at: now,
            settings: turn.settings,
            stats: turn.stats,
            model: turn.model,
            context_start: turn.context_start,
        });
        self.active_leaf = Some(id);
        self.updated_at = now;
        id
    }

    pub fn turn(&self, id: TurnId) -> Option<&Turn> {
        // Ids grow as turns are made, so the list is sorted by id unless the file was edited by
        // hand: search it first (walking a long conversation stays linear), then scan.
        match self.turns.binary_search_by_key(&id, |t| t.id) {
            Ok(i) => Some(&self.turns[i]),
            Err(_) => self.turns.iter().find(|t| t.id == id),
        }
    }

    /// The turns that follow `parent`, oldest first: the versions of that position.
    pub fn children(&self, parent: Option<TurnId>) -> Vec<&Turn> {
        self.turns.iter().filter(|t| t.parent == parent).collect()
    }

    /// The conversation being shown: root to active leaf.
    pub fn active_path(&self) -> Vec<&Turn> {
        let mut path = Vec::new();
        let mut cur = self.active_leaf.and_then(|id| self.turn(id));
        while let Some(t) = cur {
            path.push(t);
            cur = t.parent.and_then(|p| self.turn(p));
            if path.len() > self.turns.len() {
                break; // a cycle in a hand-edited file; show what we have
            }
        }
        path.reverse();
        path
    }

    /// Index (on the active path) of the first turn the model still sees: where the latest
    /// answer's window began. Earlier turns stay in the transcript but left the model's view.
    pub fn view_start(&self) -> usize {
        let path = self.active_path();
        path.last().and_then(|t| t.context_start).unwrap_or(0).min(path.len().saturating_sub(1))
    }

    /// Which version of its position `id` is (0-based) and how many there are.
    pub fn version_of(&self, id: TurnId) -> (usize, usize) {
        let Some(t) = self.turn(id) else { return (0, 0) };
        let siblings = self.children(t.parent);
        (siblings.iter().position(|s| s.id == id).unwrap_or(0), siblings.len())
    }

    /// Shows version `id`: the active leaf becomes the newest turn at the end of its branch.
    pub fn switch_to(&mut self, id: TurnId) {
        if self.turn(id).is_none() {
            return;
        }
        let mut leaf = id;
        while let Some(newest) = self.children(Some(leaf)).last() {
            leaf = newest.id;
        }
        self.active_leaf = Some(leaf);
    }

    /// Removes turn `id`; the turns after it stay, now following its parent.
    pub fn delete_turn(&mut self, id: TurnId) {
        let Some(turn) = self.turn(id).cloned() else { return };
        for t in &mut self.turns {
            if t.parent == Some(id) {
                t.parent = turn.parent;
            }
        }
        self.turns.retain(|t| t.id != id);
        if self.active_leaf == Some(id) {
            self.active_leaf = turn.parent;
            // Prefer continuing into what followed the deleted turn, if anything did.
            if let Some(next) = self.children(turn.parent).last().map(|t| t.id) {
                self.switch_to(next);
            }
        }
        self.drop_unused_images();
        self.updated_at = now_unix();
    }

    /// Forgets images no turn refers to any more.
    fn drop_unused_images(&mut self) {
        let used: std::collections::HashSet<&String> = self.turns.iter().flat_map(|t| &t.images).collect();
        let unused: Vec<String> = self.images.keys().filter(|h| !used.contains(h)).cloned().collect();
        for h in unused {
            self.images.remove(&h);
        }
    }

    /// The images of a turn, as the pipeline takes them.
    pub fn turn_images(&self, turn: &Turn) -> Result<Vec<ImageData>> {
        turn.images
            .iter()
            .map(|h| {
                let img = self.images.get(h).ok_or_else(|| {
                    Error::Request(format!("the session refers to image {h}, which it does not list"))
                })?;
                img.data().ok_or_else(|| Error::Image {
                    name: img.name.clone(),
                    msg: format!("unavailable in this session: {}", img.problem.as_deref().unwrap_or("missing")),
                })
            })
            .collect()
    }

    /// The images that cannot be used, with the reason.
    pub fn image_problems(&self) -> Vec<String> {
        self.unavailable_images()
            // The hash comes from the file: its first 12 characters, not bytes (a byte index
            // inside a multi-byte character panics; the session fuzzer found one).
            .map(|(i, p)| format!("image {} ({}): {p}", i.name, i.hash.chars().take(12).collect::<String>()))
            .collect()
    }

    /// The images whose bytes are missing or damaged, with why.
    pub fn unavailable_images(&self) -> impl Iterator<Item = (&SessionImage, &str)> {
        self.images.values().filter_map(|i| i.problem.as_deref().map(|p| (i, p)))
    }

    /// The active conversation as the model pipeline takes it, followed by a new question.
    /// Fails, naming the image, when a stored image is gone: the conversation could not be
    /// reproduced without it.
    pub fn chat_turns(&self, query: &str, images: &[ImageData]) -> Result<Vec<ChatTurn>> {
        self.chat_turns_after(self.active_leaf, query, images)
    }

    /// The conversation up to and including `parent`, followed by a new question (for a new
    /// version of the turn after `parent`).
    pub fn chat_turns_after(&self, parent: Option<TurnId>, query: &str, images: &[ImageData]) -> Result<Vec<ChatTurn>> {
        let mut chain = Vec::new();
        let mut cur = parent.and_then(|id| self.turn(id));
        while let Some(t) = cur {
            chain.push(t);
            cur = t.parent.and_then(|p| self.turn(p));
            if chain.len() > self.turns.len() {
                return Err(Error::Request("the session's turns form a cycle".into()));
            }
        }
        chain.reverse();
        let mut out = Vec::with_capacity(chain.len() + 1);
        for turn in chain {
            out.push(ChatTurn {
                images: self.turn_images(turn)?,
                query: turn.query.clone(),
                answer: Some(turn.answer.clone()),
                context_start: turn.context_start.unwrap_or(0),
            });
        }
        out.push(ChatTurn::question(query, images.to_vec()));
        Ok(out)
    }
}

/// A title from the first question: its first line, at most 60 characters.
pub fn title_from(query: &str) -> String {
    let line = query.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let mut t: String = line.chars().take(60).collect();
    if line.chars().count() > 60 {
        t.push('…');
    }
    if t.is_empty() {
        "Untitled".into()
    } else {
        t
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn png(color: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(5, 3, image::Rgb(color));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    pub(crate) fn sample_session() -> Session {
        let a = ImageData::new("a.png", png([1, 2, 3]));
        let b = ImageData::new("b.png", png([4, 5, 6]));
        let mut s = Session::new();
        s.settings = Some(SamplingParams { seed: Some(9), ..Default::default() });
        let turn = |images: Vec<ImageData>, q: &str, a: &str, ids: Vec<u32>| NewTurn {
            images,
            query: q.into(),
            answer: a.into(),
            token_ids: ids,
            settings: Some(SamplingParams { temperature: 0.0, ..Default::default() }),
            stats: None,
            model: None,
            context_start: None,
        };
        let first = s.push_turn(turn(
            vec![a.clone(), b],
            "第一个问题 \u{0007} 🐱\n",
            "答案\t\"quoted\"\u{0000}",
            vec![5, 6, 7],
        ));
        s.push_turn(turn(vec![], "text only", "ok", vec![8]));
        s.push_turn(turn(vec![a], "same image again", "yes", vec![]));
        // A second version of the second turn, then back to the first branch.
        s.add_turn(Some(first), turn(vec![], "edited question", "another answer", vec![9]));
        s.switch_to(1);
        s
    }

    #[test]
    fn branches_switch_and_delete() {
        let s = sample_session();
        let path: Vec<&str> = s.active_path().iter().map(|t| t.query.as_str()).collect();
        assert_eq!(path, ["第一个问题 \u{0007} 🐱\n", "text only", "same image again"]);
        assert_eq!(s.version_of(1), (0, 2));
        assert_eq!(s.version_of(3), (1, 2));
        let mut s2 = s.clone();
        s2.switch_to(3);
        assert_eq!(s2.active_path().len(), 2);
        assert_eq!(s2.active_path()[1].query, "edited question");
        // The model sees the branch being shown.
        let turns = s2.chat_turns("next", &[]).unwrap();
        assert_eq!(turns[1].answer.as_deref(), Some("another answer"));
        // Deleting the middle turn keeps what followed it.
        let mut s3 = s.clone();
        s3.delete_turn(1);
        let path: Vec<&str> = s3.active_path().iter().map(|t| t.query.as_str()).collect();
        assert_eq!(path, ["第一个问题 \u{0007} 🐱\n", "same image again"]);
        assert_eq!(s3.version_of(2), (0, 2), "the kept turn now sits beside the other version");
        // Deleting the only turn with an image drops the image.
        let mut s4 = Session::new();
        s4.push_turn(NewTurn {
            images: vec![ImageData::new("x.png", png([9, 9, 9]))],
            query: "q".into(),
            ..Default::default()
        });
        s4.delete_turn(0);
        assert!(s4.images.is_empty() && s4.active_path().is_empty());
    }

    #[test]
    fn titles_come_from_the_first_line() {
        assert_eq!(title_from("\n  hello world \nmore"), "hello world");
        assert_eq!(title_from(""), "Untitled");
        assert_eq!(title_from(&"长".repeat(70)).chars().count(), 61);
    }
}
