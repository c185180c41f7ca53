//! Seeing the system work: Prometheus metrics and the event stream.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{System, fixture_dir};
use serde_json::{Value, json};

/// Parses Prometheus text exposition into `name{labels} -> value`, failing
/// on any line that is not a comment, a blank or a valid sample.
fn parse_prometheus(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        anyhow::ensure!(is_sample_line(line), "not a Prometheus sample line: {line}");
    }
    anyhow::ensure!(!scrape.samples.is_empty(), "no samples");
    let mut values = BTreeMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        values.insert(format!("{}{{{}}}", sample.metric, labels.join(",")), value);
    }
    Ok(values)
}

/// `name{label="value",...} number`, as the text exposition format defines it.
fn is_sample_line(line: &str) -> bool {
    let (series, value) = match line.rsplit_once(' ') {
        Some(parts) => parts,
        None => return false,
    };
    let name_end = series.find('{').unwrap_or(series.len());
    let name = &series[..name_end];
    let name_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    let labels = &series[name_end..];
    let labels_ok = labels.is_empty()
        || (labels.starts_with('{')
            && labels.ends_with('}')
            && labels[1..labels.len() - 1]
                .split(',')
                .filter(|p| !p.is_empty())
                .all(|pair| {
                    pair.split_once('=').is_some_and(|(k, v)| {
                        !k.is_empty() && v.len() >= 2 && v.starts_with('"') && v.ends_with('"')
                    })
                }));
    let value_ok = value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value);
    name_ok && labels_ok && value_ok
}

async fn scrape(url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let response = reqwest::get(format!("{url}/metrics")).await?;
    anyhow::ensure!(
        response.status() == 200,
        "GET /metrics: {}",
        response.status()
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    anyhow::ensure!(
        content_type.starts_with("text/plain"),
        "content type {content_type}"
    );
    parse_prometheus(&response.text().await?)
}

fn get(metrics: &BTreeMap<String, f64>, key: &str) -> f64 {
    metrics.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_when_tasks_run() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let worker = system
        .add_worker(
            "w",
            &[
                ("OPS", "add,mul,crash"),
                ("OPS_DIR", fixture_dir().to_str().unwrap_or_default()),
                ("SLOTS", "2"),
            ],
        )
        .await?
        .url();
    system.wait_for_workers(1).await?;
    let planner_before = scrape(&system.planner.url()).await?;
    let worker_before = scrape(&worker).await?;

    let tasks: Vec<Value> = (0..6)
        .map(|i| json!({"op": if i % 2 == 0 { "add" } else { "mul" }, "args": [i, 2]}))
        .collect();
    let ids = system.submit_ids(&json!(tasks)).await?;
    system.wait_final(&ids, Duration::from_secs(20)).await?;
    let (status, _) = system
        .post_json("/tasks?wait=true", &json!({"op": "crash", "args": [1, 2]}))
        .await?;
    assert_eq!(status, 422);

    let planner = scrape(&system.planner.url()).await?;
    let moved = |key: &str| get(&planner, key) - get(&planner_before, key);
    assert_eq!(
        moved("planner_tasks_submitted_total{op=add}"),
        3.0,
        "{planner:#?}"
    );
    assert_eq!(
        moved("planner_tasks_finished_total{op=mul,status=done}"),
        3.0
    );
    assert_eq!(
        moved("planner_tasks_finished_total{op=crash,status=failed}"),
        1.0
    );
    assert!(
        moved("planner_dispatch_gap_seconds{}") >= 7.0,
        "one gap per dispatch"
    );
    assert!(moved("planner_task_latency_seconds{op=add}") >= 3.0);
    assert_eq!(
        get(&planner, "planner_workers{flavor=add+crash+mul}"),
        1.0,
        "{planner:#?}"
    );
    assert_eq!(get(&planner, "planner_queue_depth{op=add}"), 0.0);
    assert_eq!(get(&planner, "planner_slots{}"), 2.0);

    let worker_after = scrape(&worker).await?;
    let moved = |key: &str| get(&worker_after, key) - get(&worker_before, key);
    assert_eq!(
        moved("worker_tasks_total{op=add,outcome=ok}"),
        3.0,
        "{worker_after:#?}"
    );
    assert_eq!(moved("worker_tasks_total{op=crash,outcome=trap}"), 1.0);
    assert_eq!(moved("worker_wasm_traps_total{kind=trap}"), 1.0);
    assert!(moved("worker_wasm_call_seconds{op=mul}") >= 3.0);
    assert_eq!(get(&worker_after, "worker_slots{}"), 2.0);
    assert_eq!(
        get(
            &worker_after,
            "worker_module_loads_total{op=add,result=ok,source=file}"
        ),
        1.0,
        "add came from OPS_DIR"
    );
    Ok(())
}

#[tokio::test]
async fn the_event_stream_delivers_a_tasks_transitions_in_order() -> anyhow::Result<()> {
    let mut system = System::start(&[]).await?;
    let mut response = reqwest::Client::new()
        .get(system.url("/events"))
        .send()
        .await?;
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    system.add_worker("w", &[("WORK_MS", "50")]).await?;
    let ids = system
        .submit_ids(&json!({"op": "mul", "args": [6, 7]}))
        .await?;

    let mut buffer = String::new();
    let mut statuses = Vec::new();
    let mut worker_changes = Vec::new();
    let collected = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = response.chunk().await? {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let event = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or("");
                let data: Value = match block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    Some(data) => serde_json::from_str(data)?,
                    None => continue,
                };
                match event {
                    "task" if data["id"] == ids[0] => statuses.push((
                        data["status"].as_str().unwrap_or("").to_string(),
                        data["result"].clone(),
                    )),
                    "worker" => worker_changes.push((data["id"].clone(), data["change"].clone())),
                    _ => {}
                }
                if statuses.last().is_some_and(|(s, _)| s == "done") {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        }
        Ok(())
    })
    .await;
    assert!(
        collected.is_ok(),
        "no `done` event within 20 s; got {statuses:?}"
    );
    let order: Vec<&str> = statuses.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(order, vec!["queued", "running", "done"]);
    assert_eq!(statuses[2].1, json!(42));
    assert_eq!(
        worker_changes.first(),
        Some(&(json!("w"), json!("registered")))
    );
    Ok(())
}
