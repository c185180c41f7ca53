//! Several planner replicas on one PostgreSQL database (issue #11): any
//! replica answers for any task, a replica killed mid-work loses nothing
//! acknowledged, and replicas racing for one queue record each task once.
//! The database is a throwaway cluster (see `e2e::postgres`); a `Front`
//! stands in for the Kubernetes Service in front of the replicas.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::front::Front;
use e2e::postgres::{self, psql};
use e2e::{expected, planner_command, poll, worker_command};
use launcher::process::Service;
use serde_json::{Value, json};
use wire::TaskId;
use wire::planner::{TaskStatus, TaskView, WorkerView};

const TOKEN: &str = "replicas-test-token";

struct Replicas {
    dir: tempfile::TempDir,
    db: postgres::Database,
    planners: Vec<Service>,
    workers: Vec<Service>,
    client: reqwest::Client,
    /// Added to every planner started from now on.
    planner_env: Vec<(&'static str, &'static str)>,
}

impl Replicas {
    async fn start(n: usize) -> Result<Self> {
        let db = postgres::database().await?;
        let dir = tempfile::Builder::new().prefix("replicas-").tempdir()?;
        let mut system = Self {
            dir,
            db,
            planners: Vec::new(),
            workers: Vec::new(),
            client: reqwest::Client::new(),
            planner_env: Vec::new(),
        };
        for _ in 0..n {
            system.add_planner().await?;
        }
        Ok(system)
    }

    /// Starts one more replica on the same database and waits until it is ready.
    async fn add_planner(&mut self) -> Result<String> {
        let i = self.planners.len() + 1;
        let mut cmd = planner_command()?;
        cmd.env("PORT", "0")
            .env("BIND", "127.0.0.1")
            .env("STORE", "postgres")
            .env("DATABASE_URL", &self.db.url)
            .env("TOKEN", TOKEN)
            .env("DATA_DIR", self.dir.path().join(format!("p{i}-data")))
            .env("REPLICA_LEASE_MS", "1000")
            .env("HEARTBEAT_TIMEOUT_MS", "1000");
        for (key, value) in &self.planner_env {
            cmd.env(key, value);
        }
        let log = self.dir.path().join(format!("p{i}.log"));
        let planner = Service::start(&format!("p{i}"), cmd, &log).await?;
        let url = planner.url();
        let ready = format!("{url}/readyz");
        poll(Duration::from_secs(60), "the replica ready", || async {
            let status = reqwest::get(&ready).await.ok()?.status();
            status.is_success().then_some(())
        })
        .await?;
        self.planners.push(planner);
        Ok(url)
    }

    async fn add_worker(&mut self, id: &str, planner: &str, env: &[(&str, &str)]) -> Result<()> {
        let mut cmd = worker_command()?;
        cmd.env("PORT", "0")
            .env("BIND", "127.0.0.1")
            .env("PLANNER", planner)
            .env("WORKER_ID", id)
            .env("TOKEN", TOKEN)
            .env("HEARTBEAT_MS", "200");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = self.dir.path().join(format!("{id}.log"));
        self.workers.push(Service::start(id, cmd, &log).await?);
        Ok(())
    }

    /// The workers each live replica has registered (every replica lists
    /// the whole fleet, each worker saying which replica holds it).
    async fn registered(&self, planners: &[&Service]) -> Result<Vec<Vec<WorkerView>>> {
        let mut all = Vec::new();
        for planner in planners {
            let url = planner.url();
            let workers: Vec<WorkerView> = self
                .client
                .get(format!("{url}/workers"))
                .send()
                .await?
                .json()
                .await?;
            all.push(
                workers
                    .into_iter()
                    .filter(|w| w.planner.as_deref() == Some(url.as_str()))
                    .collect(),
            );
        }
        Ok(all)
    }

    async fn submit(&self, planner: &str, tasks: &Value) -> Result<Vec<TaskId>> {
        submit(&self.client, planner, tasks).await
    }

    /// Submits one task to `planner` and waits for it (`?wait=true`).
    async fn run(&self, planner: &str, task: &Value) -> Result<TaskView> {
        Ok(self
            .client
            .post(format!("{planner}/tasks?wait=true"))
            .json(task)
            .send()
            .await?
            .json()
            .await?)
    }

    async fn task(&self, planner: &str, id: TaskId) -> Result<TaskView> {
        Ok(self
            .client
            .get(format!("{planner}/tasks/{id}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

async fn submit(client: &reqwest::Client, planner: &str, tasks: &Value) -> Result<Vec<TaskId>> {
    let response = client
        .post(format!("{planner}/tasks"))
        .json(tasks)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(
        status.as_u16() == 202,
        "submission answered {status}: {body}"
    );
    body["ids"]
        .as_array()
        .context("ids")?
        .iter()
        .map(|v| v.as_u64().context("id"))
        .collect()
}

fn batch(n: usize, seed: i64) -> Value {
    Value::Array(
        (0..n as i64)
            .map(|i| {
                let op = if i % 2 == 0 { "add" } else { "mul" };
                json!({"op": op, "args": [seed + i, i % 7]})
            })
            .collect(),
    )
}

fn args_of(view: &TaskView) -> Vec<i64> {
    view.args.clone()
}

#[tokio::test]
async fn a_task_submitted_to_one_replica_is_run_by_another_and_answered_to_its_waiter() -> Result<()>
{
    let mut system = Replicas::start(2).await?;
    let (a, b) = (system.planners[0].url(), system.planners[1].url());
    // Only B has a worker.
    system.add_worker("w1", &b, &[("OPS", "add,mul")]).await?;
    poll(Duration::from_secs(20), "w1 registered with B", || async {
        let views = system.registered(&[&system.planners[1]]).await.ok()?;
        (views[0].len() == 1).then_some(())
    })
    .await?;
    let answer = system
        .run(&a, &json!({"op": "mul", "args": [6, 7]}))
        .await?;
    assert_eq!(answer.status, TaskStatus::Done, "{answer:?}");
    assert_eq!(answer.result, Some(42));
    assert_eq!(answer.worker.as_deref(), Some("w1"));
    // Either replica answers for it.
    assert_eq!(system.task(&b, answer.id).await?.result, Some(42));
    // An op nobody runs stays queued, and is cancelled through either replica.
    let stuck = system
        .submit(&a, &json!({"op": "pow", "args": [2, 3]}))
        .await?;
    let cancelled = system
        .client
        .delete(format!("{b}/tasks/{}", stuck[0]))
        .send()
        .await?;
    assert_eq!(cancelled.status().as_u16(), 200);
    assert_eq!(
        system.task(&a, stuck[0]).await?.status,
        TaskStatus::Cancelled
    );
    Ok(())
}

#[tokio::test]
async fn replicas_racing_for_one_queue_run_and_record_each_task_once() -> Result<()> {
    let mut system = Replicas::start(3).await?;
    let urls: Vec<String> = system.planners.iter().map(Service::url).collect();
    // Two workers registered with each replica, two slots each.
    for (i, url) in urls.iter().enumerate() {
        for j in 1..=2 {
            let id = format!("w{i}-{j}");
            system
                .add_worker(&id, url, &[("OPS", "add,mul"), ("SLOTS", "2")])
                .await?;
        }
    }
    let planners: Vec<&Service> = system.planners.iter().collect();
    poll(
        Duration::from_secs(20),
        "two workers on each replica",
        || async {
            let views = system.registered(&planners).await.ok()?;
            views.iter().all(|v| v.len() == 2).then_some(())
        },
    )
    .await?;
    // 3,000 tasks submitted to the three replicas at once.
    let mut submissions = tokio::task::JoinSet::new();
    for (i, url) in urls.iter().enumerate() {
        for k in 0..5 {
            let (client, url) = (system.client.clone(), url.clone());
            let tasks = batch(200, (i * 5 + k) as i64 * 1000);
            submissions.spawn(async move { submit(&client, &url, &tasks).await });
        }
    }
    let mut ids = Vec::new();
    while let Some(submitted) = submissions.join_next().await {
        ids.extend(submitted??);
    }
    assert_eq!(ids.len(), 3000);
    let total = ids.len().to_string();
    poll(Duration::from_secs(120), "every task finished", || async {
        let done = psql(
            &system.db.url,
            "SELECT count(*) FROM tasks WHERE status = 'done'",
        )
        .await
        .ok()?;
        (done == total).then_some(())
    })
    .await?;
    for (n, id) in ids.iter().enumerate() {
        let view = system.task(&urls[n % 3], *id).await?;
        assert_eq!(view.status, TaskStatus::Done, "{view:?}");
        assert_eq!(view.result, expected(&view.op, &args_of(&view)), "{view:?}");
    }
    // Each task ran once: the workers' done counts add up to exactly the
    // tasks, and every replica ran some.
    let views = system.registered(&planners).await?;
    let per_replica: Vec<u64> = views
        .iter()
        .map(|workers| workers.iter().map(|w| w.done).sum())
        .collect();
    assert_eq!(per_replica.iter().sum::<u64>(), 3000, "{per_replica:?}");
    assert!(per_replica.iter().all(|n| *n > 0), "{per_replica:?}");
    Ok(())
}

#[tokio::test]
async fn one_replica_killed_at_30_percent_and_another_rolled_at_60_lose_nothing() -> Result<()> {
    const TOTAL: usize = 5000;
    let mut system = Replicas::start(3).await?;
    let backends = system.planners.iter().map(|p| p.addr).collect();
    let front = Front::start(backends).await?;
    for i in 1..=6 {
        system
            .add_worker(
                &format!("w{i}"),
                &front.url(),
                &[("OPS", "add,mul"), ("SLOTS", "2"), ("WORK_MS", "5")],
            )
            .await?;
    }
    let planners: Vec<&Service> = system.planners.iter().collect();
    let spread = poll(
        Duration::from_secs(20),
        "six workers registered",
        || async {
            let views = system.registered(&planners).await.ok()?;
            (views.iter().map(Vec::len).sum::<usize>() == 6).then_some(views)
        },
    )
    .await?;
    // The victim: the replica with the most workers (so it surely holds tasks).
    let victim = (0..3)
        .max_by_key(|i| spread[*i].len())
        .context("a replica")?;
    let rolled = (victim + 1) % 3;
    // Submitted round-robin to the three replicas, 100 at a time.
    let urls: Vec<String> = system.planners.iter().map(Service::url).collect();
    let mut ids = Vec::new();
    for k in 0..TOTAL / 100 {
        ids.extend(
            system
                .submit(&urls[k % 3], &batch(100, k as i64 * 1000))
                .await?,
        );
    }
    let done = |db: String| async move {
        psql(&db, "SELECT count(*) FROM tasks WHERE status = 'done'")
            .await
            .ok()?
            .parse::<usize>()
            .ok()
    };
    poll(Duration::from_secs(60), "30% done", || async {
        (done(system.db.url.clone()).await? >= TOTAL * 3 / 10).then_some(())
    })
    .await?;
    system.planners[victim].kill();
    let killed_at = std::time::Instant::now();
    let survivors_of_kill: Vec<&Service> = (0..3)
        .filter(|i| *i != victim)
        .map(|i| &system.planners[i])
        .collect();
    poll(
        Duration::from_secs(30),
        "every worker with a live replica",
        || async {
            let views = system.registered(&survivors_of_kill).await.ok()?;
            (views.iter().map(Vec::len).sum::<usize>() == 6).then_some(())
        },
    )
    .await?;
    println!(
        "workers of the killed replica registered elsewhere after {} ms",
        killed_at.elapsed().as_millis()
    );
    poll(Duration::from_secs(60), "60% done", || async {
        (done(system.db.url.clone()).await? >= TOTAL * 6 / 10).then_some(())
    })
    .await?;
    // A rolling restart of another replica: SIGTERM (it hands its tasks
    // back), then a new process on the same port.
    let port = system.planners[rolled].addr.port().to_string();
    let status = system.planners[rolled]
        .stop(Duration::from_secs(15))
        .await
        .context("the rolled replica exited")?;
    assert!(status.success(), "SIGTERM exit status {status}");
    let mut cmd = planner_command()?;
    cmd.env("PORT", &port)
        .env("BIND", "127.0.0.1")
        .env("STORE", "postgres")
        .env("DATABASE_URL", &system.db.url)
        .env("TOKEN", TOKEN)
        .env("DATA_DIR", system.dir.path().join("rolled-data"))
        .env("REPLICA_LEASE_MS", "1000")
        .env("HEARTBEAT_TIMEOUT_MS", "1000");
    let log = system.dir.path().join("rolled.log");
    system.planners[rolled] = Service::start("rolled", cmd, &log).await?;
    // Every acknowledged task finishes once, with the right result.
    poll(Duration::from_secs(120), "every task finished", || async {
        (done(system.db.url.clone()).await? == TOTAL).then_some(())
    })
    .await?;
    let unique: HashSet<&TaskId> = ids.iter().collect();
    assert_eq!(unique.len(), TOTAL);
    let wrong = psql(
        &system.db.url,
        "SELECT count(*) FROM tasks WHERE status <> 'done' OR result IS NULL",
    )
    .await?;
    assert_eq!(wrong, "0");
    let live = [&system.planners[(victim + 2) % 3], &system.planners[rolled]];
    for (n, id) in ids.iter().enumerate().step_by(7) {
        let view = system.task(&live[n % 2].url(), *id).await?;
        assert_eq!(view.status, TaskStatus::Done, "{view:?}");
        assert_eq!(view.result, expected(&view.op, &args_of(&view)), "{view:?}");
    }
    // New work still flows through the Service.
    let more = system.submit(&front.url(), &batch(50, 99_000)).await?;
    for id in more {
        let view = poll(Duration::from_secs(30), "a new task to finish", || async {
            let view = system.task(&front.url(), id).await.ok()?;
            view.status.is_final().then_some(view)
        })
        .await?;
        assert_eq!(view.status, TaskStatus::Done, "{view:?}");
    }
    Ok(())
}

/// Events read from a planner's `/events` stream, as (event, data).
struct Followed {
    events: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn follow_events(planner: &str) -> Result<Followed> {
    let mut response = reqwest::get(format!("{planner}/events")).await?;
    ensure!(response.status().is_success(), "{}", response.status());
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    let reader = tokio::spawn(async move {
        let mut buffer = String::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let kind = block.lines().find_map(|l| l.strip_prefix("event: "));
                let data = block.lines().find_map(|l| l.strip_prefix("data: "));
                if let (Some(kind), Some(Ok(data))) =
                    (kind, data.map(serde_json::from_str::<Value>))
                    && let Ok(mut events) = sink.lock()
                {
                    events.push((kind.to_string(), data));
                }
            }
        }
    });
    Ok(Followed { events, reader })
}

async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Option<T> {
    reqwest::get(url).await.ok()?.json().await.ok()
}

/// The digest of `op` a worker says it runs.
async fn worker_digest(worker: &str, op: &str) -> Option<String> {
    let ops: Vec<Value> = get_json(&format!("{worker}/ops")).await?;
    ops.iter()
        .find(|o| o["name"] == op)
        .and_then(|o| o["digest"].as_str())
        .map(str::to_string)
}

#[tokio::test]
async fn every_replica_shows_the_whole_fleet_and_a_module_put_to_one_reaches_every_worker()
-> Result<()> {
    let mut system = Replicas::start(2).await?;
    let (a, b) = (system.planners[0].url(), system.planners[1].url());
    let seen_by_b = follow_events(&b).await?;
    system.add_worker("wa", &a, &[("OPS", "add")]).await?;
    system.add_worker("wb", &b, &[("OPS", "mul")]).await?;

    // Each replica lists both workers, whichever it holds.
    for planner in [&a, &b] {
        poll(
            Duration::from_secs(20),
            &format!("{planner} listing both workers"),
            || async {
                let workers: Vec<WorkerView> = get_json(&format!("{planner}/workers")).await?;
                let ids: Vec<&str> = workers.iter().map(|w| w.id.as_str()).collect();
                (ids == ["wa", "wb"]).then_some(())
            },
        )
        .await?;
    }

    // Tasks run through A's worker and B's worker are counted by both.
    let ids = system.submit(&a, &batch(40, 3)).await?;
    for id in &ids {
        poll(Duration::from_secs(30), "a task done", || async {
            let view = system.task(&b, *id).await.ok()?;
            (view.status == TaskStatus::Done).then_some(())
        })
        .await?;
    }
    // B's event stream carries A's worker and the tasks A ran.
    poll(
        Duration::from_secs(20),
        "B's stream showing every task's end",
        || async {
            let events = seen_by_b.events.lock().ok()?;
            let done: HashSet<u64> = events
                .iter()
                .filter(|(kind, data)| kind == "task" && data["status"] == "done")
                .filter_map(|(_, data)| data["id"].as_u64())
                .collect();
            let wa_joined = events.iter().any(|(kind, data)| {
                kind == "worker" && data["id"] == "wa" && data["change"] == "registered"
            });
            (wa_joined && ids.iter().all(|id| done.contains(id))).then_some(())
        },
    )
    .await?;
    let ends = seen_by_b
        .events
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .filter(|(kind, data)| kind == "task" && data["status"] == "done")
        .count();
    assert_eq!(ends, ids.len(), "each task's end once on B's stream");
    for planner in [&a, &b] {
        poll(
            Duration::from_secs(20),
            &format!("{planner}'s /stats counting every replica's tasks and workers"),
            || async {
                let stats: Value = get_json(&format!("{planner}/stats")).await?;
                let done_add = stats["by_op"]["add"]["done"].as_u64()?;
                let done_mul = stats["by_op"]["mul"]["done"].as_u64()?;
                let flavors = &stats["workers_by_flavor"];
                (done_add == 20 && done_mul == 20 && flavors["add"] == 1 && flavors["mul"] == 1)
                    .then_some(())
            },
        )
        .await?;
    }

    // A module put to A, which has no mul worker, reaches B's mul worker.
    let v2 = std::fs::read(e2e::fixture("mul_v2"))?;
    let v2_digest = wire::digest_hex(&v2);
    let response = system
        .client
        .put(format!("{a}/ops/mul"))
        .bearer_auth(TOKEN)
        .body(v2)
        .send()
        .await?;
    assert_eq!(
        response.status().as_u16(),
        200,
        "{}",
        response.text().await?
    );
    let wb = system.workers[1].url();
    poll(Duration::from_secs(20), "wb running v2", || async {
        (worker_digest(&wb, "mul").await? == v2_digest).then_some(())
    })
    .await?;
    for planner in [&a, &b] {
        poll(
            Duration::from_secs(20),
            &format!("{planner}'s /ops showing the fleet on v2"),
            || async {
                let ops: Vec<Value> = get_json(&format!("{planner}/ops")).await?;
                let mul = ops.iter().find(|o| o["name"] == "mul")?;
                (mul["digest"] == v2_digest.as_str()
                    && mul["workers"]["wb"] == v2_digest.as_str()
                    && mul["up_to_date"] == 1
                    && mul["behind"] == 0)
                    .then_some(())
            },
        )
        .await?;
    }
    let answer = system
        .run(&a, &json!({"op": "mul", "args": [6, 7]}))
        .await?;
    assert_eq!(answer.result, Some(1_000_042), "{answer:?}");
    assert_eq!(answer.digest.as_deref(), Some(v2_digest.as_str()));

    // A replica started later holds the module too: its late-joining
    // worker is brought up to date at registration.
    let c = system.add_planner().await?;
    system.add_worker("wc", &c, &[("OPS", "mul")]).await?;
    let wc = system.workers[2].url();
    poll(Duration::from_secs(20), "wc brought to v2", || async {
        (worker_digest(&wc, "mul").await? == v2_digest).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_task_whose_op_no_replica_offers_fails_in_time_and_one_offered_elsewhere_runs()
-> Result<()> {
    let mut system = Replicas::start(0).await?;
    system.planner_env = vec![("UNOFFERED_OP_TIMEOUT_MS", "500")];
    let a = system.add_planner().await?;
    let b = system.add_planner().await?;
    // Only B's worker offers mul; nobody offers mull.
    system.add_worker("wb", &b, &[("OPS", "mul")]).await?;
    poll(
        Duration::from_secs(20),
        "A seeing B's mul worker",
        || async {
            let workers: Vec<WorkerView> = get_json(&format!("{a}/workers")).await?;
            (workers.len() == 1).then_some(())
        },
    )
    .await?;
    let typo = system
        .submit(&a, &json!({"op": "mull", "args": [6, 7]}))
        .await?;
    let elsewhere = system
        .submit(&a, &json!({"op": "mul", "args": [32, 32]}))
        .await?;
    let failed = poll(Duration::from_secs(30), "the mull task failed", || async {
        let view = system.task(&b, typo[0]).await.ok()?;
        (view.status == TaskStatus::Failed).then_some(view)
    })
    .await?;
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("no worker offered op `mull`")),
        "{failed:?}"
    );
    // Submitted to A, which has no worker: B claims and runs it.
    let ran = poll(Duration::from_secs(30), "the mul task done", || async {
        let view = system.task(&a, elsewhere[0]).await.ok()?;
        view.status.is_final().then_some(view)
    })
    .await?;
    assert_eq!(ran.status, TaskStatus::Done, "{ran:?}");
    assert_eq!(ran.result, Some(1024));
    Ok(())
}
