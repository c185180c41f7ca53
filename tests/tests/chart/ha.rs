//! Several planners on PostgreSQL (`chart/examples/ha.yaml`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::chart::{
    LocalCluster, chart_dir, container, describe, env_literal, helm, pod_metadata, pod_spec,
    render, selects,
};
use e2e::postgres;
use e2e::{expected, poll};
use serde_json::{Value, json};
use wire::TaskId;
use wire::planner::{TaskStatus, WorkerView};

use super::{RELEASE, deployment_replicas, example, final_task, get_json, helm_test_passes};

#[test]
fn several_planners_need_postgres_and_roll_without_a_gap() -> Result<()> {
    let ha = render(RELEASE, &["-f", &example("ha.yaml")])?;
    assert_eq!(deployment_replicas(&ha, "workers-planner"), 3);
    let planner = ha.get("Deployment", "workers-planner")?;
    assert_eq!(planner["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        planner["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let container = container(planner)?;
    assert_eq!(env_literal(container, "STORE"), Some("postgres"));
    assert_eq!(
        env_literal(container, "ADVERTISE_URL"),
        Some("http://$(POD_IP):3000")
    );
    // The URL comes from the Secret as a file, never as an env value.
    assert_eq!(env_literal(container, "DATABASE_URL"), None);
    let file = env_literal(container, "DATABASE_URL_FILE").context("DATABASE_URL_FILE")?;
    let volumes = pod_spec(planner)["volumes"].as_array().context("volumes")?;
    let database = volumes
        .iter()
        .find(|v| v["name"] == "database")
        .context("a database volume")?;
    assert_eq!(database["secret"]["secretName"], "workers-db");
    assert_eq!(database["secret"]["items"][0]["key"], "uri");
    assert!(
        file.ends_with(
            database["secret"]["items"][0]["path"]
                .as_str()
                .unwrap_or("?")
        )
    );
    // No ReadWriteOnce claim that three pods could not share.
    assert!(ha.all("PersistentVolumeClaim").is_empty());
    // A drain takes one planner at a time.
    let budget = ha.get("PodDisruptionBudget", "workers-planner")?;
    assert_eq!(budget["spec"]["maxUnavailable"], 1);
    assert!(selects(
        &budget["spec"]["selector"]["matchLabels"],
        &pod_metadata(planner)["labels"]
    ));
    let single = render(RELEASE, &[])?;
    assert!(
        single
            .find("PodDisruptionBudget", "workers-planner")
            .is_none()
    );

    // Refused at install, with the reason: several planners on SQLite, and
    // PostgreSQL without its Secret.
    let chart = chart_dir().display().to_string();
    for (args, why) in [
        (
            vec!["--set", "planner.replicas=2"],
            "needs planner.store=postgres",
        ),
        (
            vec!["--set", "planner.store=postgres"],
            "needs planner.database.existingSecret",
        ),
    ] {
        let mut all = vec!["template", "x", chart.as_str()];
        all.extend(args.iter().copied());
        let output = helm(&all)?;
        ensure!(!output.status.success(), "{args:?} rendered");
        let said = describe(&output);
        ensure!(said.contains(why), "{args:?}: {said}");
    }
    Ok(())
}

/// Every planner's view of the workers: id -> the latest `last_seen_ms` any
/// replica reports (a worker heartbeats the replica that registered it).
async fn fleet(http: &reqwest::Client, planners: &[String]) -> Option<BTreeMap<String, u64>> {
    let mut seen = BTreeMap::new();
    for planner in planners {
        let list: Vec<WorkerView> = get_json(http, &format!("{planner}/workers")).await?;
        for worker in list {
            let last = seen.entry(worker.id).or_insert(0);
            *last = worker.last_seen_ms.max(*last);
        }
    }
    Some(seen)
}

/// `chart/examples/ha.yaml` run as rendered: three planners from the
/// rendered Deployment on one PostgreSQL database (a throwaway one, or
/// `DATABASE_URL`'s server), its URL in the `workers-db` Secret created
/// beforehand as the example says and mounted as a file; the rendered
/// worker Deployments behind the planner Service (which spreads
/// connections over the three pods). Tasks submitted to each planner all
/// complete and any replica answers for any of them; each planner
/// advertises its own pod address for heartbeats, and they arrive; the
/// `helm test` Pod passes through the Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_example_runs_three_planners_on_one_database() -> Result<()> {
    let db = postgres::database().await?;
    let manifest = render(RELEASE, &["-f", &example("ha.yaml")])?;
    let token = manifest.secret_value("workers-token", "token")?;
    let mut cluster = LocalCluster::new(manifest.clone(), "default")?;
    cluster.create_secret("workers-db", &[("uri", &db.url)])?;
    cluster.start_deployments().await?;

    let planners = cluster.pods_of("workers-planner");
    assert_eq!(planners.len(), 3, "planner.replicas");
    let workers: BTreeSet<String> = cluster
        .pods
        .iter()
        .filter(|p| p.component != "planner")
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(workers.len(), 4 + 2 + 2, "general, mul and add replicas");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    // A black hole for the probe registrations below: they offer no op,
    // so nothing is ever sent there.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let black_hole = format!("http://{}", black_hole.local_addr()?);
    for (i, planner) in planners.iter().enumerate() {
        let name = &planner.name;
        assert_eq!(planner.env["STORE"], "postgres", "{name}");
        assert!(
            !planner.env.contains_key("DATABASE_URL"),
            "{name}: the URL is not in the environment"
        );
        // The Secret's `uri` key, as the file the mount shows.
        let file = &planner.env["DATABASE_URL_FILE"];
        assert_eq!(std::fs::read_to_string(file)?, db.url, "{name}: {file}");
        assert!(
            std::path::Path::new(file)
                .starts_with(&planner.mounts["/var/run/secrets/task-system/database"]),
            "{name}: {file} is in the database Secret's volume"
        );
        // ADVERTISE_URL is the pod's own address: a worker registering
        // through the Service is told to heartbeat this very replica.
        assert_eq!(planner.env["ADVERTISE_URL"], planner.url(), "{name}");
        let probe = format!("probe-{i}");
        let answer = http
            .post(format!("{}/workers", planner.url()))
            .bearer_auth(&token)
            .json(&json!({"id": probe, "url": black_hole, "slots": 1, "ops": []}))
            .send()
            .await?;
        ensure!(answer.status() == 200, "{name}: {}", answer.status());
        let answer: Value = answer.json().await?;
        assert_eq!(answer["heartbeat_to"], planner.url(), "{name}: {answer}");
        let gone = http
            .delete(format!("{}/workers/{probe}", planner.url()))
            .bearer_auth(&token)
            .send()
            .await?;
        assert!(gone.status().is_success(), "{name}: {}", gone.status());
    }
    let urls: Vec<String> = planners.iter().map(|p| p.url()).collect();

    // Every worker registered (through the Service, with some replica).
    let seen = poll(Duration::from_secs(60), "8 workers registered", || async {
        let seen = fleet(&http, &urls).await?;
        (seen.keys().cloned().collect::<BTreeSet<_>>() == workers).then_some(seen)
    })
    .await
    .with_context(|| cluster.log_tails("workers-planner", 20))?;
    let mut holders: BTreeMap<&str, usize> = BTreeMap::new();
    for url in &urls {
        let list: Vec<WorkerView> = http
            .get(format!("{url}/workers"))
            .send()
            .await?
            .json()
            .await?;
        holders.insert(url, list.len());
    }
    println!("workers listed per planner replica: {holders:?}");
    // Heartbeats reach the replica that holds each worker.
    poll(
        Duration::from_secs(20),
        "a heartbeat from every worker",
        || async {
            let now = fleet(&http, &urls).await?;
            seen.iter()
                .all(|(id, before)| now.get(id).is_some_and(|after| after > before))
                .then_some(())
        },
    )
    .await
    .with_context(|| cluster.log_tails("workers-planner", 20))?;

    // Tasks submitted to each planner; each read back from another one.
    let mut submitted = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let tasks: Vec<Value> = (0..12i64)
            .map(|n| {
                let op = if n % 2 == 0 { "mul" } else { "add" };
                json!({"op": op, "args": [n + 10 * i as i64, 7]})
            })
            .collect();
        let response = http
            .post(format!("{url}/tasks"))
            .json(&tasks)
            .send()
            .await?;
        ensure!(
            response.status() == 202,
            "submitting to planner {i}: {}",
            response.status()
        );
        let ids: Vec<TaskId> =
            serde_json::from_value(response.json::<Value>().await?["ids"].clone())?;
        assert_eq!(ids.len(), tasks.len());
        submitted.extend(ids.into_iter().zip(tasks).map(|(id, task)| (i, id, task)));
    }
    let distinct: BTreeSet<TaskId> = submitted.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(distinct.len(), submitted.len(), "ids are fleet-wide");
    let mut ran_on = BTreeSet::new();
    for (i, id, task) in &submitted {
        let reader = &urls[(i + 1) % urls.len()];
        let view = final_task(&http, reader, *id)
            .await
            .with_context(|| cluster.log_tails("workers-planner", 20))?;
        let op = task["op"].as_str().unwrap_or("");
        let args: Vec<i64> = serde_json::from_value(task["args"].clone())?;
        assert_eq!(view.status, TaskStatus::Done, "{task}: {view:?}");
        assert_eq!(view.result, expected(op, &args), "{task}");
        ran_on.insert(view.worker.clone().unwrap_or_default());
    }
    assert!(
        ran_on.is_subset(&workers) && ran_on.len() > 1,
        "the tasks ran on the rendered workers: {ran_on:?}"
    );

    // `?wait=true` on every replica answers as soon as the task is done,
    // also when this very replica claims and finishes it at once (it did
    // not, about once in 180, before the planner subscribed waiters that way).
    let wait = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    for round in 0..20i64 {
        for url in &urls {
            for op in ["mul", "add"] {
                let response = wait
                    .post(format!("{url}/tasks?wait=true&timeout_ms=10000"))
                    .json(&json!({"op": op, "args": [round, 3]}))
                    .send()
                    .await?;
                let status = response.status();
                let answer: Value = response.json().await?;
                ensure!(
                    status == 200 && answer["result"] == json!(expected(op, &[round, 3])),
                    "{op}({round}, 3) waited on {url}: {status} {answer}"
                );
            }
        }
    }

    // `helm test` through the planner Service.
    if let Err(err) = helm_test_passes(&cluster).await {
        let mut latest = String::new();
        for url in &urls {
            let tasks = http.get(format!("{url}/tasks?limit=3")).send().await?;
            latest += &format!("{url}/tasks?limit=3: {}\n", tasks.text().await?);
        }
        return Err(err.context(format!(
            "{latest}{}",
            cluster.log_tails("workers-planner", 30)
        )));
    }
    Ok(())
}
