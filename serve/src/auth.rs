//! Shared bearer-token check.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// The shared secret, if any. Its `Debug` never shows the value, so it can't
/// leak through a logged config.
#[derive(Clone, Default)]
pub struct Token(Option<std::sync::Arc<str>>);

impl Token {
    pub fn new(value: Option<String>) -> Self {
        Self(value.filter(|v| !v.is_empty()).map(Into::into))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// The `Authorization` header value to send, if a token is set.
    pub fn header_value(&self) -> Option<String> {
        self.0.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// Whether a request's `Authorization` header carries this token.
    pub fn admits(&self, authorization: Option<&axum::http::HeaderValue>) -> bool {
        let Some(expected) = &self.0 else { return true };
        let presented = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(presented.as_bytes(), expected.as_bytes())
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() {
            "Token(<set>)"
        } else {
            "Token(<none>)"
        })
    }
}

/// Compares without an early exit, so timing does not reveal how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: 401 unless the request carries the token (when one is set).
pub async fn require_token(State(token): State<Token>, request: Request, next: Next) -> Response {
    if token.admits(request.headers().get(header::AUTHORIZATION)) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_token_admits_only_its_own_bearer_header() {
        let token = Token::new(Some("s3cret".into()));
        assert!(token.admits(Some(&HeaderValue::from_static("Bearer s3cret"))));
        assert!(!token.admits(Some(&HeaderValue::from_static("Bearer s3cre"))));
        assert!(!token.admits(Some(&HeaderValue::from_static("s3cret"))));
        assert!(!token.admits(None));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn no_token_admits_everyone() {
        assert!(Token::new(None).admits(None));
        assert!(Token::new(Some(String::new())).admits(None));
    }
}
