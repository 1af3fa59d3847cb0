//! A save killed halfway must leave the previous session file intact. The writer is a child
//! process (this test binary, re-run in "child" mode) killed with SIGKILL while its temporary file
//! is being written.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ziya_visual::chat::ImageData;
use ziya_visual::session::{ImageStorage, NewTurn, Session};
use ziya_visual::store::SessionStore;

const CHILD: &str = "ZIYA_TEST_CHILD_WRITE";

fn session_with(bytes: Vec<u8>, query: &str) -> Session {
    let mut s = Session::new();
    s.push_turn(NewTurn {
        images: vec![ImageData::new("big.bin", bytes)],
        query: query.into(),
        answer: "answer".into(),
        ..Default::default()
    });
    s
}

/// The child process of the test below (run by it with `--ignored`): writes a large session
/// (hundreds of MB of embedded data) over the file.
#[test]
#[ignore = "helper: runs only as the child process of a_save_killed_halfway_leaves_the_previous_file_intact"]
fn child_writer() {
    let Ok(path) = std::env::var(CHILD) else { return };
    // What the bytes are does not matter, only that writing them takes a while (a memset, not
    // 300 MB of generated noise).
    let big = vec![0x5a_u8; 300 << 20];
    session_with(big, "the big one").save(Path::new(&path), ImageStorage::Embedded).unwrap();
}

#[test]
fn a_save_killed_halfway_leaves_the_previous_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("story.json");
    session_with(b"small image".to_vec(), "previous version").save(&path, ImageStorage::Embedded).unwrap();
    let before = std::fs::read(&path).unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["interrupted_save::child_writer", "--exact", "--ignored", "--test-threads=1", "--nocapture"])
        .env(CHILD, &path)
        .spawn()
        .unwrap();
    // The temporary file's name is unpredictable (`.story.json.XXXXXX.tmp`): find it.
    let find_temp = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| ziya_visual::fs::is_temporary(&n.to_string_lossy())))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    // Kill it once it is well into writing the temporary file.
    let temp = loop {
        let temp = find_temp();
        let written = temp.as_ref().and_then(|t| std::fs::metadata(t).ok()).map_or(0, |m| m.len());
        if written > 20 << 20 {
            break temp.unwrap();
        }
        assert!(Instant::now() < deadline, "the child never started writing");
        assert!(child.try_wait().unwrap().is_none(), "the child finished before it could be interrupted");
        std::thread::sleep(Duration::from_millis(1));
    };
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(temp.exists(), "the write was interrupted midway");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the previous file is byte for byte intact");
    let s = Session::load(&path).unwrap();
    assert_eq!(s.active_path()[0].query, "previous version");

    // The app's store clears such leftovers and lists the session normally.
    let store = SessionStore::open(dir.path()).unwrap();
    assert!(!temp.exists(), "stale temporary removed");
    assert!(store.entry("story").unwrap().problem.is_none());
}
