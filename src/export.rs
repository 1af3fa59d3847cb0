//! Exports of a conversation for reading elsewhere: a Markdown folder (the .md file and its
//! images) and one self-contained HTML file with the images inline, readable offline in any
//! browser. Both show each turn's images, question and answer, and the model and settings used.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::{Error, Result};
use crate::fs::write_atomic;
use crate::session::{Session, Turn};

/// A file or folder name from a conversation title: one path component that stays where it is
/// put. Separators, control and bidirectional-override characters become `_`; leading and
/// trailing dots and spaces go (so `.` and `..` cannot result, and no hidden files); Windows'
/// reserved device names (`CON`, `NUL`, `COM1`, …) get a `_` in front; at most 60 characters
/// and 120 bytes. An empty result is `conversation`.
pub fn file_stem_from(title: &str) -> String {
    let replaced = title.chars().map(|c| {
        let bidi = matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi || "/\\:*?\"<>|".contains(c) {
            '_'
        } else {
            c
        }
    });
    let mut s = String::new();
    for c in replaced.take(60) {
        if s.len() + c.len_utf8() > 120 {
            break;
        }
        s.push(c);
    }
    let s = s.trim_matches(|c: char| c == '.' || c.is_whitespace()).to_string();
    if s.is_empty() {
        return "conversation".into();
    }
    let base = s.split('.').next().unwrap_or("").trim_end().to_ascii_uppercase();
    let reserved = matches!(base.as_str(), "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$")
        || ((base.starts_with("COM") || base.starts_with("LPT"))
            && base.len() == 4
            && base.as_bytes()[3].is_ascii_digit())
        || ((base.starts_with("COM") || base.starts_with("LPT")) && matches!(&base[3..], "¹" | "²" | "³"));
    if reserved {
        format!("_{s}")
    } else {
        s
    }
}

/// How an export treats what is already there.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Replace an existing export (the CLI's `--force`, or the app after asking). Without it an
    /// existing file is left alone and [`Error::Exists`] names it.
    pub overwrite: bool,
    /// The session file being exported: never written over, nor its images folder.
    pub session_file: Option<PathBuf>,
}

/// Refuses to write `target` over the session file or into its images folder.
fn check_not_session(target: &Path, opts: &ExportOptions) -> Result<()> {
    let Some(session) = &opts.session_file else { return Ok(()) };
    let (Some(t), Some(s)) = (crate::paths::resolved(target), crate::paths::resolved(session)) else { return Ok(()) };
    let images = s.with_file_name(crate::session::images_dir_name(&s));
    if t == s || t.starts_with(&images) {
        return Err(Error::Request(format!(
            "{}: this is the session file being exported (or its images); choose another place for the export",
            target.display()
        )));
    }
    Ok(())
}

/// Whether something (a file, folder or link, even a dangling one) is at `path`.
fn occupied(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// A folder the export writes into: created if missing; an existing one must be a real folder,
/// not a link that could lead anywhere.
fn ensure_real_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(Error::Request(format!("{}: exists and is not a folder; nothing was written", path.display()))),
        Err(_) => std::fs::create_dir(path).map_err(|e| Error::io(path, e)),
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
/// The folder name comes from [`file_stem_from`], so it is always directly inside `parent`. An
/// existing `conversation.md` there (another conversation with the same title, or an earlier
/// export) is only replaced with `opts.overwrite`.
pub fn write_markdown(session: &Session, parent: &Path, opts: &ExportOptions) -> Result<PathBuf> {
    if !parent.is_dir() {
        return Err(Error::Request(format!(
            "{}: is not a folder (export --markdown takes a folder)",
            parent.display()
        )));
    }
    let name = file_stem_from(&session.title);
    debug_assert!(matches!(Path::new(&name).components().collect::<Vec<_>>()[..], [std::path::Component::Normal(_)]));
    let folder = parent.join(&name);
    let path = folder.join("conversation.md");
    if occupied(&path) && !opts.overwrite {
        return Err(Error::Exists { path });
    }
    check_not_session(&path, opts)?;
    ensure_real_dir(&folder)?;
    let images_dir = folder.join("images");
    let mut md = String::new();
    let title = session.title.replace(['\n', '\r'], " ");
    let _ = writeln!(md, "# {title}\n");
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
                        // Bytes are only present when they match their SHA-256 key, so the name
                        // is 64 hex digits; the type comes from the bytes, not the file's claim.
                        let mime = crate::session::mime_of(bytes);
                        let file = format!("{hash}.{}", crate::session::images::extension_of(mime));
                        ensure_real_dir(&images_dir)?;
                        let target = images_dir.join(&file);
                        // Content-addressed: an existing file of the right size is this image.
                        let present = std::fs::symlink_metadata(&target)
                            .is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64);
                        if !present {
                            check_not_session(&target, opts)?;
                            write_atomic(&target, bytes)?;
                        }
                        let alt = img.name.replace(['\n', '\r'], " ").replace(']', "\\]");
                        let _ = writeln!(md, "![{alt}](images/{file})\n");
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

/// Whether a link target may become a live link in an export: only `http:`, `https:` and
/// `mailto:` (an email autolink gets `mailto:` from the renderer). Relative and
/// protocol-relative targets lead nowhere useful from an offline file and are refused too.
/// Entities were already decoded by the parser; a target with any control character or space
/// is refused outright (browsers drop tabs and newlines inside URLs, so `java\tscript:` would be
/// `javascript:`).
fn is_safe_link(dest: &str, link_type: pulldown_cmark::LinkType) -> bool {
    if link_type == pulldown_cmark::LinkType::Email {
        return true;
    }
    if dest.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    let Some(colon) = dest.find(':') else { return false };
    let scheme = &dest[..colon];
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return false; // a '/', '?' or '#' before the colon: a relative URL
    }
    matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https" | "mailto")
}

/// Markdown answer → HTML. Answers are untrusted text: raw HTML is shown as text, never
/// interpreted; only http, https and mailto targets become links (anything else keeps just its
/// text); images are never loaded (an exported file must read the same offline and must not
/// call out when opened) but shown as `[image: alt]`, linked when the target is http(s).
pub(crate) fn answer_html(markdown: &str) -> String {
    use pulldown_cmark::{CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};
    let events: Vec<Event> =
        Parser::new_ext(markdown, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH).collect();
    let mut out_events: Vec<Event> = Vec::with_capacity(events.len());
    // For each open link or image: whether it was emitted as a link.
    let mut open: Vec<bool> = Vec::new();
    let mut links_open = 0usize;
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Html(t) | Event::InlineHtml(t) => out_events.push(Event::Text(t.clone())),
            Event::Start(Tag::Link { link_type, dest_url, title, id }) => {
                let live = links_open == 0 && is_safe_link(dest_url, *link_type);
                if live {
                    links_open += 1;
                    out_events.push(Event::Start(Tag::Link {
                        link_type: *link_type,
                        dest_url: dest_url.clone(),
                        title: title.clone(),
                        id: id.clone(),
                    }));
                }
                open.push(live);
            }
            Event::Start(Tag::Image { dest_url, title, id, .. }) => {
                let live = links_open == 0
                    && is_safe_link(dest_url, LinkType::Inline)
                    && !dest_url.trim_start().to_ascii_lowercase().starts_with("mailto:");
                if live {
                    links_open += 1;
                    out_events.push(Event::Start(Tag::Link {
                        link_type: LinkType::Inline,
                        dest_url: dest_url.clone(),
                        title: title.clone(),
                        id: id.clone(),
                    }));
                }
                open.push(live);
                let has_alt = !matches!(events.get(i + 1), Some(Event::End(TagEnd::Image)));
                out_events.push(Event::Text(CowStr::Borrowed(if has_alt { "[image: " } else { "[image" })));
            }
            Event::End(TagEnd::Link) | Event::End(TagEnd::Image) => {
                if matches!(e, Event::End(TagEnd::Image)) {
                    out_events.push(Event::Text(CowStr::Borrowed("]")));
                }
                if open.pop() == Some(true) {
                    links_open -= 1;
                    out_events.push(Event::End(TagEnd::Link));
                }
            }
            other => out_events.push(other.clone()),
        }
    }
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, out_events.into_iter());
    // Control characters the model may emit are not allowed in HTML text.
    out.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { '\u{FFFD}' } else { c }).collect()
}

/// The Content-Security-Policy of exported files: no scripts, no requests of any kind; only the
/// inline style, the embedded font and the images carried as data URIs.
pub const EXPORT_CSP: &str =
    "default-src 'none'; img-src data:; font-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

/// One self-contained HTML file (images as data URIs, no external resources).
pub fn render_html(session: &Session) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"zh\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{}\">\n\
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
        EXPORT_CSP,
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
                // The type comes from the bytes (the session file's claim could be anything).
                let image = session.images.get(hash).and_then(|img| img.bytes.as_ref().map(|b| (img, b)));
                match image.filter(|(_, b)| crate::session::mime_of(b).starts_with("image/")) {
                    Some((img, bytes)) => {
                        let data = base64::engine::general_purpose::STANDARD.encode(bytes);
                        let _ = write!(
                            h,
                            "<img src=\"data:{};base64,{data}\" alt=\"{}\" title=\"{}\">",
                            crate::session::mime_of(bytes),
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
/// An existing file is only replaced with `opts.overwrite`, and never when it is the session
/// file itself.
pub fn write_html(session: &Session, path: &Path, opts: &ExportOptions) -> Result<PathBuf> {
    let path = if path.extension().is_some() { path.to_path_buf() } else { path.with_extension("html") };
    if path.is_dir() {
        return Err(Error::Request(format!("{}: is a folder (export --html takes a file name)", path.display())));
    }
    check_not_session(&path, opts)?;
    if occupied(&path) && !opts.overwrite {
        return Err(Error::Exists { path });
    }
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
        let md = write_markdown(&session(), dir.path(), &ExportOptions::default()).unwrap();
        let text = std::fs::read_to_string(&md).unwrap();
        assert!(text.contains("![猫.png](images/"));
        let images: Vec<_> = std::fs::read_dir(md.parent().unwrap().join("images")).unwrap().collect();
        assert_eq!(images.len(), 1);
        assert!(text.contains("> 这是什么？"));
    }

    fn hrefs(html: &str) -> Vec<String> {
        html.split("href=\"").skip(1).map(|r| r.split('"').next().unwrap_or("").to_string()).collect()
    }

    #[test]
    fn only_http_https_and_mailto_become_links() {
        let answer = "[a](javascript:alert(1)) [b](JaVaScRiPt:alert(2)) [c](jav&#x61;script:alert(3)) \
                      [d](&#106;avascript:alert(4)) [e](java\tscript:alert(5)) [f](data:text/html,<script>x</script>) \
                      [g][ref] <javascript:alert(7)> [h](vbscript:x) [i](//evil.example/x) [j](relative/page.html) \
                      [k](  javascript:alert(8)) [l](%6Aavascript:alert(9)) [m](file:///etc/passwd)\n\n\
                      [ok1](https://example.com/a?b=1&c=2) [ok2](http://example.com) <https://example.org/auto> \
                      [ok3](mailto:someone@example.com) <someone@example.com> [ok4](HTTPS://EXAMPLE.COM)\n\n\
                      [ref]: javascript:alert(6)\n";
        let html = answer_html(answer);
        let links = hrefs(&html);
        assert_eq!(
            links,
            [
                "https://example.com/a?b=1&amp;c=2",
                "http://example.com",
                "https://example.org/auto",
                "mailto:someone@example.com",
                "mailto:someone@example.com",
                "HTTPS://EXAMPLE.COM"
            ],
            "{html}"
        );
        assert!(!html.to_ascii_lowercase().contains("<script"), "{html}");
        // Refused links keep their text.
        for text in ["a", "b", "g", "j"] {
            assert!(html.contains(&format!(" {text} ")) || html.contains(&format!(">{text} ")), "{text}: {html}");
        }
    }

    #[test]
    fn images_in_answers_never_load_but_show_as_links() {
        let html = answer_html(
            "![cat](http://tracker.example/p.png) ![](//cdn.example/x.png) ![x](data:image/svg+xml,<svg onload=alert(1)>) \
             [![inner](https://a.example/i.png)](https://b.example/) ![ref][r]\n\n[r]: https://c.example/r.png\n",
        );
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("src="), "{html}");
        assert_eq!(
            hrefs(&html),
            ["http://tracker.example/p.png", "https://b.example/", "https://c.example/r.png"],
            "{html}"
        );
        assert!(html.contains("[image: cat]") && html.contains("[image]") && html.contains("[image: inner]"), "{html}");
        assert!(!html.contains("<a href=\"https://a.example"), "no link inside a link: {html}");
    }

    #[test]
    fn html_has_a_content_security_policy_and_only_data_images() {
        let mut s = session();
        s.turns[0].answer = "![x](https://example.com/x.png)".into();
        let html = render_html(&s);
        let csp = html.find("Content-Security-Policy").expect("CSP meta tag");
        assert!(csp < html.find("<style>").unwrap(), "the policy comes before any content");
        assert!(html.contains("img-src data:") && html.contains("default-src 'none'"));
        for src in html.split("src=\"").skip(1) {
            assert!(src.starts_with("data:image/"), "{}", &src[..40.min(src.len())]);
        }
    }

    #[test]
    fn folder_names_stay_one_component_inside_the_chosen_folder() {
        for (title, want) in [
            ("..", "conversation"),
            (".", "conversation"),
            ("/", "_"),
            ("../../etc", "_.._etc"),
            ("  . hidden .  ", "hidden"),
            ("a/b\\c", "a_b_c"),
            ("CON", "_CON"),
            ("nul.txt", "_nul.txt"),
            ("com1", "_com1"),
            ("LPT9.md", "_LPT9.md"),
            ("Console", "Console"),
            ("x\u{202E}gpj.exe", "x_gpj.exe"),
            ("", "conversation"),
        ] {
            assert_eq!(file_stem_from(title), want, "{title:?}");
        }
        let long = file_stem_from(&"長".repeat(100));
        assert!(long.len() <= 120 && long.chars().count() <= 60, "{}", long.len());
        let emoji = file_stem_from(&"🐱".repeat(100));
        assert!(emoji.len() <= 120, "{}", emoji.len());
        for title in ["..", ".", "/", "../x", "x/../..", "\u{0}", "C:\\x", "~"] {
            let name = file_stem_from(title);
            let comps: Vec<_> = Path::new(&name).components().collect();
            assert!(matches!(comps[..], [std::path::Component::Normal(_)]), "{title:?} → {name:?}");
        }
    }

    #[test]
    fn markdown_exports_never_escape_or_overwrite_silently() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("exports");
        std::fs::create_dir(&dir).unwrap();
        let precious = outer.path().join("conversation.md");
        std::fs::write(&precious, "keep me").unwrap();
        let mut s = session();
        s.title = "..".into();
        let md = write_markdown(&s, &dir, &ExportOptions::default()).unwrap();
        assert_eq!(md, dir.join("conversation").join("conversation.md"));
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
        // A second conversation with the same title is not written over the first.
        let mut other = session();
        other.title = "..".into();
        other.turns[0].answer = "different".into();
        let err = write_markdown(&other, &dir, &ExportOptions::default()).unwrap_err();
        assert!(matches!(&err, Error::Exists { path } if path == &md), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert!(!std::fs::read_to_string(&md).unwrap().contains("different"));
        write_markdown(&other, &dir, &ExportOptions { overwrite: true, ..Default::default() }).unwrap();
        assert!(std::fs::read_to_string(&md).unwrap().contains("different"));
    }

    #[test]
    #[cfg(unix)]
    fn markdown_exports_do_not_follow_a_link_out_of_the_folder() {
        let outer = tempfile::tempdir().unwrap();
        let dir = outer.path().join("exports");
        let elsewhere = outer.path().join("elsewhere");
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("story")).unwrap();
        let mut s = session();
        s.title = "story".into();
        let err = write_markdown(&s, &dir, &ExportOptions::default()).unwrap_err().to_string();
        assert!(err.contains("not a folder"), "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn html_exports_refuse_existing_files_and_the_session_itself() {
        let dir = tempfile::tempdir().unwrap();
        let session_path = dir.path().join("story.json");
        session().save(&session_path, crate::session::ImageStorage::Beside).unwrap();
        let before = std::fs::read(&session_path).unwrap();
        let s = Session::load(&session_path).unwrap();
        let opts = ExportOptions { overwrite: true, session_file: Some(session_path.clone()) };
        let err = write_html(&s, &session_path, &opts).unwrap_err().to_string();
        assert!(err.contains("session file"), "{err}");
        let image = std::fs::read_dir(dir.path().join("story.images")).unwrap().next().unwrap().unwrap().path();
        let err = write_html(&s, &image, &opts).unwrap_err().to_string();
        assert!(err.contains("session file"), "{err}");
        assert_eq!(std::fs::read(&session_path).unwrap(), before);

        let out = dir.path().join("story.html");
        std::fs::write(&out, "mine").unwrap();
        let err = write_html(&s, &out, &ExportOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Exists { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "mine");
        write_html(&s, &out, &ExportOptions { overwrite: true, ..Default::default() }).unwrap();
        assert!(std::fs::read_to_string(&out).unwrap().starts_with("<!DOCTYPE html>"));
    }
}
