//! `ziya-visual serve`: a local OpenAI-compatible endpoint (`POST /v1/chat/completions`,
//! `GET /v1/models`, `GET /health`) on the same engine the window and `ask` use.
//!
//! - `openai`: the wire format (requests, responses, stream chunks, errors);
//! - `convert`: messages into `ChatTurn`s, `data:` URLs into images, sampling fields into
//!   `SamplingParams`;
//! - `stop`: stop strings over streamed text;
//! - `hub`: the engine bridge (one dispatcher thread routes engine events to requests; dropping
//!   a request's ticket cancels it).
//!
//! The HTTP stack is axum on hyper 1 and tokio (HTTP/1, no TLS). Requests queue on the one
//! engine and are answered in arrival order; successive requests of one conversation reuse the
//! engine's image embeddings and KV-cache prefix, so a client that resends the whole history
//! pays only for what is new.

pub mod convert;
pub mod hub;
pub mod openai;
pub mod stop;

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};

use self::convert::{decode_check, unix_now, Prepared};
use self::hub::{log, Hub, ModelState, Reply, Ticket};
use self::openai::*;
use self::stop::StopScanner;
use crate::chat::ImageData;
use crate::engine::{Failure, FailureKind, ModelSummary};
use crate::error::{Error, Problem, Result};
use crate::generation::{Generation, StopReason};
use crate::model::choice::ModelChoice;

/// The id `GET /v1/models` lists. Requests may name any model: clients send whatever their user
/// typed, and there is only one to answer with.
pub const MODEL_ID: &str = "ziya-visual";
/// Request bodies over this are refused with 413 (images travel inside them as base64).
pub const MAX_BODY_BYTES: usize = 50 << 20;
/// Image hashes remembered as decoding fine, so a resent history is not decoded again.
const CHECKED_IMAGES: usize = 256;

/// What `ziya-visual serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model: ModelChoice,
    pub host: String,
    pub port: u16,
    /// Requests to `/v1/…` must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
}

struct App {
    hub: Hub,
    api_key: Option<String>,
    created: u64,
    checked: Mutex<CheckedImages>,
    /// Held while an image is decoded: one at a time, so a burst of requests with huge images
    /// takes the memory of one decode, not of all of them at once.
    decoding: Mutex<()>,
}

/// A bounded set of image hashes that decoded fine.
#[derive(Default)]
struct CheckedImages {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl CheckedImages {
    fn insert(&mut self, hash: &str) {
        if self.set.insert(hash.to_string()) {
            self.order.push_back(hash.to_string());
            if self.order.len() > CHECKED_IMAGES {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Binds, prints `listening on http://ADDR` on stderr, loads the model and serves until Ctrl+C
/// or SIGTERM.
pub fn serve(options: ServeOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ziya-server")
        .enable_all()
        .build()
        .map_err(|e| Error::Request(format!("cannot start the server's runtime: {e}")))?;
    // When `run` returns, dropping the runtime drops the connections' tasks and with them the
    // hub, which stops the engine (an answer in flight within a token).
    runtime.block_on(run(options))
}

async fn run(options: ServeOptions) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((options.host.as_str(), options.port))
        .await
        .map_err(|e| Error::Request(format!("cannot listen on {}:{}: {e}", options.host, options.port)))?;
    let addr = listener.local_addr().map_err(|e| Error::Request(format!("the listening socket: {e}")))?;
    let hub = Hub::start(options.model).map_err(|e| Error::Request(format!("cannot start the engine: {e}")))?;
    let app = Arc::new(App {
        hub,
        api_key: options.api_key,
        created: unix_now(),
        checked: Mutex::default(),
        decoding: Mutex::new(()),
    });
    log(format_args!("listening on http://{addr}"));
    if !addr.ip().is_loopback() && app.api_key.is_none() {
        log(format_args!("warning: {} is reachable from other machines and no --api-key was given", addr.ip()));
    }
    log(format_args!("loading the model; /health answers 200 once it is ready"));
    let server = axum::serve(listener, router(app.clone()));
    tokio::select! {
        r = server => r.map_err(|e| Error::Request(format!("the server stopped: {e}")))?,
        _ = shutdown_signal() => log(format_args!("shutting down")),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize));
    Router::new()
        .route("/health", get(health))
        .merge(v1)
        .fallback(|| async { ApiError::not_found("no such endpoint (try POST /v1/chat/completions)") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}

/// `/v1/…`: the API key when one was given, and a declared body size over the cap refused
/// before any of it is read.
async fn authorize(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return body_too_large().into_response();
    }
    next.run(request).await
}

/// Compares without an early exit, so response timing does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn body_too_large() -> ApiError {
    ApiError::too_large(format!("the request body is over {} MB", MAX_BODY_BYTES >> 20))
}

async fn health(State(app): State<Arc<App>>) -> Response {
    match app.hub.model() {
        ModelState::Ready(s) => Json(serde_json::json!({
            "status": "ok",
            "model": MODEL_ID,
            "device": s.device,
            "dtype": s.precision_label(),
            "context_length": s.context_length,
            "requests": app.hub.in_flight(),
        }))
        .into_response(),
        ModelState::Loading { done, total } => {
            let progress = if total > 0 { done as f64 / total as f64 } else { 0.0 };
            let body = serde_json::json!({"status": "loading", "progress": progress});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
        ModelState::Failed(message) => {
            let body = serde_json::json!({"status": "error", "error": message});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn models(State(app): State<Arc<App>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard { id: MODEL_ID.into(), object: "model", created: app.created, owned_by: "ziya-visual" }],
    })
}

async fn chat_completions(State(app): State<Arc<App>>, body: std::result::Result<Bytes, BytesRejection>) -> Response {
    match answer(app, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The loaded model, or 503 saying why there is none.
fn ready(app: &App) -> std::result::Result<Arc<ModelSummary>, ApiError> {
    match app.hub.model() {
        ModelState::Ready(s) => Ok(s),
        ModelState::Loading { done, total } => {
            let pct = if total > 0 { format!(" ({:.0} %)", 100.0 * done as f64 / total as f64) } else { String::new() };
            Err(ApiError::unavailable(format!("the model is still loading{pct}; retry when GET /health answers 200")))
        }
        ModelState::Failed(message) => Err(ApiError::unavailable(format!("no model is loaded: {message}"))),
    }
}

/// Checks an image once per content (a resent history is not decoded again).
fn check_image(app: &App, image: &ImageData) -> std::result::Result<(), ApiError> {
    if app.checked.lock().unwrap_or_else(|e| e.into_inner()).set.contains(&image.hash) {
        return Ok(());
    }
    {
        let _one_at_a_time = app.decoding.lock().unwrap_or_else(|e| e.into_inner());
        decode_check(image)?;
    }
    app.checked.lock().unwrap_or_else(|e| e.into_inner()).insert(&image.hash);
    Ok(())
}

async fn answer(
    app: Arc<App>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Response, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => body_too_large(),
        _ => ApiError::bad_request(format!("the request body could not be read: {rejection}")),
    })?;
    let summary = ready(&app)?;
    // Parsing, base64 and the image check are CPU work: off the async threads.
    let context = summary.context_length;
    let prepared = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || convert::prepare(&body, context, &mut |image| check_image(&app, image)))
            .await
            .map_err(|e| ApiError::internal(format!("reading the request failed: {e}")))??
    };
    let Prepared { turns, params, stops, stream, include_usage, return_token_ids } = prepared;
    let mut ticket = app.hub.submit(turns, params);
    // Wait for the answer to begin (through the queue) so that a request the engine refuses
    // (too long for the context) gets its status code even when streamed.
    let first = match ticket.next().await {
        Some(Reply::Failed(failure)) => return Err(failure_error(&failure)),
        Some(reply) => reply,
        None => return Err(engine_gone()),
    };
    let completion_id = format!("chatcmpl-{:x}-{}", app.created, ticket.id);
    let answer = Answer { ticket, scanner: StopScanner::new(stops), id: completion_id, created: unix_now() };
    if stream {
        Ok(stream_answer(answer, first, include_usage).into_response())
    } else {
        whole_answer(answer, first, return_token_ids).await.map(|c| Json(c).into_response())
    }
}

fn engine_gone() -> ApiError {
    ApiError::internal("the engine stopped")
}

fn failure_error(failure: &Failure) -> ApiError {
    match failure.kind {
        FailureKind::Invalid if matches!(failure.problem, Problem::TooLong(_)) => {
            ApiError::bad_request(failure.message.clone()).param("messages").code("context_length_exceeded")
        }
        FailureKind::Invalid => ApiError::bad_request(failure.message.clone()),
        FailureKind::Model | FailureKind::Crashed => ApiError::internal(failure.message.clone()),
    }
}

/// A request being answered.
struct Answer {
    ticket: Ticket,
    scanner: StopScanner,
    id: String,
    created: u64,
}

impl Answer {
    /// Takes a piece of text through the stop strings; the text to send now. Once a stop string
    /// shows, the engine is told to stop (its `Finished` still comes, with the counts).
    fn text(&mut self, piece: &str) -> String {
        if self.scanner.stopped() {
            return String::new();
        }
        let (out, hit) = self.scanner.push(piece);
        if hit {
            self.ticket.stop();
        }
        out
    }

    fn finish_reason(&self, g: &Generation) -> &'static str {
        match g.stop {
            StopReason::MaxTokens if !self.scanner.stopped() => "length",
            _ => "stop",
        }
    }
}

fn usage(g: &Generation) -> Usage {
    let completion = g.token_ids.len();
    Usage {
        prompt_tokens: g.prompt_tokens,
        completion_tokens: completion,
        total_tokens: g.prompt_tokens + completion,
        prompt_tokens_details: PromptTokensDetails { cached_tokens: g.reused_tokens },
    }
}

async fn whole_answer(
    mut a: Answer,
    first: Reply,
    return_token_ids: bool,
) -> std::result::Result<ChatCompletion, ApiError> {
    let mut reply = Some(first);
    loop {
        match reply {
            Some(Reply::Text(t)) => {
                a.text(&t);
            }
            Some(Reply::Finished(g)) => {
                a.scanner.finish();
                return Ok(ChatCompletion {
                    id: a.id.clone(),
                    object: "chat.completion",
                    created: a.created,
                    model: MODEL_ID.into(),
                    choices: vec![Choice {
                        index: 0,
                        message: AssistantMessage { role: "assistant", content: a.scanner.text().to_string() },
                        logprobs: None,
                        finish_reason: a.finish_reason(&g),
                        token_ids: return_token_ids.then(|| g.token_ids.clone()),
                    }],
                    usage: usage(&g),
                });
            }
            Some(Reply::Failed(f)) => return Err(failure_error(&f)),
            None => return Err(engine_gone()),
        }
        reply = a.ticket.next().await;
    }
}

/// The stream's state between events.
struct Streaming {
    answer: Answer,
    /// The reply received before the response started.
    first: Option<Reply>,
    include_usage: bool,
    out: VecDeque<SseEvent>,
    done: bool,
}

impl Streaming {
    fn chunk(&self, delta: Delta, finish_reason: Option<&'static str>) -> SseEvent {
        let chunk = ChatChunk {
            id: self.answer.id.clone(),
            object: "chat.completion.chunk",
            created: self.answer.created,
            model: MODEL_ID.into(),
            choices: vec![ChunkChoice { index: 0, delta, logprobs: None, finish_reason }],
            usage: self.include_usage.then_some(None),
        };
        json_event(&chunk)
    }

    fn content(&mut self, text: String) {
        if !text.is_empty() {
            let e = self.chunk(Delta { role: None, content: Some(text) }, None);
            self.out.push_back(e);
        }
    }

    /// Handles one reply, queueing the events it makes.
    fn take(&mut self, reply: Option<Reply>) {
        match reply {
            Some(Reply::Text(t)) => {
                let out = self.answer.text(&t);
                self.content(out);
            }
            Some(Reply::Finished(g)) => {
                let rest = self.answer.scanner.finish();
                self.content(rest);
                let reason = self.answer.finish_reason(&g);
                let e = self.chunk(Delta::default(), Some(reason));
                self.out.push_back(e);
                if self.include_usage {
                    let last = ChatChunk {
                        id: self.answer.id.clone(),
                        object: "chat.completion.chunk",
                        created: self.answer.created,
                        model: MODEL_ID.into(),
                        choices: vec![],
                        usage: Some(Some(usage(&g))),
                    };
                    self.out.push_back(json_event(&last));
                }
                self.out.push_back(SseEvent::default().data("[DONE]"));
                self.done = true;
            }
            Some(Reply::Failed(f)) => {
                self.out.push_back(json_event(&failure_error(&f).body()));
                self.done = true;
            }
            None => {
                self.out.push_back(json_event(&engine_gone().body()));
                self.done = true;
            }
        }
    }
}

fn json_event<T: serde::Serialize>(value: &T) -> SseEvent {
    // Serialising these types cannot fail (no maps with non-string keys, no custom impls).
    SseEvent::default().data(serde_json::to_string(value).unwrap_or_default())
}

/// The answer as Server-Sent Events: a role chunk, content chunks, a chunk with the finish
/// reason, the usage chunk when asked for, then `data: [DONE]`. Dropping the stream (the client
/// went away) drops the ticket, which cancels the request.
fn stream_answer(
    answer: Answer,
    first: Reply,
    include_usage: bool,
) -> Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>> {
    let mut state = Streaming { answer, first: Some(first), include_usage, out: VecDeque::new(), done: false };
    let role = state.chunk(Delta { role: Some("assistant"), content: Some(String::new()) }, None);
    state.out.push_back(role);
    Sse::new(stream::unfold(state, |mut s| async move {
        loop {
            if let Some(event) = s.out.pop_front() {
                return Some((Ok(event), s));
            }
            if s.done {
                return None;
            }
            let reply = match s.first.take() {
                Some(r) => Some(r),
                None => s.answer.ticket.next().await,
            };
            s.take(reply);
        }
    }))
}
