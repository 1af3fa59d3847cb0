//! Untrusted Markdown (answers), questions, titles and image names through the HTML export:
//! nothing may run or load when the file is opened.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ziya_visual::chat::ImageData;
use ziya_visual::session::{NewTurn, Session};

/// A 1×1 PNG, so the export has one real image.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x0c, 0x49,
    0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0,
    0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Every tag is one the renderer writes, with only the attributes it writes, and no attribute
/// can run or load anything.
fn check_tags(html: &str) {
    let allowed = [
        "!doctype",
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "p",
        "div",
        "span",
        "img",
        "a",
        "strong",
        "em",
        "del",
        "code",
        "pre",
        "ul",
        "ol",
        "li",
        "blockquote",
        "hr",
        "br",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
    ];
    let attrs = [
        "href",
        "title",
        "src",
        "alt",
        "class",
        "lang",
        "charset",
        "name",
        "content",
        "http-equiv",
        "start",
        "style",
        "html",
    ];
    let mut rest = html;
    let mut styles = 0;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let end = rest.find('>').expect("every tag is closed");
        let tag = &rest[..end];
        rest = &rest[end + 1..];
        let body = tag.trim_start_matches('/').trim_end_matches('/');
        let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
        let name = body[..name_end].to_ascii_lowercase();
        assert!(allowed.contains(&name.as_str()), "unexpected tag <{tag}>");
        if name == "style" && !tag.starts_with('/') {
            styles += 1;
            // The stylesheet is ours; skip to its end.
            let close = rest.find("</style>").expect("style closed");
            rest = &rest[close..];
        }
        let mut a = &body[name_end..];
        loop {
            a = a.trim_start();
            if a.is_empty() {
                break;
            }
            let key_end = a.find(|c: char| c == '=' || c.is_whitespace()).unwrap_or(a.len());
            let key = a[..key_end].to_ascii_lowercase();
            assert!(attrs.contains(&key.as_str()), "attribute {key} in <{tag}>");
            a = &a[key_end..];
            let mut value = "";
            if let Some(r) = a.strip_prefix('=') {
                let r = r.strip_prefix('"').expect("quoted attribute values");
                let close = r.find('"').expect("closed attribute value");
                value = &r[..close];
                a = &r[close + 1..];
            }
            let v = value.to_ascii_lowercase();
            match key.as_str() {
                "href" => {
                    assert!(v.starts_with("http:") || v.starts_with("https:") || v.starts_with("mailto:"), "href {v}")
                }
                "src" => assert!(v.starts_with("data:image/png;base64,"), "src {}", &v[..v.len().min(60)]),
                "style" => assert!(v.starts_with("text-align:"), "style {v}"),
                _ => {}
            }
        }
    }
    assert_eq!(styles, 1, "one stylesheet, ours");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\u{1}');
    let answer = parts.next().unwrap_or("").to_string();
    let query = parts.next().unwrap_or("").to_string();
    let title = parts.next().unwrap_or("").to_string();
    let name = parts.next().unwrap_or("x.png").to_string();
    let mut s = Session::new();
    s.push_turn(NewTurn { images: vec![ImageData::new(name, PNG.to_vec())], query, answer, ..Default::default() });
    s.title = title.clone();
    let html = ziya_visual::export::render_html(&s);
    check_tags(&html);
    assert_eq!(html.matches("<img").count(), 1, "only the conversation's own image");

    let stem = ziya_visual::export::file_stem_from(&title);
    let comps: Vec<_> = std::path::Path::new(&stem).components().collect();
    assert!(matches!(comps[..], [std::path::Component::Normal(_)]), "{stem:?}");
    assert!(!stem.starts_with('.') && stem.len() <= 120 && !stem.contains('/') && !stem.contains('\\'));
});
