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
    /// A question that cannot fit in the model's context even alone.
    #[error("{0}")]
    TooLong(TooLong),
    /// A model that does not fit in free memory (with the choices that would).
    #[error("{0}")]
    DoesNotFit(Box<NoFit>),
    /// Something is already where an export or output would go; nothing was written. The app
    /// asks before trying again with overwriting allowed.
    #[error("{}: already exists; nothing was written (pass --force to replace it)", path.display())]
    Exists { path: PathBuf },
    /// A request that cannot be served as asked (unknown device, bad settings, ...).
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

/// Why a question cannot be answered at all: even alone it does not fit in the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong {
    /// Positions the question alone needs (its prompt), the new tokens reserved, the context.
    pub prompt: usize,
    pub max_new: usize,
    pub context: usize,
}

impl std::fmt::Display for TooLong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the question needs {} positions (prompt {} + up to {} new tokens) but the model's context is {}; \
             shorten it, use fewer images or lower max_new_tokens",
            self.prompt.saturating_add(self.max_new),
            self.prompt,
            self.max_new,
            self.context
        )
    }
}

/// A choice that fits in free memory: the precision and quantization, and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FitOption {
    pub dtype: candle_core::DType,
    pub quant: Option<crate::quant::Quant>,
    pub total: u64,
}

/// A model that does not fit in free memory: what it needs (and where that goes, worded for the
/// command line), what is free, and the choices that would fit (best quality first).
#[derive(Debug, Clone, PartialEq)]
pub struct NoFit {
    pub needed: u64,
    pub free: u64,
    /// "weights … vision + … LLM, KV cache … for … positions, …".
    pub breakdown: String,
    pub fits: Vec<FitOption>,
}

/// Bytes as the messages show them: `21.73 GB`.
pub fn gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

impl std::fmt::Display for NoFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the model needs about {} ({}) but only {} is free", gb(self.needed), self.breakdown, gb(self.free))?;
        match self.fits.first() {
            Some(o) => {
                let dtype = match o.dtype {
                    candle_core::DType::F16 => " --dtype f16",
                    candle_core::DType::BF16 => " --dtype bf16",
                    _ => "",
                };
                let quant = o.quant.map(|q| format!(" --quant {}", q.name())).unwrap_or_default();
                write!(f, "; with{dtype}{quant} it needs about {}", gb(o.total))
            }
            None => f.write_str("; no quantization makes it fit"),
        }
    }
}

/// An error as data that outlives it (cloneable, comparable): what the engine reports and what
/// a front end words in its own language. `detail` is the underlying cause as it came (from
/// the file system, a decoder, candle), shown as is.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// A file or folder cannot be read or written.
    Io {
        path: PathBuf,
        detail: String,
    },
    /// A model folder's configuration is missing or wrong.
    Config {
        path: PathBuf,
        detail: String,
    },
    /// Model weights are missing, damaged or do not match the configuration.
    Checkpoint {
        path: PathBuf,
        detail: String,
    },
    Tokenizer {
        path: PathBuf,
        detail: String,
    },
    Image {
        name: String,
        detail: String,
    },
    Session {
        path: PathBuf,
        detail: String,
    },
    TooLong(TooLong),
    DoesNotFit(Box<NoFit>),
    Cancelled,
    /// Anything else, worded by whoever raised it.
    Other(String),
}

impl From<&Error> for Problem {
    fn from(e: &Error) -> Self {
        match e {
            Error::Io { path, source } => Problem::Io { path: path.clone(), detail: source.to_string() },
            Error::Config { path, msg } => Problem::Config { path: path.clone(), detail: msg.clone() },
            Error::Checkpoint { path, msg } => Problem::Checkpoint { path: path.clone(), detail: msg.clone() },
            Error::Tokenizer { path, msg } => Problem::Tokenizer { path: path.clone(), detail: msg.clone() },
            Error::Image { name, msg } => Problem::Image { name: name.clone(), detail: msg.clone() },
            Error::Session { path, msg } => Problem::Session { path: path.clone(), detail: msg.clone() },
            Error::TooLong(t) => Problem::TooLong(*t),
            Error::DoesNotFit(n) => Problem::DoesNotFit(n.clone()),
            Error::Cancelled => Problem::Cancelled,
            Error::Request(_) | Error::Candle(_) | Error::Exists { .. } => Problem::Other(e.to_string()),
        }
    }
}

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
