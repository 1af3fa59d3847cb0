//! The tiny random-weight checkpoint, built into the binary so the demo runs anywhere: it is
//! written to the data folder on first use and loaded like any user's model folders.

use std::path::{Path, PathBuf};

use crate::assets::TINY_MODEL_FILES;
use crate::error::{Error, Result};
use crate::fs::write_atomic;

/// The demo's vision and LLM folders under `root`.
pub fn dirs(root: &Path) -> (PathBuf, PathBuf) {
    (root.join("vision"), root.join("llm"))
}

/// Whether `dir` is one of the demo's folders (the UI labels such a model as random weights).
pub fn is_demo(dir: &Path) -> bool {
    dir.parent().and_then(|p| p.file_name()).is_some_and(|n| n == "demo-model")
        || dir.components().any(|c| c.as_os_str() == "tiny-ziya")
}

/// Writes the demo checkpoint under `root` (`<data>/demo-model`), replacing files that differ.
pub fn install(root: &Path) -> Result<(PathBuf, PathBuf)> {
    for (rel, bytes) in TINY_MODEL_FILES {
        let path = root.join(rel);
        let same = std::fs::metadata(&path).map(|m| m.len() == bytes.len() as u64).unwrap_or(false)
            && std::fs::read(&path).map(|b| b == *bytes).unwrap_or(false);
        if !same {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            write_atomic(&path, bytes)?;
        }
    }
    Ok(dirs(root))
}

#[cfg(test)]
mod tests {
    #[test]
    fn installs_a_loadable_copy() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("demo-model");
        let (vision, llm) = super::install(&root).unwrap();
        assert!(super::is_demo(&vision) && super::is_demo(&llm));
        crate::model::read_vision_config(&vision).unwrap();
        crate::model::read_llm_config(&llm).unwrap();
        // Idempotent, and repairs a damaged file.
        std::fs::write(llm.join("tokenizer.json"), b"{}").unwrap();
        super::install(&root).unwrap();
        crate::tokenizer::ChatTokenizer::from_dir(&llm).unwrap();
    }
}
