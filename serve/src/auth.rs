//! The shared bearer token: presenting it (clients) and checking it (servers).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
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

    /// The headers that present this token: `Authorization: Bearer <token>`,
    /// marked sensitive so no HTTP log shows it; empty when no token is set.
    /// Every client request of the project adds these (`.headers(...)`).
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(token) = &self.0
            && let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        headers
    }

    /// Whether a request's `Authorization` header carries this token. The
    /// scheme is matched case-insensitively, as RFC 9110 (11.1) says.
    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(expected) = &self.0 else { return true };
        let presented = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credentials)
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

/// The credentials of a `Bearer` `Authorization` value: the scheme in any
/// case, then one or more spaces.
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim_start_matches(' '))
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

/// Declares the `bearer` security scheme in an OpenAPI description; both
/// binaries' descriptions use it for their token-guarded routes.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
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
    fn the_scheme_is_case_insensitive_and_the_credentials_are_not() {
        let token = Token::new(Some("s3cret".into()));
        for value in ["bearer s3cret", "BEARER s3cret", "BeArEr  s3cret"] {
            assert!(
                token.admits(Some(&HeaderValue::from_static(value))),
                "{value}"
            );
        }
        for value in ["Bearer S3CRET", "Basic s3cret", "Bearers3cret", "Bearer"] {
            assert!(
                !token.admits(Some(&HeaderValue::from_static(value))),
                "{value}"
            );
        }
    }

    #[test]
    fn the_presented_header_is_the_one_admitted_and_is_sensitive() {
        let token = Token::new(Some("s3cret".into()));
        let headers = token.headers();
        let value = headers.get(header::AUTHORIZATION).expect("set");
        assert!(value.is_sensitive());
        assert!(token.admits(Some(value)));
        assert!(Token::new(None).headers().is_empty());
    }

    #[test]
    fn no_token_admits_everyone() {
        assert!(Token::new(None).admits(None));
        assert!(Token::new(Some(String::new())).admits(None));
    }
}
