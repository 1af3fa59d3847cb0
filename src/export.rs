//! Exports of a conversation for reading elsewhere: a Markdown folder (the .md file and its
//! images) and one self-contained HTML file with the images inline, readable offline in any
//! browser. Both show each turn's images, question and answer, and the model and settings used.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::{Error, Result};
use crate::fs::write_atomic;
use crate::session::{Session, Turn};

/// A file name from a conversation title (no path separators or control characters).
pub fn file_stem_from(title: &str) -> String {
    let s: String =
        title.chars().map(|c| if c.is_control() || "/\\:*?\"<>|".contains(c) { '_' } else { c }).take(60).collect();
    let s = s.trim().to_string();
    if s.is_empty() {
        "conversation".into()
    } else {
        s
    }
}

/// `YYYY-MM-DD HH:MM UTC` for a unix time.
pub fn format_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

fn settings_line(turn: &Turn) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &turn.settings {
        if s.temperature == 0.0 {
            parts.push("greedy".to_string());
        } else {
            parts.push(format!("temperature {}", s.temperature));
            parts.push(format!("top_p {}", s.top_p));
            if s.top_k > 0 {
                parts.push(format!("top_k {}", s.top_k));
            }
            if let Some(seed) = s.seed {
                parts.push(format!("seed {seed}"));
            }
        }
        if s.repeat_penalty != 1.0 {
            parts.push(format!("repetition penalty {}", s.repeat_penalty));
        }
        parts.push(format!("max {} tokens", s.max_new_tokens));
    }
    if let Some(st) = &turn.stats {
        parts.push(format!("{} tokens", st.generated_tokens));
        if st.was_stopped() {
            parts.push("stopped".into());
        }
    }
    parts.join(", ")
}

/// Where the model's view of a long story began when it last answered (the chat's divider).
const HIDDEN_TURNS: &str = "Earlier turns are no longer seen by the model · 以上内容模型已看不到";

fn model_line(session: &Session) -> String {
    match &session.model {
        Some(m) => format!("vision `{}`, LLM `{}` ({}, {})", m.vision_model, m.llm_model, m.dtype, m.device),
        None => "unknown".into(),
    }
}

/// Writes `<parent>/<title>/conversation.md` and its images beside it; returns the .md path.
pub fn write_markdown(session: &Session, parent: &Path) -> Result<PathBuf> {
    let folder = parent.join(file_stem_from(&session.title));
    let images_dir = folder.join("images");
    std::fs::create_dir_all(&images_dir).map_err(|e| Error::io(&images_dir, e))?;
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", session.title);
    let _ = writeln!(md, "*Exported from ziya-visual. Model: {}.*\n", model_line(session));
    let view_start = session.view_start();
    for (i, turn) in session.active_path().into_iter().enumerate() {
        if i == view_start && i > 0 {
            let _ = writeln!(md, "---\n\n*{HIDDEN_TURNS}*\n");
        }
        let _ = writeln!(md, "## {}. {}\n", i + 1, format_date(turn.created_at));
        for hash in &turn.images {
            match session.images.get(hash) {
                Some(img) => match &img.bytes {
                    Some(bytes) => {
                        let file = format!("{hash}.{}", crate::session::images::extension_of(&img.mime));
                        write_atomic(&images_dir.join(&file), bytes)?;
                        let _ = writeln!(md, "![{}](images/{file})\n", img.name.replace(']', "\\]"));
                    }
                    None => {
                        let _ = writeln!(md, "*(image {} is missing)*\n", img.name);
                    }
                },
                None => {
                    let _ = writeln!(md, "*(image {hash} is missing)*\n");
                }
            }
        }
        let _ = writeln!(md, "**Question:**\n");
        for line in turn.query.lines() {
            let _ = writeln!(md, "> {line}");
        }
        let _ = writeln!(md, "\n**Answer** ({}):\n\n{}\n", settings_line(turn), turn.answer);
    }
    let path = folder.join("conversation.md");
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {
                let _ = write!(out, "&#xFFFD;");
            }
            c => out.push(c),
        }
    }
    out
}

/// Markdown answer → HTML; raw HTML in the answer is shown as text, never interpreted.
fn answer_html(markdown: &str) -> String {
    use pulldown_cmark::{Event, Options, Parser};
    let parser = Parser::new_ext(markdown, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).map(|e| match e {
        Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
        other => other,
    });
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, parser);
    // Control characters the model may emit are not allowed in HTML text.
    out.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { '\u{FFFD}' } else { c }).collect()
}

/// One self-contained HTML file (images as data URIs, no external resources).
pub fn render_html(session: &Session) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"zh\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n<style>\n\
         @font-face {{ font-family: 'Ziya CJK'; font-display: block; src: url(data:font/otf;base64,{}) format('opentype'); \
         unicode-range: U+3000-303F, U+3400-4DBF, U+4E00-9FFF, U+FF00-FFEF; }}\n\
         body {{ font-family: 'Ziya CJK', system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 860px; \
         margin: 2em auto; padding: 0 1em; color: #222; background: #fafafa; line-height: 1.6; }}\n\
         .meta {{ color: #666; font-size: 0.9em; }}\n\
         .turn {{ margin: 1.5em 0; }}\n\
         .q, .a {{ border-radius: 10px; padding: 0.8em 1em; margin: 0.4em 0; }}\n\
         .q {{ background: #e8f0fe; white-space: pre-wrap; }}\n\
         .a {{ background: #fff; border: 1px solid #e3e3e3; }}\n\
         .imgs img {{ max-width: 260px; max-height: 260px; border-radius: 6px; margin: 0 0.4em 0.4em 0; \
         vertical-align: top; }}\n\
         .missing {{ color: #a60; }}\n\
         .hidden-turns {{ color: #888; font-size: 0.85em; text-align: center; border-top: 1px solid #ccc; \
         padding-top: 0.3em; }}\n\
         </style>\n</head>\n<body>\n<h1>{}</h1>\n<p class=\"meta\">Exported from ziya-visual · Model: {}</p>\n",
        escape(&session.title),
        // The bundled CJK font for Chinese text (unicode-range: the browser knows up front which
        // text needs it and waits for it, instead of drawing boxes and never repainting).
        base64::engine::general_purpose::STANDARD.encode(crate::assets::BUNDLED_CJK_FONT),
        escape(&session.title),
        escape(&model_line(session).replace('`', ""))
    );
    let view_start = session.view_start();
    for (i, turn) in session.active_path().into_iter().enumerate() {
        if i == view_start && i > 0 {
            let _ = writeln!(h, "<p class=\"hidden-turns\">{}</p>", escape(HIDDEN_TURNS));
        }
        let _ = writeln!(h, "<div class=\"turn\">\n<p class=\"meta\">{}. {}</p>", i + 1, format_date(turn.created_at));
        if !turn.images.is_empty() {
            h.push_str("<div class=\"imgs\">");
            for hash in &turn.images {
                match session.images.get(hash).and_then(|img| img.bytes.as_ref().map(|b| (img, b))) {
                    Some((img, bytes)) => {
                        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
                        let _ = write!(
                            h,
                            "<img src=\"data:{};base64,{data}\" alt=\"{}\" title=\"{}\">",
                            escape(&img.mime),
                            escape(&img.name),
                            escape(&img.name)
                        );
                    }
                    None => {
                        let name = session.images.get(hash).map_or(hash.as_str(), |i| i.name.as_str());
                        let _ = write!(h, "<span class=\"missing\">(image {} is missing)</span>", escape(name));
                    }
                }
            }
            h.push_str("</div>\n");
        }
        let _ = writeln!(h, "<div class=\"q\">{}</div>", escape(&turn.query));
        let _ = writeln!(
            h,
            "<div class=\"a\">{}<p class=\"meta\">{}</p></div>\n</div>",
            answer_html(&turn.answer),
            escape(&settings_line(turn))
        );
    }
    h.push_str("</body>\n</html>\n");
    h
}

/// Writes the HTML export to `path` (".html" added when missing); returns the path written.
pub fn write_html(session: &Session, path: &Path) -> Result<PathBuf> {
    let path = if path.extension().is_some() { path.to_path_buf() } else { path.with_extension("html") };
    write_atomic(&path, render_html(session).as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ImageData;
    use crate::session::NewTurn;

    fn png() -> Vec<u8> {
        let img = image::RgbImage::from_pixel(4, 4, image::Rgb([200, 10, 10]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn session() -> Session {
        let mut s = Session::new();
        s.push_turn(NewTurn {
            images: vec![ImageData::new("猫.png", png())],
            query: "这是什么？<script>alert(1)</script>".into(),
            answer: "一只**猫**。<b>raw</b>\u{0007}".into(),
            settings: Some(Default::default()),
            ..Default::default()
        });
        s
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(format_date(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_date(1_795_596_345), "2026-11-25 08:45 UTC"); // checked with Python's datetime
        assert_eq!(format_date(951_782_400), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn html_is_self_contained_and_escapes_what_it_must() {
        let html = render_html(&session());
        assert!(html.contains("data:image/png;base64,"));
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        assert!(html.contains("<strong>猫</strong>"), "markdown rendered");
        assert!(html.contains("&lt;b&gt;raw&lt;/b&gt;"), "raw HTML in answers is shown, not run");
        assert!(!html.contains('\u{0007}'));
        assert!(
            !html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("url(http"),
            "nothing external"
        );
        assert!(html.contains("@font-face") && html.contains("data:font/otf;base64,"), "CJK font embedded");
        assert!(html.contains("temperature 0.7"));
    }

    #[test]
    fn markdown_export_writes_the_images_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let md = write_markdown(&session(), dir.path()).unwrap();
        let text = std::fs::read_to_string(&md).unwrap();
        assert!(text.contains("![猫.png](images/"));
        let images: Vec<_> = std::fs::read_dir(md.parent().unwrap().join("images")).unwrap().collect();
        assert_eq!(images.len(), 1);
        assert!(text.contains("> 这是什么？"));
    }
}
