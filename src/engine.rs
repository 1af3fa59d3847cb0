//! The inference engine: one thread owns the loaded model and talks to the UI only through
//! channels. Requests and events are plain enums; streaming and cancellation are part of the
//! protocol. Every `Generate` ends in exactly one `Finished` or `Failed` event with its id.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::chat::ChatTurn;
use crate::device::{device_name, dtype_name, parse_dtype, select_device};
use crate::error::{Error, Result};
use crate::inference::{Generation, Pipeline, StopReason, Timings};
use crate::model::weights::LoadCounter;
use crate::model::ModelSpec;
use crate::sampling::SamplingParams;

pub type RequestId = u64;

/// What to load: the two folders, the device and the precision.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadRequest {
    pub vision_dir: PathBuf,
    pub llm_dir: PathBuf,
    pub device: String,
    pub dtype: String,
    /// `None`, or q8_0 / q6k / q4k for the LLM's linear layers.
    pub quant: Option<crate::model::layers::Quant>,
    /// Meta's LLaMA base when `llm_dir` is the published Ziya delta (merged while loading).
    pub llm_base: Option<PathBuf>,
}

#[derive(Debug)]
pub enum Command {
    Load(LoadRequest),
    Generate { id: RequestId, turns: Vec<ChatTurn>, params: SamplingParams },
    Cancel { id: RequestId },
    Unload,
    Shutdown,
}

/// A loaded model, as the status bar shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub request: LoadRequest,
    pub device: String,
    pub dtype: String,
    /// Why the device asked for is not the one in use, if it is not.
    pub device_note: Option<String>,
    /// Resident memory the load added (process RSS, CPU) — what the model costs this machine.
    pub memory_bytes: Option<u64>,
    pub context_length: usize,
    pub load_s: f64,
}

#[derive(Debug, Clone)]
pub enum Event {
    LoadProgress {
        done: u64,
        total: u64,
    },
    Loaded(ModelSummary),
    LoadFailed(String),
    Unloaded,
    /// A piece of answer text for request `id`.
    Token {
        id: RequestId,
        text: String,
    },
    Finished {
        id: RequestId,
        generation: Generation,
    },
    Failed {
        id: RequestId,
        message: String,
    },
}

/// Called after every event so the UI wakes up (`egui::Context::request_repaint`).
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// The UI side of the engine.
pub struct Engine {
    tx: Sender<Command>,
    rx: Receiver<Event>,
    load_counter: Arc<std::sync::Mutex<Arc<LoadCounter>>>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    pub fn spawn(waker: Waker) -> Self {
        let (tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, rx) = crossbeam_channel::unbounded();
        let load_counter = Arc::new(std::sync::Mutex::new(Arc::new(LoadCounter::default())));
        let counter = load_counter.clone();
        let thread = std::thread::Builder::new()
            .name("ziya-engine".into())
            .spawn(move || {
                Worker {
                    cmd_rx,
                    ev_tx,
                    waker,
                    load_counter: counter,
                    pipeline: None,
                    queue: VecDeque::new(),
                    cancelled: HashSet::new(),
                    shutting_down: false,
                }
                .run()
            })
            .expect("spawning the engine thread");
        Self { tx, rx, load_counter, thread: Some(thread) }
    }

    pub fn send(&self, cmd: Command) {
        // The thread only goes away at shutdown; a send after that has nobody to serve it.
        let _ = self.tx.send(cmd);
    }

    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Stops a load in progress at the next tensor (the engine answers `LoadFailed("cancelled")`).
    pub fn cancel_load(&self) {
        if let Ok(c) = self.load_counter.lock() {
            c.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// Stops what is running, lets the thread finish and waits for it.
    pub fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.cancel_load();
            let _ = self.tx.send(Command::Shutdown);
            let _ = thread.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Worker {
    cmd_rx: Receiver<Command>,
    ev_tx: Sender<Event>,
    waker: Waker,
    load_counter: Arc<std::sync::Mutex<Arc<LoadCounter>>>,
    pipeline: Option<Pipeline>,
    /// Commands that arrived while a request was running, in order.
    queue: VecDeque<Command>,
    /// Requests cancelled before they started.
    cancelled: HashSet<RequestId>,
    shutting_down: bool,
}

impl Worker {
    fn emit(&self, event: Event) {
        let _ = self.ev_tx.send(event);
        (self.waker)();
    }

    /// Moves everything waiting on the channel into the queue. Cancels take effect at once:
    /// for the running request (returned as true) or for queued ones.
    fn pump(&mut self, running: Option<RequestId>) -> bool {
        let mut stop_running = false;
        while let Ok(cmd) = self.cmd_rx.try_recv() {
            match cmd {
                Command::Cancel { id } if Some(id) == running => stop_running = true,
                Command::Cancel { id } => {
                    self.cancelled.insert(id);
                }
                Command::Shutdown => {
                    self.shutting_down = true;
                    stop_running = true;
                }
                other => self.queue.push_back(other),
            }
        }
        stop_running
    }

    fn run(mut self) {
        loop {
            self.pump(None);
            if self.shutting_down {
                break;
            }
            let cmd = match self.queue.pop_front() {
                Some(c) => c,
                None => match self.cmd_rx.recv() {
                    Ok(c) => c,
                    Err(_) => break, // the UI side is gone
                },
            };
            match cmd {
                Command::Shutdown => break,
                Command::Cancel { id } => {
                    self.cancelled.insert(id);
                }
                Command::Unload => {
                    self.pipeline = None;
                    self.emit(Event::Unloaded);
                }
                Command::Load(req) => self.load(req),
                Command::Generate { id, turns, params } => self.generate(id, &turns, &params),
            }
        }
        // Dropping the pipeline here frees the model before the thread ends.
        self.pipeline = None;
    }

    fn load(&mut self, req: LoadRequest) {
        // Free the old model first: two 13B models rarely fit side by side.
        self.pipeline = None;
        let counter = Arc::new(LoadCounter::default());
        if let Ok(mut slot) = self.load_counter.lock() {
            *slot = counter.clone();
        }
        let started = Instant::now();
        let rss_before = process_rss_bytes();
        let done = AtomicBool::new(false);
        let result = std::thread::scope(|scope| {
            // Report progress while this thread is busy reading tensors.
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    let (d, t) = counter.snapshot();
                    self.emit(Event::LoadProgress { done: d, total: t });
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let r = load_pipeline(&req, counter.clone());
            done.store(true, Ordering::Relaxed);
            r
        });
        match result {
            Ok((pipeline, device_note)) => {
                let (_, total) = counter.snapshot();
                self.emit(Event::LoadProgress { done: total, total });
                let summary = ModelSummary {
                    request: req,
                    device: device_name(pipeline.device()).into(),
                    dtype: match pipeline.model.llm.quant() {
                        Some(q) => format!("{} + {}", dtype_name(pipeline.dtype()), q.name()),
                        None => dtype_name(pipeline.dtype()).into(),
                    },
                    device_note,
                    memory_bytes: match (rss_before, process_rss_bytes()) {
                        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                        _ => None,
                    },
                    context_length: pipeline.context_length(),
                    load_s: started.elapsed().as_secs_f64(),
                };
                self.pipeline = Some(pipeline);
                self.emit(Event::Loaded(summary));
            }
            Err(e) => self.emit(Event::LoadFailed(e.to_string())),
        }
    }

    fn generate(&mut self, id: RequestId, turns: &[ChatTurn], params: &SamplingParams) {
        if self.cancelled.remove(&id) {
            self.emit(Event::Finished { id, generation: cancelled_before_start() });
            return;
        }
        let Some(mut pipeline) = self.pipeline.take() else {
            self.emit(Event::Failed { id, message: "no model is loaded".into() });
            return;
        };
        let result = pipeline.generate(turns, params, &mut |text| {
            if !text.is_empty() {
                self.emit(Event::Token { id, text: text.to_string() });
            }
            !self.pump(Some(id))
        });
        self.pipeline = Some(pipeline);
        match result {
            Ok(generation) => self.emit(Event::Finished { id, generation }),
            Err(e) => self.emit(Event::Failed { id, message: e.to_string() }),
        }
    }
}

fn cancelled_before_start() -> Generation {
    Generation {
        text: String::new(),
        token_ids: Vec::new(),
        prompt_tokens: 0,
        reused_tokens: 0,
        stop: StopReason::Cancelled,
        timings: Timings::default(),
    }
}

fn load_pipeline(req: &LoadRequest, counter: Arc<LoadCounter>) -> Result<(Pipeline, Option<String>)> {
    let (device, device_note) = select_device(&req.device)?;
    let (dtype, dtype_note) = crate::device::effective_dtype(&device, parse_dtype(&req.dtype)?);
    let note = match (device_note, dtype_note) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    let spec = ModelSpec {
        vision_dir: req.vision_dir.clone(),
        llm_dir: req.llm_dir.clone(),
        dtype,
        device,
        quant: req.quant,
        llm_base: req.llm_base.clone(),
    };
    // A conversation may grow to the whole context; refuse what cannot fit before loading.
    let inputs = crate::inference::PlanInputs::read(&spec)?;
    let context = inputs.llm.max_position_embeddings;
    inputs.check(&spec, crate::model::plan::PREFILL_CHUNK.min(context), context)?;
    let pipeline = Pipeline::load(&spec, counter).map_err(|e| match e {
        Error::Cancelled => Error::Request("loading was cancelled".into()),
        other => other,
    })?;
    Ok((pipeline, note))
}

/// Resident set size of this process (Linux), for "how much memory did the model take".
pub fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn tiny_request() -> LoadRequest {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-ziya");
        LoadRequest {
            vision_dir: root.join("vision"),
            llm_dir: root.join("llm"),
            device: "cpu".into(),
            dtype: "f32".into(),
            quant: None,
            llm_base: None,
        }
    }

    fn wait_loaded(engine: &Engine) -> ModelSummary {
        loop {
            match engine.recv_timeout(Duration::from_secs(60)).expect("engine answers") {
                Event::Loaded(s) => return s,
                Event::LoadFailed(e) => panic!("load failed: {e}"),
                _ => {}
            }
        }
    }

    fn question(q: &str) -> Vec<ChatTurn> {
        vec![ChatTurn { images: vec![], query: q.into(), answer: None }]
    }

    #[test]
    fn loads_reports_progress_and_answers() {
        let mut engine = Engine::spawn(Box::new(|| {}));
        engine.send(Command::Load(tiny_request()));
        let mut progress = Vec::new();
        let summary = loop {
            match engine.recv_timeout(Duration::from_secs(60)).unwrap() {
                Event::LoadProgress { done, total } => progress.push((done, total)),
                Event::Loaded(s) => break s,
                other => panic!("unexpected {other:?}"),
            }
        };
        let (done, total) = *progress.last().unwrap();
        assert!(total > 0 && done == total, "progress ends complete: {progress:?}");
        assert_eq!(summary.device, "cpu");
        assert_eq!(summary.context_length, 512);

        let params = SamplingParams { temperature: 0.0, max_new_tokens: 8, ..Default::default() };
        engine.send(Command::Generate { id: 1, turns: question("你好"), params });
        let mut streamed = String::new();
        loop {
            match engine.recv_timeout(Duration::from_secs(60)).unwrap() {
                Event::Token { id: 1, text } => streamed.push_str(&text),
                Event::Finished { id: 1, generation } => {
                    assert_eq!(streamed, generation.text);
                    assert_eq!(generation.token_ids.len(), 8);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        engine.shutdown();
    }

    #[test]
    fn twenty_generate_cancel_pairs_lose_and_misattribute_nothing() {
        let mut engine = Engine::spawn(Box::new(|| {}));
        engine.send(Command::Load(tiny_request()));
        wait_loaded(&engine);
        let params = SamplingParams { temperature: 0.0, max_new_tokens: 200, ignore_eos: true, ..Default::default() };
        for id in 0..20u64 {
            engine.send(Command::Generate { id, turns: question(&format!("问题 {id}")), params: params.clone() });
            if id % 3 != 2 {
                engine.send(Command::Cancel { id });
            }
        }
        let mut tokens: HashMap<u64, String> = HashMap::new();
        let mut finished: HashMap<u64, Generation> = HashMap::new();
        while finished.len() < 20 {
            match engine.recv_timeout(Duration::from_secs(120)).expect("every request ends") {
                Event::Token { id, text } => {
                    assert!(!finished.contains_key(&id), "token for {id} after it finished");
                    tokens.entry(id).or_default().push_str(&text);
                }
                Event::Finished { id, generation } => {
                    assert!(finished.insert(id, generation).is_none(), "two endings for {id}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for (id, g) in &finished {
            let streamed = tokens.get(id).cloned().unwrap_or_default();
            if id % 3 == 2 {
                assert_eq!(g.stop, StopReason::MaxTokens, "request {id} was not cancelled");
                assert_eq!(g.token_ids.len(), 200);
                assert_eq!(&streamed, &g.text, "request {id}: streamed text is its answer");
            } else {
                assert!(g.text.starts_with(&streamed), "request {id}: streamed text is a prefix of its answer");
            }
        }
        // Nothing else arrives afterwards.
        assert!(engine.recv_timeout(Duration::from_millis(200)).is_none());
        engine.shutdown();
    }

    #[test]
    fn cancel_stops_a_running_answer_within_a_step() {
        let mut engine = Engine::spawn(Box::new(|| {}));
        engine.send(Command::Load(tiny_request()));
        wait_loaded(&engine);
        let params = SamplingParams { temperature: 0.0, max_new_tokens: 400, ignore_eos: true, ..Default::default() };
        engine.send(Command::Generate { id: 7, turns: question("长故事"), params });
        // Wait for the answer to be under way, then cancel.
        match engine.recv_timeout(Duration::from_secs(60)) {
            Some(Event::Token { id: 7, .. }) => {}
            other => panic!("expected the answer to start, got {other:?}"),
        }
        engine.send(Command::Cancel { id: 7 });
        loop {
            match engine.recv_timeout(Duration::from_secs(60)).unwrap() {
                Event::Token { .. } => {}
                Event::Finished { id: 7, generation } => {
                    assert_eq!(generation.stop, StopReason::Cancelled);
                    assert!(generation.token_ids.len() < 400);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        engine.shutdown();
    }

    #[test]
    fn generating_without_a_model_fails_politely_and_shutdown_joins() {
        let mut engine = Engine::spawn(Box::new(|| {}));
        engine.send(Command::Generate { id: 3, turns: question("hi"), params: SamplingParams::default() });
        match engine.recv_timeout(Duration::from_secs(10)).unwrap() {
            Event::Failed { id: 3, message } => assert!(message.contains("no model")),
            other => panic!("unexpected {other:?}"),
        }
        let mut bad = tiny_request();
        bad.llm_dir = PathBuf::from("/nonexistent/llm");
        engine.send(Command::Load(bad));
        loop {
            match engine.recv_timeout(Duration::from_secs(10)).unwrap() {
                Event::LoadFailed(msg) => {
                    assert!(msg.contains("/nonexistent/llm"), "{msg}");
                    break;
                }
                Event::LoadProgress { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        engine.shutdown();
        assert!(engine.thread.is_none());
    }
}
