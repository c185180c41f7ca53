//! The live dashboard: one self-contained page (inline CSS and JS, no
//! external assets) that reads `GET /workers`, `/stats`, `/tasks` and follows
//! `GET /events`.
//!
//! `GET /ui` always serves it; `GET /` serves it only to clients whose
//! `Accept` header prefers HTML (browsers) and keeps the exercise's JSON list
//! of workers for everyone else (curl sends `*/*`).

use axum::extract::State;
use axum::http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderMap, VARY,
};
use axum::response::{IntoResponse, Response};

use super::AppState;

const PAGE: &str = include_str!("../ui/dashboard.html");

/// Everything the page uses comes from the planner itself; inline script and
/// style are the page's own.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; \
                   frame-ancestors 'none'";

/// `GET /ui`.
#[utoipa::path(get, path = "/ui", tag = "observe", responses((status = 200, description = "The live dashboard", content_type = "text/html", body = String)))]
pub async fn page() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, CSP),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /`: the dashboard for browsers, the workers as JSON otherwise.
#[utoipa::path(get, path = "/", tag = "workers", responses((status = 200, description = "The workers (as the exercise's planner lists them); the dashboard page for a browser (Accept: text/html)", body = Vec<wire::planner::WorkerView>)))]
pub async fn index(state: State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let mut response = if prefers_html(&accept) {
        page().await
    } else {
        super::legacy::index(state).await.into_response()
    };
    response
        .headers_mut()
        .insert(VARY, axum::http::HeaderValue::from_static("accept"));
    response
}

/// Whether an `Accept` header ranks `text/html` above `application/json`.
/// A tie goes to the type named more specifically (`text/html, */*` is a
/// browser-like ask), and a complete tie to JSON, the route's original
/// answer: no header, `*/*` and `application/json` all get JSON.
pub fn prefers_html(accept: &str) -> bool {
    let html = rank(accept, "text", "html");
    let json = rank(accept, "application", "json");
    match (html, json) {
        (Some((html_q, html_spec)), Some((json_q, json_spec))) => {
            html_q > json_q || (html_q == json_q && html_spec > json_spec)
        }
        (Some(_), None) => true,
        _ => false,
    }
}

/// The quality (in thousandths) the header gives `kind/sub`, and how
/// specific the range that matched was (2 exact, 1 `kind/*`, 0 `*/*`);
/// `None` when no range accepts it (absent, or `q=0`).
fn rank(accept: &str, kind: &str, sub: &str) -> Option<(u32, u8)> {
    let mut best: Option<(u32, u8)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let Some((range_kind, range_sub)) = parts.next().and_then(|m| m.trim().split_once('/'))
        else {
            continue;
        };
        let (range_kind, range_sub) = (range_kind.trim(), range_sub.trim());
        let specificity = if range_kind.eq_ignore_ascii_case(kind) {
            if range_sub.eq_ignore_ascii_case(sub) {
                2
            } else if range_sub == "*" {
                1
            } else {
                continue;
            }
        } else if range_kind == "*" && range_sub == "*" {
            0
        } else {
            continue;
        };
        let q = parts
            .filter_map(|p| p.trim().split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
            .map_or(1000, |(_, value)| quality(value.trim()));
        // The most specific matching range decides (RFC 9110 §12.5.1).
        if best.is_none_or(|(_, spec)| specificity > spec) {
            best = Some((q, specificity));
        }
    }
    best.filter(|(q, _)| *q > 0)
}

/// `q` as thousandths; anything unparsable counts as 1.
fn quality(value: &str) -> u32 {
    value
        .parse::<f64>()
        .ok()
        .filter(|q| q.is_finite())
        .map_or(1000, |q| (q.clamp(0.0, 1.0) * 1000.0).round() as u32)
}

#[cfg(test)]
mod tests {
    use super::prefers_html;

    #[test]
    fn browsers_get_the_page_and_everyone_else_json() {
        // Chromium's and Firefox's navigation headers.
        assert!(prefers_html(
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,\
             image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
        ));
        assert!(prefers_html(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(prefers_html("text/html"));
        assert!(prefers_html("text/html, */*"));
        assert!(prefers_html("TEXT/HTML;q=0.9, application/json;q=0.5"));
        // curl, reqwest (no header), API clients.
        assert!(!prefers_html(""));
        assert!(!prefers_html("*/*"));
        assert!(!prefers_html("application/json"));
        assert!(!prefers_html("application/json, text/html"));
        assert!(!prefers_html("text/html;q=0.5, application/json"));
        assert!(!prefers_html("text/html;q=0, */*"));
        assert!(!prefers_html("text/*;q=0.5, */*"));
        assert!(!prefers_html("garbage"));
    }
}
