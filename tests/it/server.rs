//! `ziya-visual serve`, driven as OpenAI clients drive it: the real binary on the committed tiny
//! checkpoint, on a free loopback port, over HTTP. Greedy answers are the reference's (which
//! `ask` matches, see ask_cli), whole or streamed; a client resending the whole history reuses
//! the cached prefix and gets the long-story windows; closing a connection cancels its answer;
//! every error has OpenAI's shape and the right status, and none of them stops the server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::*;

/// A running `ziya-visual serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    /// Everything it printed on stderr so far.
    log: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

impl Server {
    /// On the tiny checkpoint, with `extra` flags; waits until the model is loaded.
    fn start(extra: &[&str]) -> Self {
        let s = Self::spawn(&vision_dir(), &llm_dir(), extra);
        s.wait_ready();
        s
    }

    /// Starts the binary on port 0 and reads the port it picked from its `listening on` line.
    fn spawn(vision: &Path, llm: &Path, extra: &[&str]) -> Self {
        let mut child = bin()
            .arg("serve")
            .arg("--vision-model")
            .arg(vision)
            .arg("--llm-model")
            .arg(llm)
            .args(["--port", "0"])
            .args(extra)
            .env_remove("ZIYA_VISUAL_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    let _ = tx.send(addr.to_string());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("no `listening on` line: {}", log.lock().unwrap());
            }
        };
        assert!(addr.starts_with("127.0.0.1:"), "loopback by default: {addr}");
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Self { child, addr, log, agent }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, body) = self.get("/health");
            if status == 200 {
                assert_eq!(body["status"], "ok");
                return;
            }
            assert!(Instant::now() < deadline, "not ready: {status} {body}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.get_with(path, None)
    }

    fn get_with(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = self.agent.get(self.url(path));
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let resp = req.call().expect("the server answers");
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// POSTs `body` as is to /v1/chat/completions.
    fn post_raw(&self, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = self.agent.post(self.url("/v1/chat/completions")).header("Content-Type", "application/json");
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let resp = req.send(body).expect("the server answers");
        let status = resp.status().as_u16();
        let text = resp.into_body().with_config().limit(100 << 20).read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn post(&self, body: &Value) -> (u16, Value) {
        self.post_raw(&body.to_string(), None)
    }

    /// A request that must succeed: the completion.
    fn complete(&self, body: &Value) -> Value {
        let (status, v) = self.post(body);
        assert_eq!(status, 200, "{v}\n{}", self.log());
        assert_eq!(v["object"], "chat.completion");
        v
    }

    /// A streamed request: the payload of every `data:` line, in order.
    fn stream(&self, body: &Value) -> Vec<String> {
        let resp = self
            .agent
            .post(self.url("/v1/chat/completions"))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let reader = BufReader::new(resp.into_body().into_reader());
        reader.lines().map(|l| l.unwrap()).filter_map(|l| l.strip_prefix("data: ").map(str::to_string)).collect()
    }

    /// Waits for the log to show `what` (its stderr is read by another thread).
    fn wait_log(&self, within: Duration, what: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if what(&log) {
                return log;
            }
            assert!(Instant::now() < deadline, "not in the log after {within:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until no request is running or queued.
    fn wait_idle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (_, h) = self.get("/health");
            if h["requests"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "still busy after {within:?}: {h}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts the server still answers.
    fn still_serves(&self) {
        let v = self.complete(&json!({"messages": [{"role": "user", "content": "还在吗？"}], "max_tokens": 2}));
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 2);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data_url(name: &str) -> String {
    let bytes = std::fs::read(image_path(name)).unwrap();
    let mime = if name.ends_with(".png") { "image/png" } else { "image/jpeg" };
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn image_part(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// A reference turn as a user message: its images, then its question.
fn user(t: &RefTurn) -> Value {
    let mut parts: Vec<Value> = t.images.iter().map(|n| image_part(&data_url(n))).collect();
    parts.push(json!({"type": "text", "text": t.query}));
    json!({"role": "user", "content": parts})
}

/// The request for turn `i` of `turns`: the earlier turns with the reference's answers (the
/// whole history, as clients send it), greedy, with the ids returned.
fn turn_request(turns: &[RefTurn], i: usize) -> Value {
    let mut messages = Vec::new();
    for t in &turns[..i] {
        messages.push(user(t));
        messages.push(json!({"role": "assistant", "content": t.text}));
    }
    messages.push(user(&turns[i]));
    json!({"model": "ziya-visual", "messages": messages, "temperature": 0,
           "max_tokens": turns[i].max_new_tokens, "return_token_ids": true})
}

fn token_ids(v: &Value) -> Vec<u32> {
    ids(&v["choices"][0]["token_ids"])
}

/// Checks a whole answer against a reference turn.
fn matches_reference(v: &Value, t: &RefTurn, what: &str) {
    assert_eq!(token_ids(v), t.token_ids, "{what}: greedy ids");
    assert_eq!(v["choices"][0]["message"]["content"], t.text.as_str(), "{what}: text");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let reason = if t.stopped_at_eos { "stop" } else { "length" };
    assert_eq!(v["choices"][0]["finish_reason"], reason, "{what}");
    assert_eq!(v["usage"]["prompt_tokens"].as_u64().unwrap() as usize, t.prompt_tokens, "{what}: prompt");
    assert_eq!(v["usage"]["completion_tokens"].as_u64().unwrap() as usize, t.token_ids.len(), "{what}");
    assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap() as usize, t.prompt_tokens + t.token_ids.len());
}

fn cached(v: &Value) -> usize {
    v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() as usize
}

#[test]
fn greedy_answers_equal_the_reference_and_ask() {
    let server = Server::start(&[]);
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "ziya-visual");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
    let (_, health) = server.get("/health");
    assert_eq!((health["device"].as_str(), health["context_length"].as_u64()), (Some("cpu"), Some(512)));

    let single = &case("single")[0];
    let v = server.complete(&turn_request(case("single"), 0));
    matches_reference(&v, single, "single image");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let asked = Ask::new().turn(single).json(&single.query);
    assert_eq!(token_ids(&v), ids(&asked["token_ids"]), "the server answers as `ask` does");
    assert_eq!(v["usage"]["prompt_tokens"], asked["prompt_tokens"]);

    let v = server.complete(&turn_request(case("two_images"), 0));
    matches_reference(&v, &case("two_images")[0], "two images");
    // The same image again is served from the image cache and the shared prefix.
    let v = server.complete(&turn_request(case("single_other_image"), 0));
    matches_reference(&v, &case("single_other_image")[0], "another image");
    let v = server.complete(&turn_request(case("text_only"), 0));
    matches_reference(&v, &case("text_only")[0], "text only");
}

#[test]
fn concurrent_requests_queue_and_each_gets_its_own_answer() {
    let server = Server::start(&[]);
    let names = ["single", "two_images", "single_other_image", "text_only"];
    std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let server = &server;
                scope.spawn(move || {
                    let mut body = turn_request(case(name), 0);
                    if i % 2 == 1 {
                        // Streamed and whole answers share the queue.
                        body["stream"] = json!(true);
                        let events = server.stream(&body);
                        let text: String = events[..events.len() - 1]
                            .iter()
                            .map(|e| serde_json::from_str::<Value>(e).unwrap())
                            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
                            .collect();
                        assert_eq!(text, case(name)[0].text, "{name}, streamed");
                    } else {
                        matches_reference(&server.complete(&body), &case(name)[0], name);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
    server.wait_idle(Duration::from_secs(10));
}

#[test]
fn three_turns_resending_the_history_match_and_reuse_the_prefix() {
    let server = Server::start(&[]);
    let turns = case("three_turn");
    let mut previous_prompt = 0;
    for i in 0..3 {
        let v = server.complete(&turn_request(turns, i));
        matches_reference(&v, &turns[i], &format!("turn {i}"));
        if i == 0 {
            assert_eq!(cached(&v), 0);
        } else {
            // Everything the previous request laid out (its prompt, then its answer, which the
            // client sends back as text) is reused up to where the answer's re-tokenization
            // differs from the ids generated.
            assert!(cached(&v) >= previous_prompt, "turn {i}: {} cached of {previous_prompt}", cached(&v));
        }
        previous_prompt = turns[i].prompt_tokens;
    }
    // Asking the last turn again reuses all but the last position.
    let v = server.complete(&turn_request(turns, 2));
    assert_eq!(cached(&v), turns[2].prompt_tokens - 1);
}

#[test]
fn a_long_story_resent_each_turn_is_answered_on_the_reference_windows() {
    let server = Server::start(&[]);
    let story = &cases().long_story;
    let turns: Vec<RefTurn> =
        story.turns.iter().map(|t| RefTurn { max_new_tokens: story.max_new_tokens, ..t.clone() }).collect();
    for i in 0..turns.len() {
        let v = server.complete(&turn_request(&turns, i));
        // The window (its positions) and the ids are those of the story answered in the app.
        matches_reference(&v, &turns[i], &format!("story turn {i}"));
    }
    // One log line per request, none cancelled.
    server.wait_log(Duration::from_secs(10), |log| log.matches(" completion tokens, length").count() == 12);
}

#[test]
fn streamed_chunks_join_to_the_answer_and_end_with_done() {
    let server = Server::start(&[]);
    let t = &case("two_images")[0];
    let mut body = turn_request(case("two_images"), 0);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let events = server.stream(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == id));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (usage_chunk, answer) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() as usize, t.token_ids.len());
    assert_eq!(usage_chunk["usage"]["prompt_tokens"].as_u64().unwrap() as usize, t.prompt_tokens);
    assert!(answer.iter().all(|c| c["usage"].is_null() && c.get("usage").is_some()), "usage: null before the end");
    let text: String = answer.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, t.text);
    assert!(answer.len() > 3, "the answer arrives in pieces: {}", answer.len());
    let finish: Vec<&Value> =
        answer.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|r| !r.is_null()).collect();
    assert_eq!(finish, vec![&json!("length")], "one finish reason, on the last chunk");

    // Without include_usage there is no usage anywhere.
    body["stream_options"] = json!(null);
    let events = server.stream(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, t.text);
}

#[test]
fn stop_strings_cut_the_answer_whole_and_streamed() {
    let server = Server::start(&[]);
    let t = &case("three_turn")[0];
    // A piece of the greedy answer from its middle: the answer ends just before it.
    let chars: Vec<char> = t.text.chars().collect();
    let stop: String = chars[10..13].iter().collect();
    let at = t.text.find(&stop).unwrap();
    let mut body = turn_request(case("three_turn"), 0);
    body["stop"] = json!([stop, "never appears"]);
    let v = server.complete(&body);
    assert_eq!(v["choices"][0]["message"]["content"], &t.text[..at]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!((v["usage"]["completion_tokens"].as_u64().unwrap() as usize) < t.token_ids.len(), "it stopped early");
    body["stream"] = json!(true);
    let events = server.stream(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, &t.text[..at]);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
}

/// A long sampled answer that cannot end early (ignore_eos, vLLM's spelling).
fn long_request(stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "讲一个很长的故事。"}], "max_tokens": 480,
           "temperature": 1.0, "top_p": 0.95, "seed": 3, "ignore_eos": true, "stream": stream})
}

/// The log line of a cancelled request: its completion tokens.
fn cancelled_tokens(server: &Server) -> usize {
    let log = server.wait_log(Duration::from_secs(10), |log| log.contains("cancelled: client gone"));
    let line = log.lines().find(|l| l.contains("cancelled: client gone")).unwrap();
    let n = line.split(" completion tokens").next().unwrap().rsplit(' ').next().unwrap();
    n.parse().unwrap()
}

#[test]
fn closing_a_stream_cancels_its_answer() {
    let server = Server::start(&[]);
    let resp = server
        .agent
        .post(server.url("/v1/chat/completions"))
        .header("Content-Type", "application/json")
        .send(long_request(true).to_string())
        .unwrap();
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut content_chunks = 0;
    let mut line = String::new();
    while content_chunks < 2 {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended early");
        if line.starts_with("data: {") && line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
            content_chunks += 1;
        }
    }
    let closed = Instant::now();
    drop(reader);
    server.wait_idle(Duration::from_secs(30));
    let n = cancelled_tokens(&server);
    assert!(n < 480, "the answer was stopped: {n} tokens");
    // The next request is served at once.
    let t = Instant::now();
    let v = server.complete(&turn_request(case("single"), 0));
    matches_reference(&v, &case("single")[0], "after a cancel");
    eprintln!(
        "cancel: stopped after {n} tokens, idle {:?} after closing; next answer {:?}",
        closed.elapsed(),
        t.elapsed()
    );
}

#[test]
fn closing_a_whole_request_cancels_it_too() {
    let server = Server::start(&[]);
    let body = long_request(false).to_string();
    let mut tcp = TcpStream::connect(&server.addr).unwrap();
    write!(
        tcp,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Closed once the answer is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get("/health").1["requests"] == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    drop(tcp);
    server.wait_idle(Duration::from_secs(30));
    assert!(cancelled_tokens(&server) < 480);
    server.still_serves();
}

/// Sends raw bytes and reads the status line and body of the answer (for requests an HTTP
/// client would not send).
fn raw(server: &Server, request: &[u8]) -> (u16, Value) {
    let mut tcp = TcpStream::connect(&server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = tcp.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::String(body.into())))
}

fn error_of(status: u16, v: &Value, want: u16, what: &str) -> String {
    assert_eq!(status, want, "{what}: {v}");
    let e = &v["error"];
    assert!(e["message"].is_string() && e["type"].is_string(), "{what}: OpenAI's error shape: {v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{what}: {v}");
    e["message"].as_str().unwrap().to_string()
}

/// A PNG whose header claims 65535×65535 pixels (12.9 GB as RGB) over a few bytes of data.
fn png_bomb() -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(65535u32.to_be_bytes());
    ihdr.extend(65535u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    // zlib: a stored block of zeros.
    chunk(&mut png, b"IDAT", &[0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0x00, 0x04, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// A GIF whose screen and frame claim 65535×65535 pixels.
fn gif_bomb() -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend([0xff, 0xff, 0xff, 0xff, 0x80, 0, 0]); // screen 65535², global table of 2
    gif.extend([0, 0, 0, 255, 255, 255]);
    gif.extend([0x2c, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]); // the frame, 65535²
    gif.extend([2, 2, 0x4c, 0x01, 0]); // LZW: one pixel, then end
    gif.push(0x3b);
    gif
}

#[test]
fn errors_have_openais_shape_and_status_and_the_server_keeps_serving() {
    let server = Server::start(&[]);
    let user_with = |url: &str| json!({"messages": [{"role": "user", "content": [image_part(url), {"type": "text", "text": "q"}]}]});
    let (s, v) = server.post_raw("{\"messages\": [", None);
    error_of(s, &v, 400, "malformed JSON");
    let (s, v) = server.post_raw("\u{0}\u{1}binary", None);
    error_of(s, &v, 400, "not JSON");
    let (s, v) = server.post(&json!({"model": "x"}));
    assert!(error_of(s, &v, 400, "no messages").contains("messages"));
    let (s, v) = server.post(&user_with("data:image/png;base64,%%%not-base64%%%"));
    assert!(error_of(s, &v, 400, "bad base64").contains("base64"));
    assert_eq!(v["error"]["param"], "messages[0].content[0].image_url.url");
    let (s, v) = server.post(&user_with("https://example.com/cat.png"));
    assert!(error_of(s, &v, 400, "remote URL").contains("data: URL"));
    let (s, v) = server.post(&user_with("data:image/png;base64,aGVsbG8gd29ybGQ="));
    error_of(s, &v, 400, "not an image");
    let (s, v) = server.post(&json!({"messages": [{"role": "user", "content": "q"}], "n": 2}));
    error_of(s, &v, 400, "n = 2");
    assert_eq!(v["error"]["param"], "n");
    let (s, v) =
        server.post(&json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}));
    assert!(error_of(s, &v, 400, "last message not user").contains("last message"));
    let (s, v) = server.post(&json!({"messages": [{"role": "user", "content": "q"}], "max_tokens": 600}));
    assert!(error_of(s, &v, 400, "over the context").contains("512"), "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let mut streamed = json!({"messages": [{"role": "user", "content": "q"}], "max_tokens": 600, "stream": true});
    let (s, v) = server.post(&streamed);
    error_of(s, &v, 400, "over the context, streamed");
    streamed["temperature"] = json!("hot");
    let (s, v) = server.post(&streamed);
    error_of(s, &v, 400, "a field of the wrong type");

    // Image bombs are refused by the decoder's limits; the server stays up.
    for (what, bomb) in [("PNG bomb", png_bomb()), ("GIF bomb", gif_bomb())] {
        let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bomb));
        let (s, v) = server.post(&user_with(&url));
        assert!(s == 400 || s == 413, "{what}: {s} {v}");
        error_of(s, &v, s, what);
    }

    // 413: an image over its cap, a body over the cap (declared, refused before it is read).
    let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 21 << 20]);
    let (s, v) = server.post(&user_with(&format!("data:image/png;base64,{big}")));
    error_of(s, &v, 413, "image over 20 MB");
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    let (s, v) = raw(&server, format!("{head}Content-Length: 60000000\r\n\r\n{{").as_bytes());
    error_of(s, &v, 413, "declared body over 50 MB");
    // A chunked body over the cap is cut off while it is read.
    let server_addr = server.addr.clone();
    let sender = std::thread::spawn(move || {
        let mut tcp = TcpStream::connect(server_addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = tcp.write_all(format!("{head}Transfer-Encoding: chunked\r\n\r\n").as_bytes());
        let piece = vec![b' '; 1 << 20];
        for _ in 0..60 {
            if tcp.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).is_err()
                || tcp.write_all(&piece).is_err()
                || tcp.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        let mut out = Vec::new();
        let _ = tcp.read_to_end(&mut out);
        String::from_utf8_lossy(&out).to_string()
    });
    let answer = sender.join().unwrap();
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Unknown fields (and a model name of the client's choosing) are ignored.
    let v = server.complete(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "q", "name": "me"}],
        "max_tokens": 3, "temperature": 0, "logit_bias": {"5": 1}, "user": "u", "tools": [], "parallel_tool_calls": false,
        "response_format": {"type": "text"}, "some_future_field": {"a": [1, 2]}}));
    assert_eq!(v["model"], "ziya-visual");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 3);

    let (s, v) = server.get("/v1/nothing-here");
    error_of(s, &v, 404, "unknown path");
    let (s, v) = server.get("/v1/chat/completions");
    error_of(s, &v, 405, "wrong method");
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    server.still_serves();
}

#[test]
fn an_api_key_is_required_when_given() {
    let server = Server::start(&["--api-key", "sesame"]);
    let body = json!({"messages": [{"role": "user", "content": "q"}], "max_tokens": 2}).to_string();
    let (s, v) = server.post_raw(&body, None);
    assert!(error_of(s, &v, 401, "no key").contains("API key"));
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let (s, v) = server.post_raw(&body, Some("open"));
    error_of(s, &v, 401, "wrong key");
    let (s, v) = server.get("/v1/models");
    error_of(s, &v, 401, "models without the key");
    let (s, _) = server.get_with("/v1/models", Some("sesame"));
    assert_eq!(s, 200);
    let (s, v) = server.post_raw(&body, Some("sesame"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(server.get("/health").0, 200, "health needs no key");
}

#[test]
fn a_model_that_fails_to_load_is_a_503_and_the_server_says_why() {
    let server = Server::spawn(&vision_dir(), Path::new("/nonexistent/llm"), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = loop {
        let (s, h) = server.get("/health");
        if h["status"] == "error" {
            assert_eq!(s, 503);
            break h;
        }
        assert!(Instant::now() < deadline, "{h}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(health["error"].as_str().unwrap().contains("/nonexistent/llm"), "{health}");
    let (s, v) = server.post(&json!({"messages": [{"role": "user", "content": "q"}]}));
    let message = error_of(s, &v, 503, "no model");
    assert!(message.contains("/nonexistent/llm"), "{message}");
    let (s, v) = server.post(&json!({"messages": [{"role": "user", "content": "q"}], "stream": true}));
    error_of(s, &v, 503, "no model, streamed");
    assert!(server.log().contains("/nonexistent/llm"));
}
