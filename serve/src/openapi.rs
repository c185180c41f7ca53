//! What every route of both servers can answer besides its own statuses:
//! the refusals of [`crate::http::run`] and [`crate::cross_origin`], added to
//! each operation of an OpenAPI description so that it matches the server.

use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// The schema name of `wire::ErrorBody` in the descriptions.
const ERROR_SCHEMA: &str = "ErrorBody";

/// A `utoipa::Modify` adding to every operation the answers the HTTP layer
/// gives before a handler runs (those it already documents are kept):
/// 414 and 431 (request target or headers too large), 503 (over
/// `MAX_CONNECTIONS`), and for routes that take a body or change something,
/// 408 (`BODY_TIMEOUT_MS`) and 403 (a cross-site request from a browser).
pub struct ServerAnswers;

impl utoipa::Modify for ServerAnswers {
    fn modify(&self, api: &mut OpenApi) {
        for item in api.paths.paths.values_mut() {
            let operations = [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Head, item.head.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Put, item.put.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
                (HttpMethod::Patch, item.patch.as_mut()),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    add_answers(method, operation);
                }
            }
        }
    }
}

fn add_answers(method: HttpMethod, operation: &mut Operation) {
    let writes = matches!(
        method,
        HttpMethod::Post | HttpMethod::Put | HttpMethod::Delete | HttpMethod::Patch
    );
    let mut answers = vec![
        ("414", "The request target is over 60 KiB"),
        ("431", "Over 100 request headers, or over 32 KiB of them"),
        (
            "503",
            "Over MAX_CONNECTIONS open connections (retry after Retry-After), or the server is not ready or stopping",
        ),
    ];
    if writes {
        answers.push((
            "403",
            "A cross-site request from a browser (Sec-Fetch-Site or Origin from another site)",
        ));
        answers.push(("408", "The body did not arrive within BODY_TIMEOUT_MS"));
    }
    for (status, description) in answers {
        operation
            .responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::T(error_response(description)));
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ERROR_SCHEMA)))
                .build(),
        )
        .build()
}
