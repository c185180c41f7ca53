//! Cross-site request forgery from a real browser (issue 12, attack 2): a
//! page on another origin (another port of 127.0.0.1), loaded in headless
//! Chromium, fires at the planner what the repro did: `fetch` with
//! `mode: "no-cors"` and a `text/plain` body (no CORS preflight) to register
//! a worker and submit a task, and a `PUT /ops/mul` (which a browser sends
//! cross-origin only after a preflight the planner never approves).
//!
//! Checked from the planner's side: its workers, task count and module
//! digests are unchanged, and nothing reached the attacker's server but the
//! page and its report. So that the test cannot pass by the browser not
//! sending anything, the planner counts the refused requests
//! (`http_cross_site_refused_total`), and a same-origin control, the same
//! `fetch` from the planner's own page in the same browser, is accepted.
//!
//! Once with the default configuration (authentication on, the generated
//! token), once with `AUTH=off` (a trusted lab): there the
//! `Sec-Fetch-Site`/`Origin` check alone refuses the page.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/install-tools`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use axum::extract::{Request, State};
use axum::response::Html;
use e2e::browser::Browser;
use e2e::{System, poll};
use serde_json::{Value, json};
use wire::planner::WorkerView;

/// What the attacker's server saw: `METHOD path` of every request not made
/// by the browser (a planner dispatching to it or pushing a module), and the
/// page's report of what it sent.
#[derive(Default)]
struct Seen {
    not_from_the_browser: Vec<String>,
    report: Option<Value>,
}

/// Chromium's requests (the page, its favicon, the report) say who sent them.
fn from_the_browser(request: &Request) -> bool {
    request
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|ua| ua.to_str().ok())
        .is_some_and(|ua| ua.contains("Chrome"))
}

type Shared = Arc<Mutex<Seen>>;

/// The attacker's page. Its script reports, to its own origin, which
/// requests the browser accepted to send (`no-cors` responses are opaque,
/// so it cannot see their status; the planner's side is what the test
/// checks).
fn attacker_page(planner: &str, attacker: &str) -> String {
    let registration = json!({
        "id": "attacker-1",
        "url": attacker,
        "slots": 8,
        "ops": [{"name": "mul", "arity": 2, "doc": "mine now", "digest": "0".repeat(64)}],
    });
    let task = json!({"op": "mul", "args": [6, 7]});
    format!(
        r#"<!doctype html>
<title>a page on another origin</title>
<script>
const planner = {planner};
const attempts = [
  ["POST", "/workers", "no-cors", {registration}],
  ["POST", "/tasks", "no-cors", {task}],
  // A browser allows only GET, HEAD and POST without CORS; a PUT needs a
  // preflight that the planner never answers with CORS headers.
  ["PUT", "/ops/mul", "no-cors", "\u0000asm"],
  ["PUT", "/ops/mul", "cors", "\u0000asm"],
];
(async () => {{
  const report = [];
  for (const [method, path, mode, body] of attempts) {{
    try {{
      const response = await fetch(planner + path, {{
        method, mode, headers: {{"Content-Type": "text/plain"}},
        body: typeof body === "string" ? body : JSON.stringify(body),
      }});
      report.push({{method, path, mode, sent: true, type: response.type}});
    }} catch (error) {{
      report.push({{method, path, mode, sent: false, error: String(error)}});
    }}
  }}
  await fetch("/report", {{method: "POST", body: JSON.stringify(report)}});
}})();
</script>
"#,
        planner = json!(planner),
    )
}

async fn record(State(seen): State<Shared>, request: Request) -> Html<String> {
    let line = format!("{} {}", request.method(), request.uri().path());
    let browser = from_the_browser(&request);
    let is_report = browser && line == "POST /report";
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if !browser {
        seen.not_from_the_browser.push(line);
    }
    if is_report {
        seen.report = serde_json::from_slice(&body).ok();
    }
    Html(String::new())
}

/// The attacker's server on its own port; returns its URL.
async fn attacker_server(
    seen: Shared,
    planner: String,
) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let page = attacker_page(&planner, &url);
    let app = axum::Router::new()
        .route("/", axum::routing::get(move || async move { Html(page) }))
        .fallback(record)
        .with_state(seen);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, server))
}

/// What the page could change: the workers (id -> url), the number of
/// tasks, and the digest of every op's module on every worker.
async fn planner_state(system: &System) -> Result<(BTreeMap<String, String>, u64, Value)> {
    let workers: Vec<WorkerView> = system.get_json("/workers").await?;
    let workers = workers.into_iter().map(|w| (w.id, w.url)).collect();
    let stats: Value = system.get_json("/stats").await?;
    let tasks = stats["by_status"]
        .as_object()
        .context("by_status")?
        .values()
        .filter_map(Value::as_u64)
        .sum();
    let ops: Value = system.get_json("/ops").await?;
    Ok((workers, tasks, ops))
}

/// `http_cross_site_refused_total` on the planner's `/metrics` (0 until the
/// first refusal).
async fn refused_count(system: &System) -> Result<f64> {
    let text = system
        .client
        .get(system.url("/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    Ok(scrape
        .samples
        .iter()
        .filter(|s| s.metric == "http_cross_site_refused_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum())
}

async fn a_page_on_another_origin_changes_nothing(planner_env: &[(&str, &str)]) -> Result<()> {
    let mut system = System::start(planner_env).await?;
    system.add_worker("mul-1", &[("OPS", "mul")]).await?;
    system.wait_for_workers(1).await?;
    let before = planner_state(&system).await?;
    let refused_before = refused_count(&system).await?;

    let seen: Shared = Arc::default();
    let (attacker, server) = attacker_server(seen.clone(), system.planner.url()).await?;
    let browser = Browser::start(system.dir.path()).await?;
    let outcome = async {
        browser.client.goto(&attacker).await?;
        let report = poll(
            Duration::from_secs(30),
            "the attacker page's report",
            || async {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .report
                    .clone()
            },
        )
        .await?;
        let attempts = report.as_array().context("report is a list")?;
        assert_eq!(attempts.len(), 4, "{report}");
        let sent: Vec<&Value> = attempts.iter().filter(|a| a["sent"] == true).collect();
        // The two no-cors POSTs go out (opaque answers); the browser itself
        // refuses a no-cors PUT, and sends no CORS PUT without an approved
        // preflight.
        assert_eq!(
            sent.iter()
                .map(|a| format!(
                    "{} {}",
                    a["method"].as_str().unwrap_or(""),
                    a["path"].as_str().unwrap_or("")
                ))
                .collect::<Vec<_>>(),
            ["POST /workers", "POST /tasks"],
            "{report}"
        );
        assert!(sent.iter().all(|a| a["type"] == "opaque"), "{report}");

        // The planner saw both POSTs and refused both as cross-site.
        let refused = poll(
            Duration::from_secs(10),
            "the planner to count 2 refused cross-site requests",
            || async {
                let now = refused_count(&system).await.ok()?;
                (now >= refused_before + 2.0).then_some(now)
            },
        )
        .await?;
        assert_eq!(
            refused - refused_before,
            2.0,
            "exactly the page's two POSTs"
        );
        // And nothing changed: no worker taken or added, no task, same modules.
        let after = planner_state(&system).await?;
        assert_eq!(after, before, "the page changed the planner");
        let intruders = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .not_from_the_browser
            .clone();
        assert!(
            intruders.is_empty(),
            "the planner reached the attacker's server (a dispatch or a module push): {intruders:?}"
        );

        // Control: the same request from the planner's own page, in the same
        // browser, is same-origin and goes through.
        browser.client.goto(&system.url("/")).await?;
        let status = browser
            .client
            .execute(
                r#"return fetch("/tasks", {method: "POST", headers: {"Content-Type": "text/plain"},
                    body: JSON.stringify({op: "mul", args: [6, 7]})}).then(r => r.status);"#,
                vec![],
            )
            .await?;
        assert_eq!(status, json!(202), "a same-origin submission is accepted");
        let (_, tasks, _) = planner_state(&system).await?;
        assert_eq!(
            tasks,
            before.1 + 1,
            "the control's task is the only new one"
        );
        ensure!(
            refused_count(&system).await? == refused,
            "the same-origin request was counted as refused"
        );
        Ok::<_, anyhow::Error>(())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(120), outcome)
        .await
        .context("the browser test did not finish within 120 s")
        .and_then(|r| r);
    browser.stop().await;
    server.abort();
    outcome.with_context(|| {
        format!(
            "planner log:\n{}",
            launcher::process::tail(&system.planner.log, 20)
        )
    })
}

#[tokio::test]
async fn a_page_on_another_origin_cannot_register_submit_or_roll_out() -> Result<()> {
    a_page_on_another_origin_changes_nothing(&[]).await
}

#[tokio::test]
async fn with_auth_off_the_origin_check_alone_refuses_the_page() -> Result<()> {
    a_page_on_another_origin_changes_nothing(&[("AUTH", "off")]).await
}
