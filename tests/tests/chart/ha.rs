//! Several planners on PostgreSQL (`chart/examples/ha.yaml`).

use super::{RELEASE, deployment_replicas, example};
use anyhow::{Context, Result, ensure};
use e2e::chart::{
    chart_dir, container, describe, env_literal, helm, pod_metadata, pod_spec, render, selects,
};

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
