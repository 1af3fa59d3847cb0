//! The OpenAI chat-completions wire format, as much of it as this server speaks: the request
//! (fields it does not know are ignored, as OpenAI-compatible servers do), the responses and
//! stream chunks, the model list and the error shape `{"error": {message, type, param, code}}`.
//!
//! Message contents stay `serde_json::Value` here: `convert.rs` reads them with error messages
//! that name the offending part (`messages[2].content[1].image_url.url`), which serde's untagged
//! enums cannot do.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/chat/completions`. Every field but `messages` is optional; `model` may name anything.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub seed: Option<i64>,
    pub stop: Option<Value>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    // Extensions, as vLLM spells them.
    /// 0 or -1 turns top-k off.
    pub top_k: Option<i64>,
    /// The multiplicative repeat penalty itself (1.0 is off); overrides the OpenAI penalties.
    pub repetition_penalty: Option<f32>,
    /// Generate exactly the maximum number of tokens (benchmarks).
    pub ignore_eos: Option<bool>,
    /// Return the generated token ids in `choices[0].token_ids` (not streamed answers).
    pub return_token_ids: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// A non-streamed answer (`chat.completion`).
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<()>,
    pub finish_reason: &'static str,
    /// With `return_token_ids` (vLLM's extension): the generated ids, EOS excluded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

/// Token counts. `prompt_tokens` are the positions of the window the model saw (text tokens plus
/// the query tokens of each image, as `ask --json` reports); `cached_tokens` those of them whose
/// keys and values were reused from the previous request.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

/// One Server-Sent Event of a streamed answer (`chat.completion.chunk`).
#[derive(Debug, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// With `stream_options.include_usage`: `null` on every chunk but the last, which has no
    /// choices and the usage. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

/// An error answered in OpenAI's shape with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None }
    }

    /// 400: the request cannot be served as sent.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 401: `--api-key` was given and the request does not carry it.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing or incorrect API key: send `Authorization: Bearer KEY` with the key given to --api-key",
        )
        .code("invalid_api_key")
    }

    /// 413: the body or an image is over its cap.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", message).code("request_too_large")
    }

    /// 503: no model to answer with (still loading, or the load failed).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).code("model_not_loaded")
    }

    /// 500: the model failed while answering.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message).code("not_found")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method not allowed on this path")
    }

    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body, also sent as an event when a stream fails after it started.
    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_ignored_and_absent_ones_are_none() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi","name":"me"}],
                "logit_bias":{"1":2},"user":"x","temperature":0,"stream":true}"#,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.temperature, Some(0.0));
        assert_eq!(r.stream, Some(true));
        assert!(r.max_tokens.is_none() && r.stop.is_none() && r.n.is_none());
    }

    #[test]
    fn errors_have_openais_shape() {
        let e = ApiError::bad_request("bad n").param("n");
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"message": "bad n", "type": "invalid_request_error", "param": "n", "code": null}})
        );
        assert_eq!(ApiError::unauthorized().status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn chunk_usage_is_absent_null_or_set() {
        let chunk = |usage| ChatChunk {
            id: "c".into(),
            object: "chat.completion.chunk",
            created: 1,
            model: "m".into(),
            choices: vec![],
            usage,
        };
        assert!(serde_json::to_value(chunk(None)).unwrap().get("usage").is_none());
        assert_eq!(serde_json::to_value(chunk(Some(None))).unwrap()["usage"], Value::Null);
    }
}
