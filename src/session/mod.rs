//! Conversations: the transcript format shared by `ask --session` and the app.
//!
//! - [`tree`]: the conversation itself — turns forming a tree of versions, the active branch,
//!   the images by content hash. Pure data, no I/O.
//! - [`format`]: the versioned JSON file — loading (with migration from version 1), saving
//!   atomically, backups of older versions. It owns its serialised types, so a change to the
//!   runtime types cannot silently change the file.
//! - [`images`]: the `<name>.images/` folder beside a session file, read as untrusted input.

pub mod format;
pub mod images;
pub mod tree;

pub use format::{ImageStorage, FORMAT, VERSION};
pub use images::{images_dir_name, mime_of, SessionImage};
pub use tree::{now_unix, title_from, ModelInfo, NewTurn, Session, Turn, TurnId, TurnStats};
