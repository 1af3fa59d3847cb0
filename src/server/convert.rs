//! OpenAI requests into what the engine answers: the messages as `ChatTurn`s, images from
//! `data:` URLs, the sampling fields as `SamplingParams`, the stop strings.
//!
//! Messages map to turns as `ask` and the window lay them out (each turn's images first, then its
//! text):
//! - `user`: a turn; its image parts are the turn's images in order, its text parts joined with
//!   "\n" the question. Consecutive user messages merge into one turn (the images of both first,
//!   then the texts joined with "\n"): some clients send an image and its question separately.
//! - `assistant`: the answer of the turn before it (consecutive ones joined with "\n"); text only.
//! - `system` / `developer`: text only, wherever it appears; all of it (joined with "\n") goes
//!   before the first question as `system + "\n" + question`.
//! - The conversation must end with a user message; `tool`/`function` messages are refused.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::Value;

use super::openai::{ApiError, ChatRequest, Message};
use crate::chat::{ChatTurn, ImageData};
use crate::sampling::SamplingParams;

/// Encoded bytes one image may have (a 12-megapixel JPEG is 3-8 MB).
pub const MAX_IMAGE_BYTES: usize = 20 << 20;
/// Stop strings a request may give (OpenAI allows 4).
const MAX_STOPS: usize = 16;

/// A request, ready for the engine.
#[derive(Debug)]
pub struct Prepared {
    pub turns: Vec<ChatTurn>,
    pub params: SamplingParams,
    pub stops: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub return_token_ids: bool,
}

/// `max_tokens` when a request gives none: 512, or a quarter of a smaller context (the rest is
/// the conversation's).
pub fn default_max_tokens(context: usize) -> usize {
    (context / 4).clamp(1, 512)
}

/// Parses and converts a request body. `context` is the loaded model's context length (for the
/// default `max_tokens`). Images are decoded here only to be checked (see `check_image`).
pub fn prepare(
    body: &[u8],
    context: usize,
    check_image: &mut dyn FnMut(&ImageData) -> Result<(), ApiError>,
) -> Result<Prepared, ApiError> {
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not a valid chat completion request: {e}")))?;
    convert(req, context, check_image)
}

pub fn convert(
    req: ChatRequest,
    context: usize,
    check_image: &mut dyn FnMut(&ImageData) -> Result<(), ApiError>,
) -> Result<Prepared, ApiError> {
    if let Some(n) = req.n {
        if n != 1 {
            return Err(ApiError::bad_request(format!("only n = 1 is supported, got {n}")).param("n"));
        }
    }
    let params = sampling(&req, context)?;
    let stops = stops(req.stop.as_ref())?;
    let turns = turns(&req.messages, check_image)?;
    let stream = req.stream.unwrap_or(false);
    let include_usage = stream && req.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
    let return_token_ids = req.return_token_ids.unwrap_or(false);
    Ok(Prepared { turns, params, stops, stream, include_usage, return_token_ids })
}

/// The sampling fields. Absent ones take the model card's defaults, as `ask` does (temperature
/// 0.7, top_p 0.1); `max_tokens` defaults to [`default_max_tokens`].
pub fn sampling(req: &ChatRequest, context: usize) -> Result<SamplingParams, ApiError> {
    let defaults = SamplingParams::default();
    let max = match req.max_completion_tokens.or(req.max_tokens) {
        Some(0) => {
            let param = if req.max_completion_tokens.is_some() { "max_completion_tokens" } else { "max_tokens" };
            return Err(ApiError::bad_request(format!("{param} must be at least 1")).param(param));
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => default_max_tokens(context),
    };
    let top_k = match req.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::bad_request(format!("top_k must be -1, 0 or positive, got {k}")).param("top_k"))
        }
    };
    let repeat_penalty = match req.repetition_penalty {
        Some(r) => r,
        None => {
            let mut total = 0.0;
            for (name, v) in [("frequency_penalty", req.frequency_penalty), ("presence_penalty", req.presence_penalty)]
            {
                let v = v.unwrap_or(0.0);
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::bad_request(format!("{name} must be in [-2, 2], got {v}")).param(name));
                }
                total += v;
            }
            penalty_from_openai(total.clamp(-2.0, 2.0))
        }
    };
    let params = SamplingParams {
        max_new_tokens: max,
        temperature: req.temperature.unwrap_or(defaults.temperature),
        top_p: req.top_p.unwrap_or(defaults.top_p),
        top_k,
        repeat_penalty,
        // OpenAI's seed is any integer; a negative one (llama.cpp's -1) means a fresh draw.
        seed: req.seed.and_then(|s| u64::try_from(s).ok()),
        ignore_eos: req.ignore_eos.unwrap_or(false),
    };
    params.validate().map_err(|msg| {
        let param = ["temperature", "top_p", "repeat_penalty"].into_iter().find(|p| msg.starts_with(p));
        let e = ApiError::bad_request(msg.replace("repeat_penalty", "repetition_penalty"));
        match param {
            Some("repeat_penalty") => e.param("repetition_penalty"),
            Some(p) => e.param(p),
            None => e,
        }
    })?;
    Ok(params)
}

/// OpenAI's additive penalty (frequency + presence, in [-2, 2], 0 off) as the model's
/// multiplicative repeat penalty (1 off): 1 + p for p ≥ 0, 1 / (1 − p) below, so 1 → 2 and
/// −1 → 0.5. The repeat penalty divides the logit of every token already generated once.
pub fn penalty_from_openai(p: f32) -> f32 {
    if p >= 0.0 {
        1.0 + p
    } else {
        1.0 / (1.0 - p)
    }
}

/// `stop`: a string or a list of strings (empty ones ignored).
fn stops(stop: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || ApiError::bad_request("stop must be a string or a list of strings").param("stop");
    let list = match stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(bad)).collect::<Result<Vec<_>, _>>()?
        }
        Some(_) => return Err(bad()),
    };
    let list: Vec<String> = list.into_iter().filter(|s| !s.is_empty()).collect();
    if list.len() > MAX_STOPS {
        return Err(
            ApiError::bad_request(format!("at most {MAX_STOPS} stop strings, got {}", list.len())).param("stop")
        );
    }
    Ok(list)
}

/// Which kind of message came last while building turns.
#[derive(PartialEq)]
enum Last {
    Nothing,
    User,
    Assistant,
}

/// The messages as turns (see the module's documentation for the mapping).
pub fn turns(
    messages: &[Message],
    check_image: &mut dyn FnMut(&ImageData) -> Result<(), ApiError>,
) -> Result<Vec<ChatTurn>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages is empty: send at least one user message").param("messages"));
    }
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<ChatTurn> = Vec::new();
    let mut last = Last::Nothing;
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        match m.role.as_str() {
            "system" | "developer" => {
                let text = text_only(m, &at)?;
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "user" => {
                let (images, text) = user_content(m, &at, check_image)?;
                match (&last, turns.last_mut()) {
                    (Last::User, Some(turn)) => {
                        turn.images.extend(images);
                        turn.query = join(&turn.query, &text);
                    }
                    _ => turns.push(ChatTurn::question(text, images)),
                }
                last = Last::User;
            }
            "assistant" => {
                let text = text_only(m, &at)?;
                let Some(turn) = turns.last_mut().filter(|_| last != Last::Nothing) else {
                    return Err(ApiError::bad_request(format!(
                        "{at}: an assistant message must follow a user message (it answers one)"
                    ))
                    .param(format!("{at}.role")));
                };
                turn.answer = Some(match &turn.answer {
                    Some(previous) => join(previous, &text),
                    None => text,
                });
                last = Last::Assistant;
            }
            "tool" | "function" => {
                return Err(ApiError::bad_request(format!("{at}: {} messages are not supported (no tools)", m.role))
                    .param(format!("{at}.role")))
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "{at}: unknown role {other:?} (expected system, user or assistant)"
                ))
                .param(format!("{at}.role")))
            }
        }
    }
    if last != Last::User {
        return Err(ApiError::bad_request("the last message must be a user message: there is no question to answer")
            .param("messages"));
    }
    if !system.is_empty() {
        if let Some(first) = turns.first_mut() {
            first.query = format!("{}\n{}", system.join("\n"), first.query);
        }
    }
    Ok(turns)
}

/// Two texts joined with "\n", leaving out an empty one.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}\n{b}"),
    }
}

/// The text of a system or assistant message (a string, null, or text parts).
fn text_only(m: &Message, at: &str) -> Result<String, ApiError> {
    let (images, text) = content(m, at, &mut |_, p| {
        Err(ApiError::bad_request(format!("{p}: only user messages may carry images")).param(p))
    })?;
    debug_assert!(images.is_empty());
    Ok(text)
}

/// The images and text of a user message.
fn user_content(
    m: &Message,
    at: &str,
    check_image: &mut dyn FnMut(&ImageData) -> Result<(), ApiError>,
) -> Result<(Vec<ImageData>, String), ApiError> {
    content(m, at, &mut |url, param| {
        let image = image_from_url(url, param)?;
        check_image(&image)?;
        Ok(image)
    })
}

/// A message's content: a string, null, or a list of `text` / `image_url` parts. Images go
/// through `on_image(url, param)`; texts are joined with "\n".
fn content(
    m: &Message,
    at: &str,
    on_image: &mut dyn FnMut(&str, &str) -> Result<ImageData, ApiError>,
) -> Result<(Vec<ImageData>, String), ApiError> {
    let param = format!("{at}.content");
    let parts = match &m.content {
        None | Some(Value::Null) => return Ok((Vec::new(), String::new())),
        Some(Value::String(s)) => return Ok((Vec::new(), s.clone())),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(
                ApiError::bad_request(format!("{param} must be a string or a list of content parts")).param(param)
            )
        }
    };
    let mut images = Vec::new();
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let p = format!("{param}[{j}]");
        let kind = part.get("type").and_then(Value::as_str);
        match kind {
            Some("text") => {
                let t = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_request(format!("{p}: a text part needs a string `text`")).param(format!("{p}.text"))
                })?;
                text = join(&text, t);
            }
            Some("image_url") => {
                // `{"image_url": {"url": …}}`, or the bare string some clients send.
                let url = match part.get("image_url") {
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(v) => v.get("url").and_then(Value::as_str),
                    None => None,
                };
                let url = url.ok_or_else(|| {
                    ApiError::bad_request(format!("{p}: an image_url part needs `image_url.url`"))
                        .param(format!("{p}.image_url"))
                })?;
                images.push(on_image(url, &format!("{p}.image_url.url"))?);
            }
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "{p}: content parts of type {other:?} are not supported (text and image_url are)"
                ))
                .param(format!("{p}.type")))
            }
            None => {
                return Err(
                    ApiError::bad_request(format!("{p}: a content part needs a `type`")).param(format!("{p}.type"))
                )
            }
        }
    }
    Ok((images, text))
}

/// Base64 as clients write it: padded or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The bytes of a `data:image/…;base64,…` URL, named after `param` (error messages say which
/// part of the request it was). Remote URLs are refused: the server fetches nothing.
pub fn image_from_url(url: &str, param: &str) -> Result<ImageData, ApiError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(ApiError::bad_request(format!(
            "{param}: remote image URLs are not fetched (the server makes no network requests); \
             send the image inline as a data: URL (data:image/png;base64,...)"
        ))
        .param(param)
        .code("remote_image_url"));
    }
    let Some(rest) = url.get(..5).filter(|s| s.eq_ignore_ascii_case("data:")).map(|_| &url[5..]) else {
        return Err(ApiError::bad_request(format!("{param}: images must be data: URLs (data:image/png;base64,...)"))
            .param(param));
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(ApiError::bad_request(format!("{param}: a data: URL needs a comma before its data")).param(param));
    };
    let Some(media) = meta.strip_suffix(";base64") else {
        return Err(ApiError::bad_request(format!(
            "{param}: the data: URL must be base64 (data:image/png;base64,...)"
        ))
        .param(param));
    };
    let media = media.split(';').next().unwrap_or("");
    if !media.is_empty() && !media.to_ascii_lowercase().starts_with("image/") {
        return Err(ApiError::bad_request(format!("{param}: {media} is not an image type")).param(param));
    }
    let too_large =
        || ApiError::too_large(format!("{param}: the image is over {} MB", MAX_IMAGE_BYTES >> 20)).param(param);
    if data.len() / 4 * 3 > MAX_IMAGE_BYTES + 3 {
        return Err(too_large());
    }
    let decoded = if data.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        BASE64.decode(compact)
    } else {
        BASE64.decode(data)
    };
    let bytes = decoded.map_err(|e| ApiError::bad_request(format!("{param}: invalid base64: {e}")).param(param))?;
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(too_large());
    }
    if bytes.is_empty() {
        return Err(ApiError::bad_request(format!("{param}: the image is empty")).param(param));
    }
    Ok(ImageData::new(param, bytes))
}

/// Checks that an image decodes, through the project's decoder and its limits: a bad or
/// oversized image (a decompression bomb) is a 400 naming the part, never a crash.
pub fn decode_check(image: &ImageData) -> Result<(), ApiError> {
    crate::preprocess::decode_rgb(&image.bytes, &image.name)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request(e.to_string()).param(image.name.clone()))
}

/// Seconds since 1970 (the `created` fields).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use serde_json::json;

    const PNG_1X1: &str =
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

    fn req(v: Value) -> Result<Prepared, ApiError> {
        prepare(v.to_string().as_bytes(), 2048, &mut |i| decode_check(i))
    }

    fn image(url: &str) -> Value {
        json!({"type": "image_url", "image_url": {"url": url}})
    }

    fn png() -> String {
        format!("data:image/png;base64,{PNG_1X1}")
    }

    #[test]
    fn a_conversation_maps_to_turns_images_first() {
        let p = req(json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image(&png())]},
            {"role": "assistant", "content": "A dot."},
            {"role": "user", "content": "And now?"},
        ]}))
        .unwrap();
        assert_eq!(p.turns.len(), 2);
        assert_eq!(p.turns[0].query, "Be brief.\nWhat is this?");
        assert_eq!(p.turns[0].images.len(), 1);
        assert_eq!(p.turns[0].images[0].name, "messages[1].content[1].image_url.url");
        assert_eq!(p.turns[0].answer.as_deref(), Some("A dot."));
        assert_eq!(p.turns[1].query, "And now?");
        assert!(p.turns[1].answer.is_none() && p.turns[1].images.is_empty());
        assert!(!p.stream && p.stops.is_empty());
        assert_eq!(p.params.max_new_tokens, 512);
        assert_eq!((p.params.temperature, p.params.top_p), (0.7, 0.1));
    }

    #[test]
    fn consecutive_user_messages_merge_into_one_turn() {
        let p = req(json!({"messages": [
            {"role": "user", "content": "first"},
            {"role": "user", "content": [image(&png()), {"type": "text", "text": "second"}]},
            {"role": "user", "content": [image(&png())]},
        ]}))
        .unwrap();
        assert_eq!(p.turns.len(), 1);
        assert_eq!(p.turns[0].query, "first\nsecond");
        assert_eq!(p.turns[0].images.len(), 2);
    }

    #[test]
    fn sampling_fields_map_to_the_params() {
        let p = req(json!({"messages": [{"role": "user", "content": "q"}],
            "temperature": 0, "top_p": 0.9, "max_completion_tokens": 7, "max_tokens": 99, "seed": 5,
            "frequency_penalty": 0.5, "stop": ["\n\n", ""], "stream": true, "stream_options": {"include_usage": true},
            "top_k": 40, "n": 1}))
        .unwrap();
        assert_eq!(p.params.temperature, 0.0);
        assert_eq!(p.params.top_p, 0.9);
        assert_eq!(p.params.max_new_tokens, 7, "max_completion_tokens wins");
        assert_eq!(p.params.seed, Some(5));
        assert_eq!(p.params.repeat_penalty, 1.5);
        assert_eq!(p.params.top_k, 40);
        assert_eq!(p.stops, vec!["\n\n".to_string()]);
        assert!(p.stream && p.include_usage);
        let p = req(json!({"messages": [{"role": "user", "content": "q"}], "seed": -1, "stop": "END",
            "presence_penalty": -1.0, "repetition_penalty": null}))
        .unwrap();
        assert_eq!(p.params.seed, None);
        assert_eq!(p.params.repeat_penalty, 0.5);
        assert_eq!(p.stops, vec!["END".to_string()]);
        let p = req(json!({"messages": [{"role": "user", "content": "q"}], "repetition_penalty": 1.3,
            "frequency_penalty": 2}))
        .unwrap();
        assert_eq!(p.params.repeat_penalty, 1.3);
        assert_eq!(default_max_tokens(512), 128);
    }

    #[test]
    fn bad_requests_are_400_naming_the_field() {
        let cases = [
            (json!({"messages": []}), "messages"),
            (json!({"messages": [{"role": "user", "content": "q"}], "n": 2}), "n"),
            (json!({"messages": [{"role": "user", "content": "q"}], "max_tokens": 0}), "max_tokens"),
            (json!({"messages": [{"role": "user", "content": "q"}], "top_p": 0}), "top_p"),
            (json!({"messages": [{"role": "user", "content": "q"}], "temperature": -1}), "temperature"),
            (json!({"messages": [{"role": "user", "content": "q"}], "frequency_penalty": 3}), "frequency_penalty"),
            (json!({"messages": [{"role": "user", "content": "q"}], "stop": 5}), "stop"),
            (json!({"messages": [{"role": "user", "content": "q"}], "top_k": -5}), "top_k"),
            (
                json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"}]}),
                "messages[0].role",
            ),
            (json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].role"),
            (json!({"messages": [{"role": "wizard", "content": "x"}]}), "messages[0].role"),
            (json!({"messages": [{"role": "user", "content": 5}]}), "messages[0].content"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "messages[0].content[0].type",
            ),
            (json!({"messages": [{"role": "user", "content": [{"text": "x"}]}]}), "messages[0].content[0].type"),
            (json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}), "messages[0].content[0].text"),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0].image_url",
            ),
            (
                json!({"messages": [{"role": "system", "content": [image(&png())]}, {"role": "user", "content": "q"}]}),
                "messages[0].content[0].image_url.url",
            ),
        ];
        for (body, param) in cases {
            let e = req(body.clone()).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let e = prepare(b"{not json", 2048, &mut |_| Ok(())).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = prepare(br#"{"messages": "hi"}"#, 2048, &mut |_| Ok(())).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn image_urls_data_only_base64_checked_and_capped() {
        let p = "messages[0].content[0].image_url.url";
        let e = image_from_url("https://example.com/cat.png", p).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, Some("remote_image_url")));
        assert!(e.message.contains("data: URL"), "{}", e.message);
        assert_eq!(image_from_url("HTTP://example.com/cat.png", p).unwrap_err().code, Some("remote_image_url"));
        assert_eq!(image_from_url("file:///etc/passwd", p).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(image_from_url("data:image/png,rawdata", p).unwrap_err().status, StatusCode::BAD_REQUEST);
        assert_eq!(image_from_url("data:text/plain;base64,aGk=", p).unwrap_err().status, StatusCode::BAD_REQUEST);
        let e = image_from_url("data:image/png;base64,@@@not base64@@@", p).unwrap_err();
        assert!(e.status == StatusCode::BAD_REQUEST && e.message.contains("base64"), "{}", e.message);
        // Unpadded, wrapped and media-type-less forms are accepted.
        let unpadded = PNG_1X1.trim_end_matches('=');
        let wrapped = format!("{}\n{}", &PNG_1X1[..20], &PNG_1X1[20..]);
        for url in [png(), format!("data:image/png;base64,{unpadded}"), format!("data:;base64,{wrapped}")] {
            let img = image_from_url(&url, p).unwrap();
            decode_check(&img).unwrap();
        }
        let big = "A".repeat((MAX_IMAGE_BYTES / 3 + 8) * 4);
        let e = image_from_url(&format!("data:image/png;base64,{big}"), p).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        // Bytes that are no image: 400 naming the part.
        let e = req(json!({"messages": [{"role": "user", "content": [image("data:image/png;base64,aGVsbG8=")]}]}))
            .unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some(p)));
    }
}
