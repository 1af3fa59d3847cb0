//! What the window tells the user, as data: notices, load errors and device notes are kept typed
//! and worded at draw time in the current language, so switching languages re-words them too.
//! The detail of a problem (what the file system, a decoder or candle said) is shown as it came.

use std::path::PathBuf;

use crate::device::{DeviceKind, DeviceNote};
use crate::error::{FitOption, Problem};
use crate::store::TRASH_DAYS;
use crate::ui::i18n::{fill, Tr};

/// Why a file could not be attached.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Unreadable(String),
    NotAnImage(String),
}

/// One notice.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// An answer that did not come.
    AnswerFailed(Problem),
    /// A file that could not be attached.
    ImageRefused {
        name: String,
        refusal: Refusal,
    },
    /// An image of the conversation whose bytes are missing or damaged.
    ImageUnavailable {
        name: String,
        detail: String,
    },
    /// Something the user asked for did not work.
    Problem(Problem),
    /// The conversation cannot be sent as it stands (e.g. an image of it is gone).
    CannotContinue(Problem),
    /// The session store could not be opened: nothing will be saved.
    StoreUnavailable(Problem),
    Saved(PathBuf),
    /// An export would have replaced this file; nothing was written.
    ExportExists(PathBuf),
    TurnDeleted,
    ConversationDeleted(String),
    Copied,
    /// A sentence that needs no translation (already in the UI's language).
    Plain(&'static str),
}

impl Message {
    pub fn text(&self, tr: &Tr) -> String {
        match self {
            Message::AnswerFailed(p) => fill(tr.answer_failed, &[&problem(p, tr)]),
            Message::ImageRefused { name, refusal: Refusal::Unreadable(e) } => fill(tr.cannot_read, &[name, e]),
            Message::ImageRefused { name, refusal: Refusal::NotAnImage(e) } => fill(tr.not_an_image, &[name, e]),
            Message::ImageUnavailable { name, detail } => fill(tr.image_unavailable, &[name, detail]),
            Message::Problem(p) => problem(p, tr),
            Message::CannotContinue(p) => fill(tr.cannot_continue, &[&problem(p, tr)]),
            Message::StoreUnavailable(p) => match p {
                Problem::Io { path, detail } => fill(tr.store_unavailable, &[&path.display(), detail]),
                other => fill(tr.store_unavailable, &[&"", &problem(other, tr)]),
            },
            Message::Saved(path) => fill(tr.saved_to, &[&path.display()]),
            Message::ExportExists(path) => fill(tr.export_exists, &[&path.display()]),
            Message::TurnDeleted => tr.turn_deleted.to_string(),
            Message::Copied => tr.copied.to_string(),
            Message::ConversationDeleted(title) => fill(tr.conversation_deleted, &[title, &TRASH_DAYS]),
            Message::Plain(s) => s.to_string(),
        }
    }
}

/// A problem in the UI's language.
pub fn problem(p: &Problem, tr: &Tr) -> String {
    match p {
        Problem::Io { path, detail } => fill(tr.err_io, &[&path.display(), detail]),
        Problem::Config { path, detail } => fill(tr.err_config, &[&path.display(), detail]),
        Problem::Checkpoint { path, detail } => fill(tr.err_checkpoint, &[&path.display(), detail]),
        Problem::Tokenizer { path, detail } => fill(tr.err_tokenizer, &[&path.display(), detail]),
        Problem::Image { name, detail } => fill(tr.err_image, &[name, detail]),
        Problem::Session { path, detail } => fill(tr.err_session, &[&path.display(), detail]),
        Problem::TooLong(t) => {
            fill(tr.err_too_long, &[&t.prompt.saturating_add(t.max_new), &t.prompt, &t.max_new, &t.context])
        }
        Problem::DoesNotFit(n) => {
            let mut text = fill(tr.err_no_fit, &[&human_bytes(n.needed), &human_bytes(n.free)]);
            if n.fits.is_empty() {
                text.push(' ');
                text.push_str(tr.err_no_fit_none);
            }
            text
        }
        Problem::Cancelled => tr.err_cancelled.to_string(),
        Problem::Other(detail) => fill(tr.err_other, &[detail]),
    }
}

/// A choice that fits, as its button says it: "Use 4-bit (≈ 7.9 GB)".
pub fn fit_option(o: &FitOption, tr: &Tr) -> String {
    let quant = o.quant.map(|q| match q {
        crate::quant::Quant::Q8_0 => tr.fit_8bit,
        crate::quant::Quant::Q6K => tr.fit_6bit,
        crate::quant::Quant::Q4K => tr.fit_4bit,
    });
    let what = match (o.dtype == candle_core::DType::F16, quant) {
        (true, Some(q)) => format!("{} + {q}", tr.fit_f16),
        (true, None) => tr.fit_f16.to_string(),
        (false, Some(q)) => q.to_string(),
        (false, None) => "f32".to_string(),
    };
    fill(tr.use_fit, &[&what, &human_bytes(o.total)])
}

fn human_bytes(b: u64) -> String {
    format!("{:.1} GB", b as f64 / 1e9)
}

/// A device note in the UI's language.
pub fn device_note(n: &DeviceNote, tr: &Tr) -> String {
    match n {
        DeviceNote::NotInBuild(d) => fill(tr.note_not_in_build, &[&d.label()]),
        DeviceNote::Unavailable(d, why) => fill(tr.note_unavailable, &[&d.label(), why]),
        DeviceNote::Bf16AsF16 => tr.note_bf16.to_string(),
    }
}

/// Whether a device can be offered in this build (a CPU-only build offers only the CPU).
pub fn offered_devices() -> Vec<DeviceKind> {
    DeviceKind::ALL.into_iter().filter(|d| d.compiled_in()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::i18n::{EN, ZH};

    #[test]
    fn problems_are_worded_in_either_language_with_their_detail() {
        let p = Problem::Config { path: "/m/llm/config.json".into(), detail: "missing field `hidden_size`".into() };
        let zh = Message::AnswerFailed(p.clone()).text(&ZH);
        assert!(zh.starts_with("回答失败") && zh.contains("模型配置") && zh.contains("/m/llm/config.json"), "{zh}");
        assert!(zh.contains("hidden_size"), "the detail is kept: {zh}");
        let en = Message::AnswerFailed(p).text(&EN);
        assert!(en.starts_with("Answer failed") && en.contains("configuration"), "{en}");
        let note = DeviceNote::Unavailable(DeviceKind::Cuda, "no driver".into());
        assert!(device_note(&note, &ZH).contains("不可用") && device_note(&note, &EN).contains("not available"));
    }
}
