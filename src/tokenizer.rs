//! The LLM's tokenizer: `tokenizer.json` when the folder has one, otherwise built from the
//! sentencepiece `tokenizer.model` the way transformers converts LLaMA's ("legacy") tokenizer:
//! BPE with byte fallback, `▁` for spaces and a dummy prefix, `<s>` prepended.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

pub struct ChatTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    /// Ids whose text depends on their neighbours: byte-fallback tokens (`<0x41>`), decoded a
    /// run at a time, and special tokens, which decoding skips (joining the runs around them).
    unsettled: Vec<bool>,
}

/// The largest tokenizer file read: real ones are a few megabytes (LLaMA's tokenizer.json
/// 1.8 MB, large multilingual ones about 30 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 64 << 20;

/// A tokenizer file's bytes: a regular file of at most [`MAX_TOKENIZER_BYTES`].
fn read_limited(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let err = |msg: String| Error::Tokenizer { path: path.to_path_buf(), msg };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(err("is not a regular file".into()));
    }
    if meta.len() > MAX_TOKENIZER_BYTES {
        return Err(err(format!(
            "is {} bytes; tokenizer files of up to {MAX_TOKENIZER_BYTES} bytes are read",
            meta.len()
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_TOKENIZER_BYTES + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_TOKENIZER_BYTES {
        return Err(err(format!("grew past {MAX_TOKENIZER_BYTES} bytes while it was read")));
    }
    Ok(bytes)
}

/// tokenizer.json text → a tokenizer. The tokenizers crate panics on some malformed files (a
/// syntax error inside "decoder", a bad "Precompiled" normalizer): that is an error naming the
/// file like any other.
fn load_tokenizer(json: &[u8], path: &Path) -> Result<Tokenizer> {
    let err = |msg: String| Error::Tokenizer { path: path.to_path_buf(), msg };
    match crate::panics::contained(|| Tokenizer::from_bytes(json)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(err(format!("cannot load: {e}"))),
        Err(panic) => Err(err(format!("cannot load: the tokenizers library failed on it ({panic})"))),
    }
}

impl ChatTokenizer {
    /// Loads `tokenizer.json` from the LLM folder, falling back to `tokenizer.model`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_json_file(&json);
        }
        let model = dir.join("tokenizer.model");
        if model.is_file() {
            return Self::from_sentencepiece_file(&model);
        }
        Err(Error::Tokenizer {
            path: dir.to_path_buf(),
            msg: "the LLM folder has neither tokenizer.json nor tokenizer.model".into(),
        })
    }

    /// A tokenizer.json given as text (e.g. the one a GGUF carries); `source` names it in errors.
    pub fn from_json_str(json: &str, source: &Path) -> Result<Self> {
        Self::from_json_bytes(json.as_bytes(), source).map_err(|e| match e {
            Error::Tokenizer { path, msg } => Error::Tokenizer {
                path,
                msg: msg.replacen("cannot load", "the embedded tokenizer cannot be loaded", 1),
            },
            other => other,
        })
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        Self::from_json_bytes(&read_limited(path)?, path)
    }

    /// A tokenizer from tokenizer.json text; `path` names it in errors.
    pub fn from_json_bytes(json: &[u8], path: &Path) -> Result<Self> {
        Ok(Self::wrap(load_tokenizer(json, path)?, path))
    }

    pub fn from_sentencepiece_file(path: &Path) -> Result<Self> {
        let bytes = read_limited(path)?;
        let err = |msg: String| Error::Tokenizer { path: path.to_path_buf(), msg };
        let json = sentencepiece::to_tokenizer_json(&bytes).map_err(err)?;
        let inner = load_tokenizer(json.to_string().as_bytes(), path)?;
        Ok(Self::wrap(inner, path))
    }

    fn wrap(inner: Tokenizer, path: &Path) -> Self {
        let n = inner.get_vocab_size(true);
        let special = inner.get_added_tokens_decoder();
        let unsettled = (0..n as u32)
            .map(|id| {
                special.get(&id).is_some_and(|t| t.special)
                    || inner.id_to_token(id).is_some_and(|t| {
                        t.len() == 6
                            && t.starts_with("<0x")
                            && t.ends_with('>')
                            && u8::from_str_radix(&t[3..5], 16).is_ok()
                    })
            })
            .collect();
        Self { inner, path: path.to_path_buf(), unsettled }
    }

    /// Whether the text of `id` can still change with the tokens that follow it (byte-fallback
    /// and special tokens).
    pub fn is_unsettled(&self, id: u32) -> bool {
        self.unsettled.get(id as usize).copied().unwrap_or(false)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokenizer as tokenizer.json text.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), msg: format!("cannot serialise: {e}") })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; `special` adds the tokenizer's special tokens (LLaMA: `<s>` first).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), msg: format!("cannot encode: {e}") })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` with special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer { path: self.path.clone(), msg: format!("cannot decode: {e}") })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

/// Turns generated ids into text deltas as they come.
///
/// Byte-fallback tokens are decoded a run at a time (`<0xE4><0xBD><0xA0>` is one character), and
/// a run that is not valid UTF-8 turns *every* byte of it into U+FFFD — so the text of a run is
/// only final once a normal token ends it. Special tokens are skipped when decoding, so they do not
/// end a run. The decoder therefore releases text up to the start of the trailing run of such
/// tokens, and the rest when generation ends.
#[derive(Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    released: String,
    /// Number of ids whose text has been released.
    stable: usize,
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, tok: &ChatTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let mut stable = self.ids.len();
        while stable > 0 && tok.is_unsettled(self.ids[stable - 1]) {
            stable -= 1;
        }
        if stable <= self.stable {
            return Ok(None);
        }
        let text = tok.decode(&self.ids[..stable])?;
        if !text.starts_with(&self.released) {
            return Ok(None); // cannot happen with LLaMA's decoders; the final text settles it
        }
        self.stable = stable;
        let delta = text[self.released.len()..].to_string();
        self.released = text;
        Ok((!delta.is_empty()).then_some(delta))
    }

    /// The rest of the text once generation ends, and the whole decoded answer.
    pub fn finish(&mut self, tok: &ChatTokenizer) -> Result<(String, String)> {
        let text = tok.decode(&self.ids)?;
        let rest = text.strip_prefix(self.released.as_str()).unwrap_or_default().to_string();
        self.released = text.clone();
        Ok((rest, text))
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The text released so far.
    pub fn released(&self) -> &str {
        &self.released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ChatTokenizer {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-ziya/llm");
        ChatTokenizer::from_dir(&dir).unwrap()
    }

    /// Streams `ids` and checks the pieces add up to the final decode at every step.
    fn stream(tok: &ChatTokenizer, ids: &[u32]) -> String {
        let mut d = StreamDecoder::new();
        let mut out = String::new();
        for &id in ids {
            if let Some(delta) = d.push(tok, id).unwrap() {
                out.push_str(&delta);
            }
            assert!(tok.decode(d.ids()).unwrap().starts_with(&out) || d.released() == out);
        }
        let (rest, full) = d.finish(tok).unwrap();
        out.push_str(&rest);
        assert_eq!(out, full);
        out
    }

    #[test]
    fn streamed_pieces_add_up_to_the_decoded_answer() {
        let tok = tiny();
        let byte = |b: u8| tok.token_id(&format!("<0x{b:02X}>")).unwrap();
        let word = tok.encode("data", false).unwrap();
        // '4' as a byte token, then an invalid run: the whole run decodes to U+FFFD, so "4" must
        // not be released before the run ends.
        let mut ids = word.clone();
        ids.extend([byte(b'4'), byte(0xE4), byte(0x41)]);
        ids.extend(&word);
        // An end-of-text token between two byte runs is skipped, joining them into one run.
        ids.extend([byte(0xE4), 2, byte(0xBD), byte(0xA0)]);
        ids.extend(&word);
        let text = stream(&tok, &ids);
        assert!(text.contains('\u{FFFD}') && !text.contains('4'), "{text:?}");
        // A valid multi-byte character split over byte tokens.
        let mut ids = word.clone();
        ids.extend("龘".bytes().map(byte));
        assert!(stream(&tok, &ids).ends_with('龘'));
    }

    #[test]
    fn text_is_released_as_soon_as_it_is_final() {
        let tok = tiny();
        let ids = tok.encode("图片里有 cat and dog", false).unwrap();
        let mut d = StreamDecoder::new();
        for &id in &ids {
            d.push(&tok, id).unwrap();
            if !tok.is_unsettled(id) {
                assert_eq!(d.released(), tok.decode(d.ids()).unwrap(), "a normal token releases all text so far");
            }
        }
    }
}

/// Reading sentencepiece's `ModelProto` (just the fields a LLaMA tokenizer needs) and turning it
/// into the tokenizer.json transformers would write for it.
mod sentencepiece {
    use super::*;
    use serde_json::{json, Value};

    struct Piece {
        piece: String,
        kind: u64,
    }

    #[derive(Default)]
    struct Spec {
        model_type: u64,
        byte_fallback: bool,
        unk_id: u64,
        bos_id: Option<u64>,
        add_dummy_prefix: bool,
    }

    // Piece types in sentencepiece_model.proto.
    const UNKNOWN: u64 = 2;
    const CONTROL: u64 = 3;
    const USER_DEFINED: u64 = 4;
    const BPE: u64 = 2;

    struct Reader<'a> {
        buf: &'a [u8],
        pos: usize,
    }

    impl<'a> Reader<'a> {
        fn varint(&mut self) -> Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = *self.buf.get(self.pos).ok_or("truncated protobuf")?;
                self.pos += 1;
                v |= ((b & 0x7f) as u64) << shift;
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("bad varint".into())
        }
        fn bytes(&mut self) -> Result<&'a [u8], String> {
            let n = self.varint()? as usize;
            let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or("truncated protobuf")?;
            let s = &self.buf[self.pos..end];
            self.pos = end;
            Ok(s)
        }
        /// Next (field, wire type), or None at the end.
        fn key(&mut self) -> Result<Option<(u64, u64)>, String> {
            if self.pos >= self.buf.len() {
                return Ok(None);
            }
            let k = self.varint()?;
            Ok(Some((k >> 3, k & 7)))
        }
        fn skip(&mut self, wire: u64) -> Result<(), String> {
            match wire {
                0 => self.varint().map(|_| ()),
                1 => self.advance(8),
                2 => self.bytes().map(|_| ()),
                5 => self.advance(4),
                w => Err(format!("unsupported protobuf wire type {w}")),
            }
        }
        fn advance(&mut self, n: usize) -> Result<(), String> {
            if self.pos + n > self.buf.len() {
                return Err("truncated protobuf".into());
            }
            self.pos += n;
            Ok(())
        }
    }

    fn parse(buf: &[u8]) -> Result<(Vec<Piece>, Spec), String> {
        let mut r = Reader { buf, pos: 0 };
        let mut pieces = Vec::new();
        let mut spec = Spec { model_type: 1, add_dummy_prefix: true, bos_id: Some(1), ..Default::default() };
        while let Some((field, wire)) = r.key()? {
            match (field, wire) {
                (1, 2) => {
                    let mut pr = Reader { buf: r.bytes()?, pos: 0 };
                    let mut piece = Piece { piece: String::new(), kind: 1 };
                    while let Some((f, w)) = pr.key()? {
                        match (f, w) {
                            (1, 2) => {
                                piece.piece =
                                    String::from_utf8(pr.bytes()?.to_vec()).map_err(|_| "piece is not UTF-8")?
                            }
                            (3, 0) => piece.kind = pr.varint()?,
                            (_, w) => pr.skip(w)?,
                        }
                    }
                    pieces.push(piece);
                }
                (2, 2) => {
                    let mut tr = Reader { buf: r.bytes()?, pos: 0 };
                    while let Some((f, w)) = tr.key()? {
                        match (f, w) {
                            (3, 0) => spec.model_type = tr.varint()?,
                            (35, 0) => spec.byte_fallback = tr.varint()? != 0,
                            (40, 0) => spec.unk_id = tr.varint()?,
                            (41, 0) => {
                                // -1 (disabled) arrives as a 64-bit two's complement varint.
                                let v = tr.varint()? as i64;
                                spec.bos_id = (v >= 0).then_some(v as u64);
                            }
                            (_, w) => tr.skip(w)?,
                        }
                    }
                }
                (3, 2) => {
                    let mut nr = Reader { buf: r.bytes()?, pos: 0 };
                    while let Some((f, w)) = nr.key()? {
                        match (f, w) {
                            (3, 0) => spec.add_dummy_prefix = nr.varint()? != 0,
                            (_, w) => nr.skip(w)?,
                        }
                    }
                }
                (_, w) => r.skip(w)?,
            }
        }
        if pieces.is_empty() {
            return Err("not a sentencepiece model (no pieces)".into());
        }
        Ok((pieces, spec))
    }

    /// transformers' `generate_merges`: every split of a piece into two known pieces, ordered by
    /// the id of the merged piece, then by the length of the left part.
    fn merges(pieces: &[Piece], vocab: &HashMap<&str, usize>) -> Vec<(String, String)> {
        let mut out: Vec<(usize, usize, String, String)> = Vec::new();
        for (id, p) in pieces.iter().enumerate() {
            let chars: Vec<(usize, char)> = p.piece.char_indices().collect();
            for (n_left, &(at, _)) in chars.iter().enumerate().skip(1) {
                let (l, r) = p.piece.split_at(at);
                if vocab.contains_key(l) && vocab.contains_key(r) {
                    out.push((id, n_left, l.to_string(), r.to_string()));
                }
            }
        }
        out.sort_by_key(|m| (m.0, m.1));
        out.into_iter().map(|(_, _, l, r)| (l, r)).collect()
    }

    pub fn to_tokenizer_json(buf: &[u8]) -> Result<Value, String> {
        let (pieces, spec) = parse(buf)?;
        if spec.model_type != BPE {
            return Err(format!(
                "sentencepiece model type {} is not supported (LLaMA tokenizers are BPE); provide tokenizer.json",
                spec.model_type
            ));
        }
        // The first id wins for duplicated pieces, as in a Python dict built in order.
        let mut vocab: HashMap<&str, usize> = HashMap::new();
        for (i, p) in pieces.iter().enumerate().rev() {
            vocab.insert(p.piece.as_str(), i);
        }
        let unk = pieces.get(spec.unk_id as usize).map(|p| p.piece.clone()).unwrap_or_else(|| "<unk>".into());
        let added: Vec<Value> = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.kind, UNKNOWN | CONTROL | USER_DEFINED))
            .map(|(id, p)| {
                json!({"id": id, "content": p.piece, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": p.kind != USER_DEFINED})
            })
            .collect();
        let mut normalizers = Vec::new();
        if spec.add_dummy_prefix {
            normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
        }
        normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
        let post = match spec.bos_id.and_then(|id| pieces.get(id as usize).map(|p| (id, p.piece.clone()))) {
            Some((id, bos)) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos.clone(): {"id": bos, "ids": [id], "tokens": [bos]}}
            }),
            None => Value::Null,
        };
        let vocab_json: serde_json::Map<String, Value> = vocab.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let merges: Vec<Value> = merges(&pieces, &vocab).into_iter().map(|(l, r)| json!([l, r])).collect();
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Sequence", "normalizers": normalizers},
            "pre_tokenizer": null,
            "post_processor": post,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": spec.byte_fallback,
                "ignore_merges": false, "vocab": vocab_json, "merges": merges
            }
        }))
    }

    #[test]
    fn tokenizer_files_that_make_the_tokenizers_crate_panic_are_errors() {
        let wordlevel = r#""model":{"type":"WordLevel","vocab":{"a":0,"[UNK]":1},"unk_token":"[UNK]"}"#;
        // Found by fuzzing (gguf_header): a syntax error inside "decoder" hits an expect().
        let bad_decoder = format!(r#"{{"added_tokens":[],"normalizer":null,"decoder":unll,{wordlevel}}}"#);
        let bad_precompiled = format!(
            r#"{{"added_tokens":[],"normalizer":{{"type":"Precompiled","precompiled_charsmap":"!!"}},"decoder":null,{wordlevel}}}"#
        );
        for json in [bad_decoder, bad_precompiled] {
            let err = ChatTokenizer::from_json_bytes(json.as_bytes(), Path::new("x/tokenizer.json")).err().unwrap();
            let err = err.to_string();
            assert!(err.contains("x/tokenizer.json") && err.contains("cannot load"), "{err}");
        }
        let good = format!(r#"{{"added_tokens":[],"normalizer":null,"decoder":null,{wordlevel}}}"#);
        assert!(ChatTokenizer::from_json_bytes(good.as_bytes(), Path::new("t.json")).is_ok());
    }

    #[test]
    fn tokenizer_files_are_read_bounded() {
        let err = ChatTokenizer::from_json_file(Path::new("/dev/zero")).err().unwrap().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("tokenizer.json");
        std::fs::File::create(&big).unwrap().set_len(MAX_TOKENIZER_BYTES + 1).unwrap();
        let err = ChatTokenizer::from_json_file(&big).err().unwrap().to_string();
        assert!(err.contains("tokenizer files of up to"), "{err}");
    }
}
