//! The bridge between the async HTTP handlers and the engine, which is blocking and has one
//! event receiver.
//!
//! One dispatcher thread receives every engine event: load progress and the load's outcome
//! update the model state that `/health` and the handlers read; `Token`, `Finished` and `Failed`
//! are routed by request id to the channel of the handler that submitted the request. Handlers
//! submit `GenerateReplayed` commands as requests arrive; the engine answers them one at a time
//! in that order (the queue is the engine's own).
//!
//! A submitted request is held as a [`Ticket`]. Dropping a ticket before its request ended (the
//! client closed the connection, so hyper dropped the handler's future or the response stream)
//! sends `Cancel`: the engine stops within one token, or skips the request if it was still
//! queued. The route stays until the engine's final event, which the dispatcher logs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::chat::ChatTurn;
use crate::engine::{Command, Engine, Event, Failure, ModelSummary, RequestId};
use crate::generation::{Generation, StopReason};
use crate::model::choice::ModelChoice;
use crate::sampling::SamplingParams;

/// Whether there is a model to answer with.
#[derive(Debug, Clone)]
pub enum ModelState {
    Loading { done: u64, total: u64 },
    Ready(Arc<ModelSummary>),
    Failed(String),
}

/// What a handler receives for its request, ending with exactly one `Finished` or `Failed`.
#[derive(Debug)]
pub enum Reply {
    Text(String),
    Finished(Generation),
    Failed(Failure),
}

/// Why a request that the engine reports as cancelled was cancelled (for the log).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ending {
    Running,
    StopString,
    ClientGone,
}

struct Route {
    tx: mpsc::UnboundedSender<Reply>,
    ending: Ending,
    submitted: Instant,
}

struct Shared {
    model: Mutex<ModelState>,
    routes: Mutex<HashMap<RequestId, Route>>,
}

/// A mutex's contents even if a thread panicked while holding it (the data stays consistent:
/// every critical section here is a single insert, remove or assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Hub {
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

impl Hub {
    /// Starts the engine, has it load `choice`, and starts the dispatcher.
    pub fn start(choice: ModelChoice) -> std::io::Result<Self> {
        let engine = Arc::new(Engine::spawn(Box::new(|| {})));
        let shared = Arc::new(Shared {
            model: Mutex::new(ModelState::Loading { done: 0, total: 0 }),
            routes: Mutex::new(HashMap::new()),
        });
        engine.send(Command::Load(choice));
        let (e, s) = (engine.clone(), shared.clone());
        std::thread::Builder::new().name("ziya-server-dispatch".into()).spawn(move || dispatch(&e, &s))?;
        Ok(Self { engine, shared, next_id: AtomicU64::new(1) })
    }

    pub fn model(&self) -> ModelState {
        lock(&self.shared.model).clone()
    }

    /// Requests submitted and not yet ended (running or queued).
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.routes).len()
    }

    /// Queues `turns` (answered turns without recorded windows) on the engine.
    pub fn submit(&self, turns: Vec<ChatTurn>, params: SamplingParams) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        // Routed before the engine can answer.
        lock(&self.shared.routes).insert(id, Route { tx, ending: Ending::Running, submitted: Instant::now() });
        self.engine.send(Command::GenerateReplayed { id, turns, params });
        Ticket { id, rx, engine: self.engine.clone(), shared: self.shared.clone(), ended: false }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // The engine thread ends (within a token, or at the next tensor of a load); the
        // dispatcher then sees the event channel close and ends too.
        self.engine.cancel_load();
        self.engine.send(Command::Shutdown);
    }
}

/// One submitted request: its replies, and its cancellation when dropped unfinished.
pub struct Ticket {
    pub id: RequestId,
    rx: mpsc::UnboundedReceiver<Reply>,
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    ended: bool,
}

impl Ticket {
    /// The next reply; `None` only if the engine went away.
    pub async fn next(&mut self) -> Option<Reply> {
        let reply = self.rx.recv().await;
        if matches!(reply, None | Some(Reply::Finished(_)) | Some(Reply::Failed(_))) {
            self.ended = true;
        }
        reply
    }

    /// Stops generating (a stop string was found); the request still ends with `Finished`.
    pub fn stop(&self) {
        self.cancel(Ending::StopString);
    }

    fn cancel(&self, why: Ending) {
        if let Some(route) = lock(&self.shared.routes).get_mut(&self.id) {
            if route.ending == Ending::Running {
                route.ending = why;
            }
        }
        self.engine.send(Command::Cancel { id: self.id });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.ended {
            self.cancel(Ending::ClientGone);
        }
    }
}

fn dispatch(engine: &Engine, shared: &Shared) {
    while let Some(event) = engine.recv() {
        match event {
            Event::LoadProgress { done, total } => {
                let mut model = lock(&shared.model);
                if let ModelState::Loading { .. } = *model {
                    *model = ModelState::Loading { done, total };
                }
            }
            Event::Loaded(summary) => {
                for note in &summary.device_notes {
                    log(format_args!("note: {note}"));
                }
                log(format_args!(
                    "model loaded in {:.1} s: {} {} on {}, context {}",
                    summary.load_s,
                    summary.choice.llm.describe(),
                    summary.precision_label(),
                    summary.device,
                    summary.context_length
                ));
                *lock(&shared.model) = ModelState::Ready(Arc::new(*summary));
            }
            Event::LoadFailed(failure) => {
                log(format_args!("error: the model did not load: {failure}"));
                *lock(&shared.model) = ModelState::Failed(failure.message);
            }
            Event::Unloaded => *lock(&shared.model) = ModelState::Failed("the model was unloaded".into()),
            Event::Token { id, text } => {
                if let Some(route) = lock(&shared.routes).get(&id) {
                    let _ = route.tx.send(Reply::Text(text));
                }
            }
            Event::Finished { id, generation } => {
                if let Some(route) = lock(&shared.routes).remove(&id) {
                    log_finished(id, &route, &generation);
                    let _ = route.tx.send(Reply::Finished(generation));
                }
            }
            Event::Failed { id, failure } => {
                if let Some(route) = lock(&shared.routes).remove(&id) {
                    log(format_args!("request {id}: failed: {failure}"));
                    let _ = route.tx.send(Reply::Failed(failure));
                }
            }
            Event::Measured(_) => {}
        }
    }
}

/// One line on stderr per answered request.
fn log_finished(id: RequestId, route: &Route, g: &Generation) {
    let how = match (g.stop, route.ending) {
        (StopReason::Eos, _) => "stop",
        (StopReason::MaxTokens, _) => "length",
        (StopReason::Cancelled, Ending::StopString) => "stop string",
        (StopReason::Cancelled, _) => "cancelled: client gone",
    };
    log(format_args!(
        "request {id}: {} prompt tokens ({} cached), {} completion tokens, {how}, {:.2} s",
        g.prompt_tokens,
        g.reused_tokens,
        g.token_ids.len(),
        route.submitted.elapsed().as_secs_f64()
    ));
}

/// A line on stderr. Unlike `eprintln!`, a closed stderr (`serve 2>&1 | head`) is no reason to
/// panic: this thread routes every answer.
pub fn log(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
