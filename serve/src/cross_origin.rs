//! Refusing cross-site requests that change something (CSRF).
//!
//! A page on another origin can make a browser send a "simple" request to
//! our port (a `text/plain` or form POST needs no CORS preflight), and we
//! parse such bodies as JSON for curl's sake. So, as Go's
//! `http.CrossOriginProtection` does: a request whose `Sec-Fetch-Site` says it
//! comes from another site, or (from an older browser) whose `Origin` is not
//! the host it was sent to, is refused, unless it only reads. Requests with
//! neither header are not from a browser (curl, the workers, the client) and
//! pass, as do the dashboard's own same-origin requests.

use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

pub async fn refuse_cross_site(request: Request, next: Next) -> Response {
    if is_cross_site_write(&request) {
        // Counted (no labels, so an attacker can't grow it), so an operator
        // can see that pages elsewhere are trying.
        metrics::counter!("http_cross_site_refused_total").increment(1);
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-origin request refused: a page on another site cannot change this server",
        )
        .into_response();
    }
    next.run(request).await
}

fn is_cross_site_write(request: &Request) -> bool {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return false;
    }
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, authority)| authority);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_host, host) {
        (Some(origin_host), Some(host)) => !origin_host.eq_ignore_ascii_case(host),
        // `Origin: null` (a sandboxed page, a file) or no Host: refuse.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri("/tasks");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(axum::body::Body::empty())
            .expect("a valid request")
    }

    #[test]
    fn curl_and_same_origin_pages_pass_other_sites_do_not() {
        let post = Method::POST;
        assert!(!is_cross_site_write(&request(post.clone(), &[])));
        assert!(!is_cross_site_write(&request(
            post.clone(),
            &[("sec-fetch-site", "same-origin")]
        )));
        assert!(!is_cross_site_write(&request(
            post.clone(),
            &[("sec-fetch-site", "none")]
        )));
        assert!(is_cross_site_write(&request(
            post.clone(),
            &[("sec-fetch-site", "cross-site")]
        )));
        assert!(is_cross_site_write(&request(
            post.clone(),
            &[("sec-fetch-site", "same-site")]
        )));
        assert!(!is_cross_site_write(&request(
            post.clone(),
            &[
                ("origin", "http://127.0.0.1:3000"),
                ("host", "127.0.0.1:3000")
            ]
        )));
        assert!(is_cross_site_write(&request(
            post.clone(),
            &[
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:3000")
            ]
        )));
        assert!(is_cross_site_write(&request(
            post,
            &[("origin", "null"), ("host", "x")]
        )));
        assert!(!is_cross_site_write(&request(
            Method::GET,
            &[("sec-fetch-site", "cross-site")]
        )));
    }
}
