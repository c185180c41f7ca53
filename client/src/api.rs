//! The planner's public HTTP API, as the client calls it: the same routes
//! curl uses, the shapes from the `wire` crate.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wire::TaskId;
use wire::planner::{
    Accepted, CancelReport, CancelRequest, NewTask, OpRollout, RolloutReport, Stats, TaskStatus,
    TaskView, WorkerEvent, WorkerView,
};

/// Most ids the planner takes in one `GET /tasks?ids=`.
pub const MAX_IDS_PER_GET: usize = 1_000;
/// Plain requests answer in milliseconds; this only bounds a hung planner.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the planner at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the planner answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("unexpected answer from the planner: {0}")]
    Unexpected(String),
}

pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// Filters and cursor of `GET /tasks`.
#[derive(Debug, Default, Serialize)]
pub struct ListQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<TaskId>,
    pub limit: usize,
}

/// One message of `GET /events`.
#[derive(Debug, Clone)]
pub enum Event {
    Task(TaskView),
    Worker(WorkerEvent),
    /// The planner skipped this many events for us: we were too slow.
    Lagged(u64),
}

pub type Events = Pin<Box<dyn Stream<Item = Result<Event, ApiError>> + Send>>;

impl Api {
    pub fn new(base: String, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Self { http, base, token })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(&self, request: RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let response = request.send().await.map_err(|err| self.transport(err))?;
        if response.status().is_client_error() || response.status().is_server_error() {
            return Err(refused(response).await);
        }
        Ok(response)
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ApiError> {
        let response = self.send(request.timeout(REQUEST_TIMEOUT)).await?;
        response
            .json()
            .await
            .map_err(|err| ApiError::Unexpected(root_cause(&err)))
    }

    fn transport(&self, err: reqwest::Error) -> ApiError {
        let reason = if err.is_timeout() {
            "no answer in time".to_string()
        } else {
            root_cause(&err)
        };
        ApiError::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }

    /// `POST /tasks`, with an `Idempotency-Key` if given: a repeat of the
    /// same submission answers the first one's ids. The answer has the
    /// ids and the batch's id.
    pub async fn submit_keyed(
        &self,
        tasks: &[NewTask],
        key: Option<&str>,
    ) -> Result<Accepted, ApiError> {
        let mut request = self.request(Method::POST, "/tasks").json(tasks);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        self.json(request).await
    }

    /// `POST /tasks?wait=true` for one task: the finished task (also when it
    /// failed: the planner answers 422 with it), or its current state if the
    /// planner's wait ran out first.
    pub async fn submit_and_wait(
        &self,
        task: &NewTask,
        wait: Duration,
        key: Option<&str>,
    ) -> Result<TaskView, ApiError> {
        let path = format!("/tasks?wait=true&timeout_ms={}", wait.as_millis());
        let mut request = self.request(Method::POST, &path).json(task);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request
            .timeout(wait + REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|err| self.transport(err))?;
        if response.status() != StatusCode::UNPROCESSABLE_ENTITY
            && (response.status().is_client_error() || response.status().is_server_error())
        {
            return Err(refused(response).await);
        }
        response
            .json()
            .await
            .map_err(|err| ApiError::Unexpected(root_cause(&err)))
    }

    /// `GET /tasks?ids=`, in chunks the planner accepts. Unknown ids are
    /// simply absent from the answer.
    pub async fn tasks(&self, ids: &[TaskId]) -> Result<Vec<TaskView>, ApiError> {
        let mut views = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_IDS_PER_GET) {
            let list = chunk
                .iter()
                .map(TaskId::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let page: Vec<TaskView> = self
                .json(self.request(Method::GET, "/tasks").query(&[("ids", list)]))
                .await?;
            views.extend(page);
        }
        Ok(views)
    }

    pub async fn list(&self, query: &ListQuery) -> Result<Vec<TaskView>, ApiError> {
        self.json(self.request(Method::GET, "/tasks").query(query))
            .await
    }

    pub async fn cancel(&self, request: &CancelRequest) -> Result<CancelReport, ApiError> {
        self.json(self.request(Method::POST, "/tasks/cancel").json(request))
            .await
    }

    /// `GET /batches/{id}`: a batch's tasks counted by status.
    pub async fn batch(&self, id: TaskId) -> Result<wire::planner::BatchView, ApiError> {
        self.json(self.request(Method::GET, &format!("/batches/{id}")))
            .await
    }

    /// Every worker, page by page (the planner answers at most 10,000 at a time).
    pub async fn workers(&self) -> Result<Vec<WorkerView>, ApiError> {
        const PAGE: usize = 10_000;
        let mut workers: Vec<WorkerView> = Vec::new();
        loop {
            let mut request = self
                .request(Method::GET, "/workers")
                .query(&[("limit", PAGE.to_string())]);
            if let Some(last) = workers.last() {
                request = request.query(&[("after", &last.id)]);
            }
            let page: Vec<WorkerView> = self.json(request).await?;
            let full = page.len() == PAGE;
            workers.extend(page);
            if !full {
                return Ok(workers);
            }
        }
    }

    pub async fn ops(&self) -> Result<Vec<OpRollout>, ApiError> {
        self.json(self.request(Method::GET, "/ops")).await
    }

    pub async fn stats(&self) -> Result<Stats, ApiError> {
        self.json(self.request(Method::GET, "/stats")).await
    }

    /// `PUT /ops/{name}`: answers once every worker offering the op took it
    /// (or failed to), so it may take a while on a large fleet.
    pub async fn put_op(&self, name: &str, module: Vec<u8>) -> Result<RolloutReport, ApiError> {
        let request = self
            .request(Method::PUT, &format!("/ops/{name}"))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(module)
            .timeout(Duration::from_secs(600));
        let response = self.send(request).await?;
        response
            .json()
            .await
            .map_err(|err| ApiError::Unexpected(root_cause(&err)))
    }

    /// Subscribes to `GET /events`. Returns once the planner accepted the
    /// subscription, so nothing that happens after this call is missed.
    pub async fn events(&self) -> Result<Events, ApiError> {
        use eventsource_stream::Eventsource;
        let response = self
            .send(
                self.request(Method::GET, "/events")
                    .header(reqwest::header::ACCEPT, "text/event-stream"),
            )
            .await?;
        let base = self.base.clone();
        // reqwest's `chunk()` as a stream, without its optional `stream` feature.
        let bytes = futures_util::stream::unfold(Some(response), |response| async move {
            let mut response = response?;
            match response.chunk().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(response))),
                Ok(None) => None,
                Err(err) => Some((Err(err), None)),
            }
        });
        let events = bytes.eventsource().filter_map(move |item| {
            let base = base.clone();
            async move {
                match item {
                    Ok(message) => parse_event(&message.event, &message.data).transpose(),
                    Err(err) => Some(Err(ApiError::Unreachable {
                        url: base,
                        reason: format!("event stream broke: {err}"),
                    })),
                }
            }
        });
        Ok(Box::pin(events))
    }
}

fn parse_event(kind: &str, data: &str) -> Result<Option<Event>, ApiError> {
    let bad = |err: serde_json::Error| ApiError::Unexpected(format!("`{kind}` event: {err}"));
    Ok(match kind {
        "task" => Some(Event::Task(serde_json::from_str(data).map_err(bad)?)),
        "worker" => Some(Event::Worker(serde_json::from_str(data).map_err(bad)?)),
        "lagged" => Some(Event::Lagged(data.trim().parse().unwrap_or(0))),
        // Keep-alives and kinds newer than this client.
        _ => None,
    })
}

/// The planner's `{"error": ...}`, or what else it sent.
async fn refused(response: reqwest::Response) -> ApiError {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<wire::ErrorBody>(&text)
        .map(|body| body.error)
        .unwrap_or_else(|_| {
            let text = text.trim();
            if text.is_empty() {
                "(no details)".to_string()
            } else {
                text.chars().take(200).collect()
            }
        });
    ApiError::Refused { status, message }
}

/// The innermost cause ("Connection refused (os error 111)"): reqwest's own
/// top-level message repeats the URL and says little.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_by_kind_and_unknown_kinds_skipped() {
        let task = r#"{"id":7,"op":"mul","args":[6,7],"status":"done","result":42,"attempts":1,"submitted_at_ms":1}"#;
        assert!(matches!(
            parse_event("task", task),
            Ok(Some(Event::Task(TaskView {
                id: 7,
                result: Some(42),
                ..
            })))
        ));
        assert!(matches!(
            parse_event("lagged", "12"),
            Ok(Some(Event::Lagged(12)))
        ));
        assert!(matches!(parse_event("something-new", "{}"), Ok(None)));
        assert!(parse_event("task", "{").is_err());
    }
}
