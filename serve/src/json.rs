//! A JSON body extractor whose every rejection is a 4xx `{"error": ...}`.
//!
//! Unlike `axum::Json` it accepts a missing content type and curl's default
//! `application/x-www-form-urlencoded`, so `curl -d '{...}' URL` works as
//! users type it; any other explicit type gets 415.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::ApiError;

pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        check_content_type(req.headers().get(header::CONTENT_TYPE))?;
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses a JSON document, with errors that say where and what.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty body: expected a JSON document",
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|err| ApiError::bad_request(format!("invalid JSON body: {err}")))
}

fn check_content_type(value: Option<&axum::http::HeaderValue>) -> Result<(), ApiError> {
    let Some(value) = value else { return Ok(()) };
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let accepted = mime == "application/json"
        || mime.ends_with("+json")
        || mime == "application/x-www-form-urlencoded"
        || mime == "text/plain";
    if accepted {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type `{mime}`: send application/json"),
        ))
    }
}

/// The raw body (e.g. a module upload), with a JSON error when it can't be
/// read (too large, broken connection).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|rejection| {
                // A body past its deadline: the client was too slow, 408.
                let status = if crate::http::is_body_timeout(&rejection) {
                    StatusCode::REQUEST_TIMEOUT
                } else {
                    rejection.status()
                };
                ApiError::new(
                    status,
                    format!("cannot read body: {}", rejection.body_text()),
                )
            })
    }
}
