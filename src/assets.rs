//! Files built into the binary: the CJK font subset (the window and HTML exports draw Chinese with
//! it where the system has none) and the tiny random-weight checkpoint (the demo model, and the
//! tokenizer random benchmark models borrow). A leaf module: anything may read these bytes.

/// OFL subset of Noto Sans CJK SC (GB2312), see assets/fonts/OFL.txt.
pub static BUNDLED_CJK_FONT: &[u8] = include_bytes!("../assets/fonts/NotoSansSC-Regular-subset.otf");

/// OFL subset of Noto Sans Symbols2: the symbols egui_commonmark draws that no other bundled
/// font has (a code block's copy button 🗐 and its ✔).
pub static BUNDLED_SYMBOLS_FONT: &[u8] = include_bytes!("../assets/fonts/NotoSansSymbols2-subset.ttf");

macro_rules! tiny {
    ($dir:literal, $name:literal) => {
        (concat!($dir, "/", $name), include_bytes!(concat!("../assets/tiny-ziya/", $dir, "/", $name)).as_slice())
    };
}

/// The committed tiny checkpoint (`assets/tiny-ziya`), as (path relative to its root, bytes).
pub static TINY_MODEL_FILES: &[(&str, &[u8])] = &[
    tiny!("vision", "config.json"),
    tiny!("vision", "pytorch_model.bin"),
    tiny!("llm", "config.json"),
    tiny!("llm", "generation_config.json"),
    tiny!("llm", "pytorch_model-00001-of-00003.bin"),
    tiny!("llm", "pytorch_model-00002-of-00003.bin"),
    tiny!("llm", "pytorch_model-00003-of-00003.bin"),
    tiny!("llm", "pytorch_model.bin.index.json"),
    tiny!("llm", "tokenizer.json"),
    tiny!("llm", "tokenizer_config.json"),
    tiny!("llm", "special_tokens_map.json"),
];

/// The tiny checkpoint's tokenizer files, as (file name, bytes).
pub fn tiny_tokenizer_files() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    TINY_MODEL_FILES
        .iter()
        .filter(|(rel, _)| rel.starts_with("llm/tokenizer"))
        .map(|(rel, bytes)| (rel.trim_start_matches("llm/"), *bytes))
}
