//! One error type for everything a user can get wrong: every variant names the file, tensor or
//! setting at fault so the message can be shown as is (CLI stderr line, app error card).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    #[error("image {name}: {msg}")]
    Image { name: String, msg: String },
    #[error("session {}: {msg}", path.display())]
    Session { path: PathBuf, msg: String },
    /// A request that cannot be served as asked (prompt too long, unknown device, ...).
    #[error("{0}")]
    Request(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

/// candle's message without the backtrace it attaches when RUST_BACKTRACE is set: errors here
/// are one line for the user.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => other.to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }
    pub fn checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_errors_are_one_line_even_with_a_backtrace() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch in matmul".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(Error::from(e).to_string(), "shape mismatch in matmul");
    }
}
