//! The persistent dispatch channel between the planner and its workers
//! (issue 14): a channel cut mid-task, a per-task-HTTP worker beside a
//! channel worker, and frames the planner refuses. The dispatch, fault,
//! hot-swap and hostile suites run over the channel by default and over
//! per-task HTTP with `E2E_TRANSPORT=http`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use e2e::{
    System, expected, poll, series_value, wait_for_channel, wait_until_busy, wait_until_idle,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wire::planner::{AttemptErrorKind, TaskStatus};

/// A TCP proxy in front of the planner that the test can cut: every
/// connection open through it is closed at once, as a network failure
/// would, while the worker behind it keeps running.
struct Proxy {
    addr: std::net::SocketAddr,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let connection = tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                    connections.lock().expect("not poisoned").push(connection);
                }
            })
        };
        Ok(Self {
            addr,
            connections,
            accept,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection open through the proxy (dropping both of
    /// its sockets); new ones are still accepted.
    fn cut(&self) -> usize {
        let open = std::mem::take(&mut *self.connections.lock().expect("not poisoned"));
        let cut = open.iter().filter(|c| !c.is_finished()).count();
        for connection in open {
            connection.abort();
        }
        cut
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The planner's counter of dispatches sent over `transport`.
async fn dispatches(system: &System, transport: &str) -> Result<f64> {
    let text = system
        .client
        .get(system.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let wanted = format!("planner_dispatches_total{{transport=\"{transport}\"}}");
    Ok(series_value(&text, &wanted))
}

fn log_of(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_cut_mid_task_requeues_exactly_the_tasks_in_flight() -> Result<()> {
    let mut system = System::start(&[]).await?;
    let proxy = Proxy::start(system.planner.addr).await?;
    // The worker reaches the planner only through the proxy: registration,
    // heartbeats and its channel.
    let planner_url = proxy.url();
    let worker_url = system
        .add_worker(
            "cut",
            &[
                ("PLANNER", &planner_url),
                ("CHANNEL", "on"),
                ("SLOTS", "2"),
                ("WORK_MS", "1500"),
            ],
        )
        .await?
        .url();
    system.wait_for_workers(1).await?;

    let before = system
        .submit_ids(&json!({"op": "add", "args": [1, 1]}))
        .await?;
    system.wait_final(&before, Duration::from_secs(20)).await?;
    let in_flight = system
        .submit_ids(&json!([{"op": "mul", "args": [6, 7]}, {"op": "add", "args": [2, 3]}]))
        .await?;
    let queued = system
        .submit_ids(&json!({"op": "mul", "args": [3, 3]}))
        .await?;
    poll(
        Duration::from_secs(20),
        "both tasks running on the worker",
        || async {
            let mut running = 0;
            for id in &in_flight {
                let task = system.task(*id).await.ok()?;
                running += usize::from(task.status == TaskStatus::Running);
            }
            (running == 2).then_some(())
        },
    )
    .await?;
    wait_until_busy(&worker_url, Duration::from_secs(10)).await?;
    let channel_dispatches = dispatches(&system, "channel").await?;
    assert!(
        channel_dispatches >= 3.0,
        "the tasks went over the channel ({channel_dispatches} channel dispatches)"
    );

    let cut = proxy.cut();
    assert!(
        cut >= 1,
        "the channel's connection was open through the proxy"
    );

    let mut all = before.clone();
    all.extend(&in_flight);
    all.extend(&queued);
    let finished = system.wait_final(&all, Duration::from_secs(30)).await?;
    for task in &finished {
        assert_eq!(task.status, TaskStatus::Done, "{task:?}");
        assert_eq!(task.result, expected(&task.op, &task.args), "{task:?}");
        let lost: Vec<_> = task
            .attempt_errors
            .iter()
            .filter(|e| e.kind == AttemptErrorKind::Lost)
            .collect();
        if in_flight.contains(&task.id) {
            assert_eq!(
                task.attempts, 2,
                "in flight at the cut: run again once: {task:?}"
            );
            assert_eq!(lost.len(), 1, "{task:?}");
            assert!(
                lost[0].error.contains("dispatch channel closed"),
                "the lost attempt says why: {task:?}"
            );
        } else {
            assert_eq!(task.attempts, 1, "not in flight at the cut: {task:?}");
            assert!(lost.is_empty(), "{task:?}");
        }
    }
    // The worker came back on its own: registered again, with a new channel.
    system.wait_for_workers(1).await?;
    let log = log_of(&system.planner.log);
    assert!(
        log.contains("dispatch channel closed with tasks in flight"),
        "the planner logged the loss: {log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_unanswered_past_the_dispatch_timeout_is_lost_and_its_late_answer_ignored()
-> Result<()> {
    // One attempt only, so the first loss is final and visible as such.
    let mut system =
        System::start(&[("DISPATCH_TIMEOUT_MS", "300"), ("MAX_ATTEMPTS", "1")]).await?;
    let worker_url = system
        .add_worker(
            "slow",
            &[("CHANNEL", "on"), ("SLOTS", "1"), ("WORK_MS", "2500")],
        )
        .await?
        .url();
    system.wait_for_workers(1).await?;
    wait_for_channel(&worker_url, true).await?;
    let ids = system
        .submit_ids(&json!({"op": "add", "args": [2, 2]}))
        .await?;
    let finished = system.wait_final(&ids, Duration::from_secs(10)).await?;
    let task = &finished[0];
    assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
    assert_eq!(task.result, None, "{task:?}");
    let error = task.error.clone().unwrap_or_default();
    assert!(
        error.contains("no answer within 300 ms"),
        "the failure says why: {task:?}"
    );
    assert_eq!(
        dispatches(&system, "channel").await?,
        1.0,
        "sent on the channel"
    );
    // The worker finishes its call anyway and answers; the planner must
    // ignore that answer (the task's dispatch is no longer current).
    wait_until_idle(&worker_url, Duration::from_secs(10)).await?;
    system.wait_for_workers(1).await?;
    let again = system.task(ids[0]).await?;
    assert_eq!(again.status, TaskStatus::Failed, "{again:?}");
    assert_eq!(
        again.result, None,
        "the late answer was not recorded: {again:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_task_http_worker_and_a_channel_worker_serve_the_same_planner() -> Result<()> {
    let mut system = System::start(&[]).await?;
    let common = [("SLOTS", "2"), ("WORK_MS", "100")];
    let http = system
        .add_worker("http", &[common[0], common[1], ("CHANNEL", "off")])
        .await?
        .url();
    system
        .add_worker("chan", &[common[0], common[1], ("CHANNEL", "on")])
        .await?;
    system.wait_for_workers(2).await?;
    wait_for_channel(&http, false).await?;

    let tasks: Vec<_> = (0..40)
        .map(|i| json!({"op": if i % 2 == 0 { "add" } else { "mul" }, "args": [i, 3]}))
        .collect();
    let ids = system.submit_ids(&json!(tasks)).await?;
    let finished = system.wait_final(&ids, Duration::from_secs(30)).await?;
    let mut by_worker = std::collections::BTreeMap::<String, usize>::new();
    for task in &finished {
        assert_eq!(task.status, TaskStatus::Done, "{task:?}");
        assert_eq!(task.result, expected(&task.op, &task.args), "{task:?}");
        assert_eq!(task.attempts, 1, "{task:?}");
        *by_worker
            .entry(task.worker.clone().unwrap_or_default())
            .or_default() += 1;
    }
    assert!(
        by_worker.get("http").is_some_and(|n| *n > 0)
            && by_worker.get("chan").is_some_and(|n| *n > 0),
        "both workers ran tasks: {by_worker:?}"
    );
    assert_eq!(
        dispatches(&system, "http").await? as usize,
        by_worker["http"],
        "the per-task worker got each of its tasks as one HTTP request"
    );
    assert_eq!(
        dispatches(&system, "channel").await? as usize,
        by_worker["chan"],
        "the channel worker got each of its tasks on its channel"
    );
    Ok(())
}

/// Opens a channel as worker `id` would, presenting `token`.
async fn open_channel(
    system: &System,
    id: &str,
    token: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    let url = format!("ws://{}{}", system.planner.addr, wire::channel::path(id));
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .extend(serve::auth::Token::new(token.map(str::to_string)).headers());
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

/// Reads until the planner closes the channel; its close frame's code and
/// reason, or `None` if the connection just ended.
async fn closed_by_planner(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> Result<Option<(u16, String)>> {
    let reading = async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(frame)) => {
                    return Ok(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
                }
                Ok(_) => continue,
                Err(_) => return Ok(None),
            }
        }
        Ok(None)
    };
    tokio::time::timeout(Duration::from_secs(10), reading)
        .await
        .context("the planner did not close the channel")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_oversized_frame_closes_that_channel_only_with_a_logged_reason() -> Result<()>
{
    let mut system = System::start(&[]).await?;
    let good = system
        .add_worker("good", &[("CHANNEL", "on"), ("SLOTS", "2")])
        .await?
        .url();
    // A worker that offers nothing (so it is sent no task), whose channel
    // the test speaks itself.
    let (status, body) = system
        .post_json(
            "/workers",
            &json!({"id": "rogue", "url": "http://127.0.0.1:9", "ops": [], "slots": 1}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    // It heartbeats like a worker, so it stays registered throughout.
    let heartbeats = {
        let (client, url) = (
            system.client.clone(),
            system.url("/workers/rogue/heartbeat"),
        );
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(200));
            loop {
                ticker.tick().await;
                let _ = client.post(&url).send().await;
            }
        })
    };
    system.wait_for_workers(2).await?;
    wait_for_channel(&good, true).await?;
    let token = system.token.clone();

    // The same token rules as the rest of the API, and only for a
    // registered worker.
    match open_channel(&system, "rogue", None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => bail!(
            "a channel without the token must be refused 401, got {:?}",
            other.map(|_| ())
        ),
    }
    match open_channel(&system, "nobody", token.as_deref()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404)
        }
        other => bail!(
            "a channel for an unknown worker must be refused 404, got {:?}",
            other.map(|_| ())
        ),
    }
    let plain = system
        .client
        .get(system.url(&wire::channel::path("rogue")))
        .send()
        .await?;
    assert_eq!(plain.status(), 426, "not a WebSocket upgrade");
    assert!(
        plain
            .json::<serde_json::Value>()
            .await?
            .get("error")
            .is_some()
    );

    let hostile: [(&str, Message, u16, &str); 4] = [
        (
            "not json",
            Message::text("this is not a frame"),
            1008,
            "malformed frame",
        ),
        (
            "an unknown frame type",
            Message::text(r#"{"type":"gossip","dispatch":1}"#),
            1008,
            "malformed frame",
        ),
        (
            "binary",
            Message::binary(vec![0u8; 16]),
            1003,
            "binary frame",
        ),
        (
            "oversized",
            Message::text("x".repeat(wire::channel::MAX_FRAME_BYTES + 1)),
            1009,
            "oversized frame",
        ),
    ];
    for (what, frame, code, reason) in hostile {
        let mut socket = open_channel(&system, "rogue", token.as_deref()).await?;
        let hello = socket.next().await.context("a hello frame")??;
        assert!(hello.to_text()?.contains(r#""type":"hello""#), "{hello:?}");
        // The planner may close before the whole frame is written.
        let _ = socket.send(frame).await;
        match closed_by_planner(&mut socket).await? {
            Some((got, text)) => {
                assert_eq!(got, code, "{what}: close code ({text})");
                assert!(text.contains(reason), "{what}: close reason {text:?}");
            }
            // An oversized frame may leave no room to say why on the wire;
            // the log says it (checked below).
            None => assert_eq!(code, 1009, "{what}: the planner says why it closes"),
        }
        poll(
            Duration::from_secs(10),
            &format!("the logged reason for {what}"),
            || async {
                let log = log_of(&system.planner.log);
                log.lines()
                    .any(|line| line.contains("rogue") && line.contains(reason))
                    .then_some(())
            },
        )
        .await?;
    }

    // A channel that falls silent (its peer answers no ping) is closed
    // within the heartbeat timeout (1.5 s in these tests).
    let mut silent = open_channel(&system, "rogue", token.as_deref()).await?;
    poll(
        Duration::from_secs(10),
        "the silent channel to be closed",
        || async {
            let log = log_of(&system.planner.log);
            log.lines()
                .any(|line| line.contains("rogue") && line.contains("sent nothing for 1500 ms"))
                .then_some(())
        },
    )
    .await?;
    // Its close frame may be lost behind the pings this side never
    // answered (writing the pongs late meets a closed socket); the log above
    // is the reason, and the connection is gone either way.
    if let Some((code, text)) = closed_by_planner(&mut silent).await? {
        assert_eq!(code, 1008, "{text}");
    }

    // The good worker's channel stayed open through all of it, and carries
    // its tasks.
    let before = dispatches(&system, "channel").await?;
    let ids = system
        .submit_ids(&json!([{"op": "mul", "args": [6, 7]}, {"op": "add", "args": [2, 2]}]))
        .await?;
    for task in system.wait_final(&ids, Duration::from_secs(20)).await? {
        assert_eq!(task.status, TaskStatus::Done, "{task:?}");
        assert_eq!(task.worker.as_deref(), Some("good"));
    }
    assert_eq!(dispatches(&system, "channel").await? - before, 2.0);
    let worker_log = log_of(&system.worker("good").log);
    assert_eq!(
        worker_log.matches("dispatch channel open").count(),
        1,
        "the good worker's channel never closed: {worker_log}"
    );
    heartbeats.abort();
    Ok(())
}
