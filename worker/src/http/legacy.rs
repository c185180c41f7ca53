//! The exercise's worker routes: `POST /add`, `POST /mult`, `GET /`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serve::{ApiError, JsonBody};
use wire::legacy::{Answer, Operands};

use super::AppState;
use crate::executor::Refusal;

pub async fn add(
    state: State<AppState>,
    body: JsonBody<Operands>,
) -> Result<Json<Answer>, ApiError> {
    run(state, "add", body).await
}

pub async fn mult(
    state: State<AppState>,
    body: JsonBody<Operands>,
) -> Result<Json<Answer>, ApiError> {
    run(state, "mul", body).await
}

/// Busy is 403 here, as the exercise's planner expects.
async fn run(
    State(state): State<AppState>,
    op: &str,
    JsonBody(operands): JsonBody<Operands>,
) -> Result<Json<Answer>, ApiError> {
    let run = state
        .executor
        .run(None, op, vec![operands.a, operands.b])
        .await
        .map_err(|refusal| match refusal {
            Refusal::Busy(_) => ApiError::new(StatusCode::FORBIDDEN, refusal.to_string()),
            other => super::tasks::refusal_to_error(other),
        })?;
    let duration = run.elapsed.as_millis() as u64;
    match run.output {
        Ok(res) => Ok(Json(Answer {
            res,
            duration,
            id: state.id.to_string(),
        })),
        Err(err) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            err.to_string(),
        )),
    }
}

/// The task(s) in progress, or `ready to work <id>` when idle.
pub async fn status(State(state): State<AppState>) -> Response {
    let running = state.executor.running();
    if running.is_empty() {
        format!("ready to work {}", state.id).into_response()
    } else {
        Json(running).into_response()
    }
}
