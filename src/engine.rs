//! The inference engine: one thread owns the loaded model and talks to its users (the window,
//! `ask`, the server) only through channels. Requests and events are plain enums; streaming and
//! cancellation are part of the protocol. Every `Generate` ends in exactly one `Finished` or
//! `Failed` event with its id, even when the model code panics.

use std::collections::{HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::chat::ChatTurn;
use crate::device::{device_name, dtype_name, Placement};
use crate::error::{Error, Problem, Result};
use crate::generation::Generation;
use crate::inference::Pipeline;
use crate::model::choice::ModelChoice;
use crate::model::files::ModelFiles;
use crate::model::layers::Quant;
use crate::model::weights::LoadCounter;
use crate::sampling::SamplingParams;

pub type RequestId = u64;

#[derive(Debug)]
pub enum Command {
    /// Load this model (reading its folders first).
    Load(ModelChoice),
    /// Load a model whose folders the caller has already read (`ask` checks the prompt first),
    /// sized for conversations of `prompt` positions growing to `context` (the memory check).
    LoadFiles {
        files: Box<ModelFiles>,
        prompt: usize,
        context: usize,
    },
    Generate {
        id: RequestId,
        turns: Vec<ChatTurn>,
        params: SamplingParams,
    },
    /// As `Generate`, for a conversation whose answered turns carry no recorded windows (the
    /// server gets plain message histories): their `context_start`s are first replayed by the
    /// long-story rule (`chat::replay_context_starts`, with `params.max_new_tokens`). The window
    /// and `ask` send `Generate` with the starts they recorded.
    GenerateReplayed {
        id: RequestId,
        turns: Vec<ChatTurn>,
        params: SamplingParams,
    },
    Cancel {
        id: RequestId,
    },
    /// Lays out `turns` (the last one unanswered) as the model would see them, without
    /// answering: the window and positions it takes (the context meter). Answered with
    /// `Event::Measured` carrying `key`.
    Measure {
        key: u64,
        turns: Vec<ChatTurn>,
        max_new: usize,
    },
    Unload,
    Shutdown,
    /// Panics inside the engine as a request would if the model code failed (tests of recovery).
    #[cfg(test)]
    Panic {
        id: RequestId,
    },
}

/// Keeps panics on the engine thread off stderr: the engine catches them and reports them as a
/// `Failed` event (one line, where the user looks); other threads keep Rust's default report.
pub fn quiet_engine_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() != Some(ENGINE_THREAD) {
            default(info);
        }
    }));
}

const ENGINE_THREAD: &str = "ziya-engine";

/// A loaded model, as the status bar and transcripts describe it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub choice: ModelChoice,
    /// The device and precision in use (`cpu`, `f32`), and the quantization of the LLM.
    pub device: String,
    pub dtype: String,
    pub quant: Option<Quant>,
    /// Why the device or precision asked for is not the one in use (empty when it is).
    pub device_notes: Vec<crate::device::DeviceNote>,
    /// The memory the planner worked out for the whole context (the same figure every time).
    pub planned_bytes: u64,
    pub context_length: usize,
    /// Prompt positions each image takes.
    pub query_tokens: usize,
    pub load_s: f64,
}

impl ModelSummary {
    /// `f32`, or `f16 + q4k` for a quantized LLM.
    pub fn precision_label(&self) -> String {
        match self.quant {
            Some(q) => format!("{} + {}", self.dtype, q.name()),
            None => self.dtype.clone(),
        }
    }
}

/// What kind of failure ended a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The request cannot be served as asked (too long for the context, bad settings, no model).
    Invalid,
    /// The model's code failed while answering.
    Model,
    /// The model's code panicked; the engine recovered and keeps serving.
    Crashed,
}

/// Why a request or a load failed: the problem as data (a front end words it in its own
/// language) and in English (`message`, for the command line and logs).
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub problem: Problem,
    pub message: String,
}

impl Failure {
    fn from_error(e: &Error) -> Self {
        let kind = match e {
            Error::Request(_) | Error::TooLong(_) | Error::Image { .. } | Error::Session { .. } | Error::Cancelled => {
                FailureKind::Invalid
            }
            _ => FailureKind::Model,
        };
        Self { kind, problem: Problem::from(e), message: e.to_string() }
    }

    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        let message = message.into();
        Self { kind, problem: Problem::Other(message.clone()), message }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How much of the context a conversation takes (see `Command::Measure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    pub key: u64,
    /// The first turn the model would see.
    pub window_start: usize,
    /// Positions of that window's prompt, the new tokens reserved, and the context.
    pub prompt: usize,
    pub max_new: usize,
    pub context: usize,
    /// The question cannot be answered even alone.
    pub too_long: bool,
}

#[derive(Debug, Clone)]
pub enum Event {
    LoadProgress {
        done: u64,
        total: u64,
    },
    Loaded(Box<ModelSummary>),
    /// The load did not happen; whatever model was loaded before is still loaded.
    LoadFailed(Failure),
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
        failure: Failure,
    },
    Measured(Measurement),
}

/// Called after every event so the UI wakes up (`egui::Context::request_repaint`).
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// The handle its users hold.
pub struct Engine {
    tx: Sender<Command>,
    rx: Receiver<Event>,
    load_counter: Arc<std::sync::Mutex<Arc<LoadCounter>>>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    pub fn spawn(waker: Waker) -> Self {
        Self::spawn_with(waker, None)
    }

    /// An engine that plans as if at most `memory_limit` bytes were free (tests of refusals,
    /// like `ZIYA_VISUAL_MEMORY_LIMIT` but for this engine only).
    pub fn spawn_with(waker: Waker, memory_limit: Option<u64>) -> Self {
        let (tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ev_tx, rx) = crossbeam_channel::unbounded();
        let load_counter = Arc::new(std::sync::Mutex::new(Arc::new(LoadCounter::default())));
        let counter = load_counter.clone();
        let thread = std::thread::Builder::new()
            .name(ENGINE_THREAD.into())
            .spawn(move || {
                Worker {
                    cmd_rx,
                    ev_tx,
                    waker,
                    load_counter: counter,
                    loaded: None,
                    queue: VecDeque::new(),
                    cancelled: HashSet::new(),
                    shutting_down: false,
                    memory_limit,
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

    /// Waits for the next event (`None` once the engine is gone).
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// Stops a load in progress at the next tensor (the engine answers `LoadFailed`).
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

/// The model the engine holds, with what it was loaded from (to reload it after a failed swap).
struct Loaded {
    pipeline: Pipeline,
    summary: ModelSummary,
}

struct Worker {
    cmd_rx: Receiver<Command>,
    ev_tx: Sender<Event>,
    waker: Waker,
    load_counter: Arc<std::sync::Mutex<Arc<LoadCounter>>>,
    loaded: Option<Loaded>,
    /// Commands that arrived while a request was running, in order.
    queue: VecDeque<Command>,
    /// Requests cancelled before they started.
    cancelled: HashSet<RequestId>,
    shutting_down: bool,
    memory_limit: Option<u64>,
}

/// A panic's message, for the Failed event that reports it.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
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
                    Err(_) => break, // the users are gone
                },
            };
            match cmd {
                Command::Shutdown => break,
                Command::Cancel { id } => {
                    self.cancelled.insert(id);
                }
                Command::Measure { key, turns, max_new } => self.measure(key, &turns, max_new),
                Command::Unload => {
                    self.loaded = None;
                    self.emit(Event::Unloaded);
                }
                Command::Load(choice) => self.load(choice, None, None),
                Command::LoadFiles { files, prompt, context } => {
                    self.load(files.choice.clone(), Some(*files), Some((prompt, context)))
                }
                Command::Generate { id, turns, params } => self.generate(id, turns, &params, false),
                Command::GenerateReplayed { id, turns, params } => self.generate(id, turns, &params, true),
                #[cfg(test)]
                Command::Panic { id } => self.guarded(id, |_, _| panic!("injected fault")),
            }
        }
        // Dropping the model here frees it before the thread ends.
        self.loaded = None;
    }

    /// Loads `choice`. Its folders and the memory it needs are checked while the current model
    /// is still loaded: a wrong folder or a model that cannot fit leaves the current one in
    /// place. The new model is loaded beside the old one when both fit; otherwise the old one is
    /// freed first and, should the new one then fail, loaded again.
    fn load(&mut self, choice: ModelChoice, files: Option<ModelFiles>, sizing: Option<(usize, usize)>) {
        let counter = Arc::new(LoadCounter::default());
        if let Ok(mut slot) = self.load_counter.lock() {
            *slot = counter.clone();
        }
        let started = Instant::now();
        let checked = (|| -> Result<(ModelFiles, Placement, u64, bool)> {
            let files = match files {
                Some(f) => f,
                None => ModelFiles::read(&choice)?,
            };
            let place = Placement::resolve(choice.device, choice.precision);
            // A conversation may grow to the whole context unless the caller knows better.
            let (prompt, context) = sizing.unwrap_or_else(|| {
                let c = files.context_length();
                (crate::model::plan::PREFILL_CHUNK.min(c), c)
            });
            let plan = files.plan(&place, prompt, context);
            let free = match (crate::model::plan::available_bytes(&place.device), self.memory_limit) {
                (Some(f), Some(l)) => Some(f.min(l)),
                (f, l) => f.or(l),
            };
            // Free memory does not count what the current model gives back when it goes.
            let old = self.loaded.as_ref().map_or(0, |l| l.summary.planned_bytes);
            let beside = free.is_none_or(|f| plan.total <= f);
            if !beside {
                // Refused with the numbers unless unloading the current model makes room.
                files.check_against(&place, prompt, context, free.map(|f| f.saturating_add(old)))?;
            }
            Ok((files, place, plan.total, beside))
        })();
        let (files, place, planned_bytes, beside) = match checked {
            Ok(c) => c,
            Err(e) => return self.emit(Event::LoadFailed(Failure::from_error(&e))),
        };
        let previous = if beside { None } else { self.loaded.take().map(|l| l.summary.choice) };
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
            let quant = files.quant();
            let r = std::panic::catch_unwind(AssertUnwindSafe(|| files.load(&place, counter.clone()))).unwrap_or_else(
                |p| Err(Error::Request(format!("loading failed unexpectedly: {}", panic_message(&*p)))),
            );
            done.store(true, Ordering::Relaxed);
            r.map(|loaded| (Pipeline::new(loaded), quant))
        });
        match result {
            Ok((pipeline, quant)) => {
                let (_, total) = counter.snapshot();
                self.emit(Event::LoadProgress { done: total, total });
                let summary = ModelSummary {
                    choice,
                    device: device_name(pipeline.device()).into(),
                    dtype: dtype_name(pipeline.dtype()).into(),
                    quant,
                    device_notes: place.notes.clone(),
                    planned_bytes,
                    context_length: pipeline.context_length(),
                    query_tokens: pipeline.query_tokens(),
                    load_s: started.elapsed().as_secs_f64(),
                };
                self.loaded = Some(Loaded { pipeline, summary: summary.clone() });
                self.emit(Event::Loaded(Box::new(summary)));
            }
            Err(e) => {
                let failure = match e {
                    Error::Cancelled => Failure {
                        kind: FailureKind::Invalid,
                        problem: Problem::Cancelled,
                        message: "loading was cancelled".into(),
                    },
                    other => Failure::from_error(&other),
                };
                self.emit(Event::LoadFailed(failure));
                if let Some(old) = previous {
                    // The old model had to go to make room; bring it back.
                    self.load(old, None, None);
                }
            }
        }
    }

    fn measure(&mut self, key: u64, turns: &[ChatTurn], max_new: usize) {
        let Some(loaded) = &self.loaded else { return };
        let context = loaded.pipeline.context_length();
        let measured = match loaded.pipeline.measure(turns, max_new) {
            Ok(Ok(w)) => Measurement { key, window_start: w.start, prompt: w.len, max_new, context, too_long: false },
            Ok(Err(t)) => Measurement {
                key,
                window_start: turns.len().saturating_sub(1),
                prompt: t.prompt,
                max_new,
                context,
                too_long: true,
            },
            Err(_) => return, // a tokenizer failure shows when the question is sent
        };
        self.emit(Event::Measured(measured));
    }

    /// Answers `turns`, first replaying the answered turns' windows when `replay` is set.
    fn generate(&mut self, id: RequestId, mut turns: Vec<ChatTurn>, params: &SamplingParams, replay: bool) {
        if self.cancelled.remove(&id) {
            self.emit(Event::Finished { id, generation: Generation::cancelled_before_start() });
            return;
        }
        self.guarded(id, |worker, pipeline| {
            if replay {
                pipeline.replay_context_starts(&mut turns, params.max_new_tokens)?;
            }
            pipeline.generate(&turns, params, &mut |text| {
                if !text.is_empty() {
                    worker.emit(Event::Token { id, text: text.to_string() });
                }
                !worker.pump(Some(id))
            })
        });
    }

    /// Runs request `id` on the loaded model and reports how it ended: `Finished`, or `Failed`
    /// with the cause — also when the model code panics, after which the model is kept (its
    /// weights are untouched; the caches are cleared) and the engine keeps serving.
    fn guarded(&mut self, id: RequestId, run: impl FnOnce(&mut Self, &mut Pipeline) -> Result<Generation>) {
        let Some(mut loaded) = self.loaded.take() else {
            let failure = Failure::new(FailureKind::Invalid, "no model is loaded");
            self.emit(Event::Failed { id, failure });
            return;
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| run(self, &mut loaded.pipeline)));
        let event = match result {
            Ok(Ok(generation)) => Event::Finished { id, generation },
            Ok(Err(e)) => Event::Failed { id, failure: Failure::from_error(&e) },
            Err(panic) => {
                loaded.pipeline.reset_cache();
                let message = format!("the model failed while answering: {}", panic_message(&*panic));
                Event::Failed { id, failure: Failure::new(FailureKind::Crashed, message) }
            }
        };
        self.loaded = Some(loaded);
        self.emit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::StopReason;
    use std::collections::HashMap;

    fn tiny_request() -> ModelChoice {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-ziya");
        ModelChoice::folders(root.join("vision"), root.join("llm"))
    }

    fn wait_loaded(engine: &Engine) -> ModelSummary {
        loop {
            match engine.recv_timeout(Duration::from_secs(60)).expect("engine answers") {
                Event::Loaded(s) => return *s,
                Event::LoadFailed(e) => panic!("load failed: {}", e.message),
                _ => {}
            }
        }
    }

    fn question(q: &str) -> Vec<ChatTurn> {
        vec![ChatTurn::question(q, vec![])]
    }

    #[test]
    fn loads_reports_progress_and_answers() {
        let mut engine = Engine::spawn(Box::new(|| {}));
        engine.send(Command::Load(tiny_request()));
        let mut progress = Vec::new();
        let summary = loop {
            match engine.recv_timeout(Duration::from_secs(60)).unwrap() {
                Event::LoadProgress { done, total } => progress.push((done, total)),
                Event::Loaded(s) => break *s,
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
    fn a_panic_in_the_model_fails_that_request_and_the_engine_keeps_serving() {
        let mut engine = Engine::spawn(Box::new(|| {}));
        engine.send(Command::Load(tiny_request()));
        wait_loaded(&engine);
        engine.send(Command::Panic { id: 1 });
        let params = SamplingParams { temperature: 0.0, max_new_tokens: 4, ..Default::default() };
        engine.send(Command::Generate { id: 2, turns: question("还在吗？"), params });
        match engine.recv_timeout(Duration::from_secs(60)).unwrap() {
            Event::Failed { id: 1, failure } => {
                assert_eq!(failure.kind, FailureKind::Crashed);
                assert!(failure.message.contains("injected fault"), "{}", failure.message);
            }
            other => panic!("unexpected {other:?}"),
        }
        loop {
            match engine.recv_timeout(Duration::from_secs(60)).unwrap() {
                Event::Token { id: 2, .. } => {}
                Event::Finished { id: 2, generation } => {
                    assert_eq!(generation.token_ids.len(), 4);
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
            Event::Failed { id: 3, failure } => assert!(failure.message.contains("no model")),
            other => panic!("unexpected {other:?}"),
        }
        let mut bad = tiny_request();
        bad.llm = crate::model::choice::LlmSource::Folder("/nonexistent/llm".into());
        engine.send(Command::Load(bad));
        loop {
            match engine.recv_timeout(Duration::from_secs(10)).unwrap() {
                Event::LoadFailed(f) => {
                    assert!(f.message.contains("/nonexistent/llm"), "{}", f.message);
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
