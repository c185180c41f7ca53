//! The shared bearer token: presenting it (clients), checking it (servers),
//! and where a server takes it from (`AUTH`, `TOKEN`, `TOKEN_FILE`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
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

/// Who may use a group of routes: anyone ([`Guard::open`]), or a request
/// presenting one of a set of tokens (e.g. the admin token or the client
/// token). Tokens that are not set are left out, so they never open a guard.
#[derive(Clone, Default, Debug)]
pub struct Guard(Arc<[Token]>);

impl Guard {
    pub fn open() -> Self {
        Self::default()
    }

    /// Admits a request presenting any of `tokens` that is set; open when
    /// none is.
    pub fn tokens(tokens: impl IntoIterator<Item = Token>) -> Self {
        Self(tokens.into_iter().filter(Token::is_set).collect())
    }

    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    pub fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        self.is_open() || self.0.iter().any(|token| token.admits(authorization))
    }
}

/// Middleware: 401 unless the [`Guard`] admits the request.
pub async fn require(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if guard.admits(request.headers().get(header::AUTHORIZATION)) {
        next.run(request).await
    } else {
        ApiError::unauthorized().into_response()
    }
}

/// `AUTH`: authentication is on unless an operator turns it off.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// A token is required (the default).
    #[default]
    On,
    /// No authentication at all: anyone who reaches the port may register
    /// workers, upload modules and dispatch tasks. For a trusted lab, or the
    /// exercise's workers that cannot present a token.
    Off,
}

/// The authentication settings both binaries share.
#[derive(clap::Args, Clone, Default)]
pub struct AuthArgs {
    /// `off`: no authentication at all, for a trusted lab or the exercise's
    /// workers (logged as a warning at start).
    #[arg(long, env = "AUTH", value_enum, default_value_t = AuthMode::On)]
    pub auth: AuthMode,
    /// The shared bearer token of the planner and its workers.
    #[arg(
        long,
        env = "TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the token, e.g. a mounted Kubernetes Secret or the
    /// planner's generated `DATA_DIR/token`.
    #[arg(long, env = "TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl AuthArgs {
    /// The token given by `TOKEN` or `TOKEN_FILE`, if any; an error when
    /// `AUTH=off` contradicts a given token, or the file can't be read or is
    /// empty.
    pub fn configured(&self) -> anyhow::Result<Option<Token>> {
        let token = match (&self.token, &self.token_file) {
            (Some(value), _) if !value.is_empty() => Some(Token::new(Some(value.clone()))),
            (_, Some(path)) => Some(read_token_file(path)?),
            _ => None,
        };
        if self.auth == AuthMode::Off && token.is_some() {
            anyhow::bail!(
                "AUTH=off and a token (TOKEN or TOKEN_FILE) are both set: unset one of them"
            );
        }
        Ok(token)
    }
}

impl std::fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthArgs")
            .field("auth", &self.auth)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// The token in a file: its contents without surrounding whitespace (a
/// Secret written with `echo` ends with a newline). Empty is an error, never
/// "no authentication".
pub fn read_token_file(path: &Path) -> anyhow::Result<Token> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        anyhow::bail!("the token file {} is empty", path.display());
    }
    Ok(Token::new(Some(value.to_string())))
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
    fn a_guard_admits_any_of_its_set_tokens_and_unset_ones_never_open_it() {
        let admin = Token::new(Some("admin".into()));
        let client = Token::new(Some("client".into()));
        let guard = Guard::tokens([admin.clone(), client]);
        assert!(guard.admits(Some(&HeaderValue::from_static("Bearer admin"))));
        assert!(guard.admits(Some(&HeaderValue::from_static("Bearer client"))));
        assert!(!guard.admits(Some(&HeaderValue::from_static("Bearer other"))));
        assert!(!guard.admits(None));
        let admin_only = Guard::tokens([admin, Token::new(None)]);
        assert!(!admin_only.is_open());
        assert!(!admin_only.admits(None));
        assert!(Guard::tokens([Token::new(None)]).admits(None));
        assert!(Guard::open().admits(None));
    }

    #[test]
    fn a_token_file_is_trimmed_and_an_empty_one_is_an_error() {
        let dir = std::env::temp_dir().join(format!("serve-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").expect("write");
        let token = read_token_file(&file).expect("read");
        assert!(token.admits(Some(&HeaderValue::from_static("Bearer s3cret"))));
        std::fs::write(&file, " \n").expect("write");
        assert!(read_token_file(&file).is_err());
        let off = AuthArgs {
            auth: AuthMode::Off,
            token: None,
            token_file: Some(file.clone()),
        };
        std::fs::write(&file, "s3cret").expect("write");
        assert!(off.configured().is_err(), "AUTH=off with a token");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn no_token_admits_everyone() {
        assert!(Token::new(None).admits(None));
        assert!(Token::new(Some(String::new())).admits(None));
    }
}
