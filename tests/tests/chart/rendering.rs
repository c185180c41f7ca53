//! Rendering: `helm lint`, the examples, schema validation of every
//! rendered object, refusals at install, and which objects appear.

use std::collections::BTreeSet;

use super::{RELEASE, deployment_replicas, env_of, example, examples, modules_values};
use anyhow::{Context, Result, ensure};
use e2e::chart::{
    Manifest, chart_dir, container, describe, helm, kubernetes_validate_path, name_of,
    pod_metadata, pod_spec, render, selects, workspace_root,
};
use e2e::fixture;
use serde_json::json;

#[test]
fn helm_lint_strict_passes_with_the_defaults_and_every_example() -> Result<()> {
    let chart = chart_dir().display().to_string();
    let output = helm(&["lint", "--strict", &chart])?;
    ensure!(
        output.status.success(),
        "helm lint --strict (defaults): {}",
        describe(&output)
    );
    let files = examples();
    ensure!(
        files.len() >= 5,
        "chart/examples should hold a values file per exercise scenario: {files:?}"
    );
    for file in files {
        let file = file.display().to_string();
        let output = helm(&["lint", "--strict", &chart, "-f", &file])?;
        ensure!(
            output.status.success(),
            "helm lint --strict -f {file}: {}",
            describe(&output)
        );
    }
    Ok(())
}

#[test]
fn the_examples_are_the_exercise_scenarios() -> Result<()> {
    let tasks = |m: &Manifest| env_of(m, "workers-planner", "TASKS").unwrap_or_default();
    let count = |m: &Manifest, flavor: &str| deployment_replicas(m, &format!("workers-{flavor}"));

    let single = render(RELEASE, &["-f", &example("single.yaml")])?;
    assert_eq!(
        (
            count(&single, "general"),
            count(&single, "mul"),
            count(&single, "add")
        ),
        (1, 0, 0)
    );
    assert_eq!(deployment_replicas(&single, "workers-planner"), 1);
    assert_eq!(tasks(&single), "4");

    let general = render(RELEASE, &["-f", &example("general.yaml")])?;
    assert!(
        count(&general, "general") >= 2
            && count(&general, "mul") == 0
            && count(&general, "add") == 0
    );

    let specialized = render(RELEASE, &["-f", &example("specialized.yaml")])?;
    assert_eq!(count(&specialized, "general"), 0);
    assert!(count(&specialized, "mul") > 0 && count(&specialized, "add") > 0);

    let registering = render(RELEASE, &["-f", &example("registering.yaml")])?;
    let workers: u64 = ["general", "mul", "add"]
        .iter()
        .map(|f| count(&registering, f))
        .sum();
    assert_eq!((workers, tasks(&registering).as_str()), (10, "50"));

    let mixed = render(RELEASE, &["-f", &example("mixed.yaml")])?;
    assert_eq!(
        (
            count(&mixed, "general"),
            count(&mixed, "mul"),
            count(&mixed, "add")
        ),
        (10, 10, 10)
    );
    assert_eq!(tasks(&mixed), "100");
    for flavor in ["general", "mul", "add"] {
        assert_eq!(
            env_of(&mixed, &format!("workers-{flavor}"), "WORK_MS").as_deref(),
            Some("3000-12000")
        );
    }

    let pow = render(RELEASE, &["-f", &example("pow.yaml")])?;
    assert_eq!(count(&pow, "pow"), 2);
    assert_eq!(env_of(&pow, "workers-pow", "OPS").as_deref(), Some("pow"));
    Ok(())
}

/// Renders used for the schema-level checks: the defaults, every example,
/// and every optional object switched on.
fn renders_to_validate(dir: &std::path::Path) -> Result<Vec<(String, Manifest)>> {
    let mut renders = vec![("defaults".to_string(), render(RELEASE, &[])?)];
    for file in examples() {
        let file = file.display().to_string();
        renders.push((file.clone(), render(RELEASE, &["-f", &file])?));
    }
    let pow = std::fs::read(fixture("pow"))?;
    let modules = modules_values(dir, "modules.yaml", &[("pow", &pow)])?;
    let everything = [
        "-f",
        &example("production.yaml"),
        "-f",
        &modules,
        "--set",
        "extraFlavors.pow.replicas=1",
        "--set",
        "extraFlavors.pow.ops={pow}",
        "--set",
        "planner.persistence.storageClass=fast",
        "--set",
        "imagePullSecrets[0].name=regcred",
    ];
    renders.push(("everything on".into(), render(RELEASE, &everything)?));
    Ok(renders)
}

#[test]
fn kubernetes_validate_strict_accepts_every_rendered_object() -> Result<()> {
    let validator = kubernetes_validate_path()?;
    let dir = tempfile::tempdir()?;
    let renders = renders_to_validate(dir.path())?;
    let mut files = Vec::new();
    let mut builtin_objects = 0;
    for (i, (_, manifest)) in renders.iter().enumerate() {
        let path = dir.path().join(format!("render-{i}.yaml"));
        std::fs::write(&path, &manifest.text)?;
        files.push(path);
        builtin_objects += manifest
            .objects
            .iter()
            .filter(|o| o["apiVersion"] != "monitoring.coreos.com/v1")
            .count();
    }
    let output = std::process::Command::new(&validator)
        .args(["--strict", "-k", "1.35.0"])
        .args(&files)
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "kubernetes-validate --strict rejected a rendered object: {}",
        describe(&output)
    );
    let passed = stdout
        .lines()
        .filter(|l| l.starts_with("INFO") && l.contains(" passed for resource "))
        .count();
    assert_eq!(
        passed, builtin_objects,
        "every built-in object must be checked and pass:\n{stdout}"
    );
    for line in stdout.lines().filter(|l| !l.starts_with("INFO")) {
        assert!(
            line.contains("Couldn't find schema for kind ServiceMonitor"),
            "only the ServiceMonitor (a CRD) may go unchecked: {line}"
        );
    }

    // The validator does catch a misspelled field: this check can fail.
    let mut broken = renders[0].1.get("Deployment", "workers-planner")?.clone();
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = json!({});
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, serde_json::to_string(&broken)?)?;
    let output = std::process::Command::new(&validator)
        .args(["--strict", "-k", "1.35.0"])
        .arg(&path)
        .output()?;
    assert!(
        !output.status.success(),
        "a misspelled field must be refused: {}",
        describe(&output)
    );
    Ok(())
}

#[test]
fn the_schema_refuses_nonsense_at_install_naming_the_field() -> Result<()> {
    let chart = chart_dir().display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "mul.replicas=-1"], "/mul/replicas"),
        (&["--set", "mul.replicas=lots"], "/mul/replicas"),
        (&["--set", "mull.replicas=3"], "'mull'"),
        (&["--set", "general.slots=0"], "/general/slots"),
        (&["--set", "add.workMs=soon"], "/add/workMs"),
        (&["--set", "add.ops={Add!}"], "/add/ops/0"),
        (&["--set", "planner.store=sqlite"], "/planner/store"),
        (&["--set", "planner.resultTtl=a day"], "/planner/resultTtl"),
        (&["--set", "planner.resultLimit=-1"], "/planner/resultLimit"),
        // The planner refuses a zero key lifetime at start: refuse it here.
        (
            &["--set", "planner.idempotencyTtl=0s"],
            "/planner/idempotencyTtl",
        ),
        (
            &["--set", "planner.idempotencyTtl=0h 00m"],
            "/planner/idempotencyTtl",
        ),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (
            &["--set", "extraFlavors.pow.replicas=1"],
            "missing property 'ops'",
        ),
        (
            &[
                "--set",
                "extraFlavors.mul.replicas=1",
                "--set",
                "extraFlavors.mul.ops={mul}",
            ],
            "/extraFlavors",
        ),
        // Checks the schema cannot express, made by the templates.
        (&["--set", "general.workMs=9000-3000"], "general.workMs"),
        (
            &["--set", "general.workMs=90000"],
            "planner.dispatchTimeoutMs",
        ),
        (
            &[
                "--set",
                "extraFlavors.pow.replicas=1",
                "--set",
                "extraFlavors.pow.ops={pow}",
            ],
            "modules.files.pow",
        ),
    ];
    for (args, field) in cases {
        let mut all = vec!["install", RELEASE, &chart, "--dry-run=client"];
        all.extend_from_slice(args);
        let output = helm(&all)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{args:?} must be refused: {}",
            describe(&output)
        );
        assert!(
            stderr.contains(field),
            "refusing {args:?} must name {field}: {stderr}"
        );
    }
    // What the issue says works, works.
    let output = helm(&[
        "install",
        RELEASE,
        &chart,
        "--dry-run=client",
        "--set",
        "mul.replicas=10",
    ])?;
    ensure!(
        output.status.success(),
        "--set mul.replicas=10: {}",
        describe(&output)
    );
    let manifest = render(RELEASE, &["--set", "mul.replicas=10"])?;
    assert_eq!(deployment_replicas(&manifest, "workers-mul"), 10);
    Ok(())
}

#[test]
fn optional_objects_appear_only_when_asked_for() -> Result<()> {
    let defaults = render(RELEASE, &[])?;
    let kinds: BTreeSet<&str> = defaults
        .objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ConfigMap",
            "Deployment",
            "PersistentVolumeClaim",
            "NetworkPolicy",
            "Pod",
            "Secret",
            "Service"
        ])
    );
    let service = defaults.get("Service", "workers-planner")?;
    assert_eq!(service["spec"]["ports"][0]["port"], 3000);
    assert!(selects(
        &service["spec"]["selector"],
        &pod_metadata(defaults.get("Deployment", "workers-planner")?)["labels"]
    ));
    assert!(!selects(
        &service["spec"]["selector"],
        &pod_metadata(defaults.get("Deployment", "workers-general")?)["labels"]
    ));
    // The task store is persistent by default (issue 15); off, an emptyDir.
    assert_eq!(
        pod_spec(defaults.get("Deployment", "workers-planner")?)["volumes"][0]["persistentVolumeClaim"]
            ["claimName"],
        "workers-planner-data"
    );
    let ephemeral = render(RELEASE, &["--set", "planner.persistence.enabled=false"])?;
    assert!(
        ephemeral
            .find("PersistentVolumeClaim", "workers-planner-data")
            .is_none()
    );
    assert_eq!(
        pod_spec(ephemeral.get("Deployment", "workers-planner")?)["volumes"][0]["emptyDir"],
        json!({})
    );

    let all = render(RELEASE, &["-f", &example("production.yaml")])?;
    let pvc = all.get("PersistentVolumeClaim", "workers-planner-data")?;
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "5Gi");
    let planner = all.get("Deployment", "workers-planner")?;
    assert_eq!(
        pod_spec(planner)["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "workers-planner-data"
    );
    assert_eq!(
        planner["spec"]["strategy"]["type"], "Recreate",
        "one writer of the task store at a time"
    );
    for flavor in ["general", "mul", "add"] {
        let pdb = all.get("PodDisruptionBudget", &format!("workers-{flavor}"))?;
        let pods = pod_metadata(all.get("Deployment", &format!("workers-{flavor}"))?);
        assert!(
            selects(&pdb["spec"]["selector"]["matchLabels"], &pods["labels"]),
            "{flavor}"
        );
    }
    assert_eq!(
        all.get("PodDisruptionBudget", "workers-mul")?["spec"]["minAvailable"],
        1
    );
    assert_eq!(
        all.get("PodDisruptionBudget", "workers-add")?["spec"]["maxUnavailable"],
        1
    );
    let monitor = all.get("ServiceMonitor", "workers")?;
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let workers = all.get("Service", "workers-workers")?;
    assert_eq!(workers["spec"]["clusterIP"], "None");
    for service in [all.get("Service", "workers-planner")?, workers] {
        assert!(selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ));
        let component = service["metadata"]["labels"]["app.kubernetes.io/component"]
            .as_str()
            .unwrap_or("");
        assert!(
            monitor["spec"]["selector"]["matchExpressions"][0]["values"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v == component)
        );
    }
    let selected: Vec<&str> = all
        .all("Deployment")
        .into_iter()
        .filter(|d| selects(&workers["spec"]["selector"], &pod_metadata(d)["labels"]))
        .map(name_of)
        .collect();
    assert_eq!(
        selected,
        vec!["workers-add", "workers-general", "workers-mul"],
        "the workers Service picks every worker and no planner"
    );
    Ok(())
}

#[test]
fn the_dockerfile_builds_the_binaries_the_chart_runs() -> Result<()> {
    let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile"))?;
    let manifest = render(RELEASE, &[])?;
    for d in manifest.all("Deployment") {
        let program = container(d)?["command"][0]
            .as_str()
            .unwrap_or("")
            .to_string();
        let binary = program
            .strip_prefix("/usr/local/bin/")
            .context("binaries live in /usr/local/bin")?;
        assert!(
            dockerfile.contains(&format!("/out/{binary}")),
            "the image holds {program}"
        );
    }
    assert!(dockerfile.contains("COPY --from=build /out/planner /out/worker /usr/local/bin/"));
    assert!(
        dockerfile.contains("USER 65532"),
        "the image runs as the non-root user the chart expects"
    );
    assert!(dockerfile.contains("rustup target add wasm32-unknown-unknown"));
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
    Ok(())
}
