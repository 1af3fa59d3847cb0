//! Frame cost of the window with 500 saved conversations against the same window with none, and
//! how long listing them takes with and without the index. Run: `cargo bench --bench sidebar`.

use std::time::Instant;

use egui_kittest::Harness;
use ziya_visual::session::{NewTurn, Session};
use ziya_visual::store::SessionStore;
use ziya_visual::ui::i18n::Lang;
use ziya_visual::ui::{AppOptions, ZiyaApp};

fn fill_store(dir: &std::path::Path, n: usize) {
    let mut store = SessionStore::open(dir).unwrap();
    for i in 0..n {
        let mut s = Session::new();
        s.updated_at += i as u64;
        for t in 0..4 {
            s.push_turn(NewTurn {
                query: format!("第 {i} 个对话的问题 {t}：这张图片里有什么？"),
                answer: "图片里有一只橘色的猫坐在窗台上，窗外是城市的夜景。".repeat(8),
                ..Default::default()
            });
        }
        let id = format!("{:06}", i);
        store.save(&id, &s).unwrap();
    }
}

/// Mean milliseconds per frame over `frames` frames (after a warm-up).
fn frame_ms(data: &std::path::Path, frames: usize) -> f64 {
    let opts =
        AppOptions { data_dir: Some(data.to_path_buf()), lang: Some(Lang::Zh), fresh: true, ..Default::default() };
    let mut h = Harness::builder().with_size([1200.0, 800.0]).build_eframe(move |cc| ZiyaApp::new(cc, opts));
    for _ in 0..20 {
        h.step();
    }
    let t = Instant::now();
    for _ in 0..frames {
        h.step();
    }
    t.elapsed().as_secs_f64() * 1000.0 / frames as f64
}

fn main() {
    let empty = tempfile::tempdir().unwrap();
    let full = tempfile::tempdir().unwrap();
    let sessions = full.path().join("sessions");
    fill_store(&sessions, 500);

    // Listing: first open summarises every file; later opens read the index.
    std::fs::remove_file(sessions.join("index.json")).unwrap();
    let t = Instant::now();
    let store = SessionStore::open(&sessions).unwrap();
    let cold = t.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(store.len(), 500);
    let t = Instant::now();
    SessionStore::open(&sessions).unwrap();
    let warm = t.elapsed().as_secs_f64() * 1000.0;

    let base = frame_ms(empty.path(), 300);
    let with = frame_ms(full.path(), 300);
    println!("sidebar with 500 conversations");
    println!("  listing, no index (first start): {cold:8.1} ms");
    println!("  listing, from the index:         {warm:8.1} ms");
    println!("  frame, no conversations:         {base:8.2} ms");
    println!("  frame, 500 conversations:        {with:8.2} ms  ({:.2}x the empty window)", with / base);
}
