//! The Helm chart in `chart/`, checked by the real `helm` and
//! `kubernetes-validate` (installed into `.tools/` by `scripts/install-tools`)
//! and by running what it renders: the rendered Deployments' commands start
//! as local processes with the environment the manifests give them (see
//! `e2e::chart` for how cluster addresses map to this machine).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use e2e::chart::{
    LocalCluster, Manifest, chart_dir, container, describe, env_literal, helm, helm_async,
    kubernetes_validate_path, name_of, pod_metadata, pod_spec, render, selects, workspace_root,
};
use e2e::{expected, fixture, poll};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wire::TaskId;
use wire::planner::{TaskStatus, TaskView, WorkerView};

const RELEASE: &str = "workers";

fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("examples"))
        .expect("chart/examples exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn example(name: &str) -> String {
    chart_dir()
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A values file in `dir` putting `modules` (op -> component bytes) in the
/// chart's modules ConfigMap.
fn modules_values(dir: &std::path::Path, name: &str, modules: &[(&str, &[u8])]) -> Result<String> {
    let files: serde_json::Map<String, Value> = modules
        .iter()
        .map(|(op, bytes)| (format!("{op}.wasm"), Value::String(b64(bytes))))
        .collect();
    let path = dir.join(name);
    // JSON is YAML.
    std::fs::write(
        &path,
        serde_json::to_string(&json!({ "modules": { "files": files } }))?,
    )?;
    Ok(path.display().to_string())
}

fn deployment_replicas(manifest: &Manifest, name: &str) -> u64 {
    manifest
        .find("Deployment", name)
        .map(|d| d["spec"]["replicas"].as_u64().unwrap_or(1))
        .unwrap_or(0)
}

fn env_of(manifest: &Manifest, deployment: &str, var: &str) -> Option<String> {
    let d = manifest.find("Deployment", deployment)?;
    env_literal(container(d).ok()?, var).map(str::to_string)
}

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
fn every_pod_is_locked_down_labelled_probed_and_annotated() -> Result<()> {
    let manifest = render(
        RELEASE,
        &[
            "--set",
            "mul.replicas=2",
            "--set",
            "add.replicas=1",
            "-f",
            &example("pow.yaml"),
        ],
    )?;
    let deployments = manifest.all("Deployment");
    let components: BTreeSet<&str> = deployments
        .iter()
        .map(|d| {
            pod_metadata(d)["labels"]["app.kubernetes.io/component"]
                .as_str()
                .unwrap_or("")
        })
        .collect();
    assert_eq!(
        components,
        BTreeSet::from(["add", "general", "mul", "planner", "pow"])
    );
    let test_pods: Vec<&Value> = manifest
        .all("Pod")
        .into_iter()
        .filter(|p| p["metadata"]["annotations"]["helm.sh/hook"] == "test")
        .collect();
    assert_eq!(test_pods.len(), 1, "one helm test Pod");

    for object in deployments.iter().chain(&test_pods) {
        let name = name_of(object);
        let spec = pod_spec(object);
        let labels = &pod_metadata(object)["labels"];
        for key in [
            "name",
            "instance",
            "version",
            "managed-by",
            "component",
            "part-of",
        ] {
            assert!(
                labels[format!("app.kubernetes.io/{key}")].is_string(),
                "{name}: label app.kubernetes.io/{key}"
            );
        }
        assert_eq!(labels["app.kubernetes.io/instance"], RELEASE);
        assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        let c = container(object)?;
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
        for kind in ["requests", "limits"] {
            assert!(
                c["resources"][kind]["cpu"].is_string()
                    && c["resources"][kind]["memory"].is_string(),
                "{name}: {kind}"
            );
        }
        if object["kind"] == "Deployment" {
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
            let annotations = &pod_metadata(object)["annotations"];
            let port = c["ports"][0]["containerPort"]
                .as_u64()
                .context("containerPort")?;
            assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}");
            assert_eq!(
                annotations["prometheus.io/port"],
                port.to_string(),
                "{name}"
            );
            assert_eq!(annotations["prometheus.io/path"], "/metrics", "{name}");
            assert!(
                selects(&object["spec"]["selector"]["matchLabels"], labels),
                "{name}: selector matches the pod labels"
            );
            let image = c["image"].as_str().unwrap_or("");
            assert_eq!(
                image, "task-system:0.1.0",
                "{name}: image defaults to repository:appVersion"
            );
        }
    }

    // Workers get long enough to finish their longest task.
    let slow = render(
        RELEASE,
        &[
            "--set",
            "general.workMs=3000-40000",
            "--set",
            "worker.opTimeoutMs=2000",
        ],
    )?;
    let grace =
        pod_spec(slow.get("Deployment", "workers-general")?)["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(0);
    assert!(
        grace >= 42,
        "40 s of work + 2 s of op timeout need a grace period of at least 42 s, got {grace}"
    );
    let grace =
        pod_spec(manifest.get("Deployment", "workers-general")?)["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(0);
    assert!(grace >= 30, "{grace}");

    // Image settings.
    let custom = render(
        RELEASE,
        &[
            "--set",
            "image.repository=reg.example/ts",
            "--set",
            "image.tag=9.9.9",
            "--set",
            "image.pullPolicy=Always",
        ],
    )?;
    for d in custom.all("Deployment") {
        let c = container(d)?;
        assert_eq!(c["image"], "reg.example/ts:9.9.9");
        assert_eq!(c["imagePullPolicy"], "Always");
    }
    Ok(())
}

#[test]
fn values_reach_the_containers_environment() -> Result<()> {
    // (values, deployment, variable, expected literal value)
    let cases: &[(&[&str], &str, &str, &str)] = &[
        (
            &["--set", "planner.tasks=100"],
            "workers-planner",
            "TASKS",
            "100",
        ),
        (
            &["--set", "planner.store=memory"],
            "workers-planner",
            "STORE",
            "memory",
        ),
        (
            &["--set", "planner.queueLimit=77"],
            "workers-planner",
            "QUEUE_LIMIT",
            "77",
        ),
        (
            &["--set", "planner.maxAttempts=9"],
            "workers-planner",
            "MAX_ATTEMPTS",
            "9",
        ),
        (
            &["--set", "planner.resultTtl=7d"],
            "workers-planner",
            "RESULT_TTL",
            "7d",
        ),
        (
            &["--set", "planner.resultLimit=123"],
            "workers-planner",
            "RESULT_LIMIT",
            "123",
        ),
        (
            &["--set", "planner.heartbeatTimeoutMs=4500"],
            "workers-planner",
            "HEARTBEAT_TIMEOUT_MS",
            "4500",
        ),
        (
            &["--set", "planner.dispatchTimeoutMs=120000"],
            "workers-planner",
            "DISPATCH_TIMEOUT_MS",
            "120000",
        ),
        (
            &["--set", "planner.retainFinished=5000"],
            "workers-planner",
            "RETAIN_FINISHED",
            "5000",
        ),
        (
            &["--set", "auth.submitRequiresToken=true"],
            "workers-planner",
            "SUBMIT_REQUIRES_TOKEN",
            "true",
        ),
        (
            &["--set", "planner.port=4000"],
            "workers-planner",
            "PORT",
            "4000",
        ),
        (
            &["--set", "planner.service.port=81"],
            "workers-general",
            "PLANNER",
            "http://workers-planner:81",
        ),
        (
            &["--set", "fullnameOverride=ts"],
            "ts-general",
            "PLANNER",
            "http://ts-planner:3000",
        ),
        (
            &["--set", "general.ops={mul,add}"],
            "workers-general",
            "OPS",
            "mul,add",
        ),
        (
            &["--set", "mul.replicas=1", "--set", "mul.slots=3"],
            "workers-mul",
            "SLOTS",
            "3",
        ),
        (
            &["--set", "worker.slots=5"],
            "workers-general",
            "SLOTS",
            "5",
        ),
        (
            &["--set", "worker.slots=5", "--set", "general.slots=2"],
            "workers-general",
            "SLOTS",
            "2",
        ),
        (
            &["--set", "add.replicas=1", "--set", "add.workMs=3000-12000"],
            "workers-add",
            "WORK_MS",
            "3000-12000",
        ),
        (
            &["--set", "general.workMs=250"],
            "workers-general",
            "WORK_MS",
            "250",
        ),
        (
            &["--set", "worker.workMs=40"],
            "workers-general",
            "WORK_MS",
            "40",
        ),
        (
            &["--set", "worker.opTimeoutMs=2500"],
            "workers-general",
            "OP_TIMEOUT_MS",
            "2500",
        ),
        (
            &["--set", "worker.opMemoryMb=64"],
            "workers-general",
            "OP_MEMORY_MB",
            "64",
        ),
        (
            &["--set", "worker.heartbeatMs=300"],
            "workers-general",
            "HEARTBEAT_MS",
            "300",
        ),
        (
            &["--set", "worker.port=9000"],
            "workers-general",
            "ADDRESS",
            "http://$(POD_IP):9000",
        ),
        (
            &["--set", "worker.port=9000"],
            "workers-general",
            "PORT",
            "9000",
        ),
        (
            &["--set", "logging.format=text"],
            "workers-general",
            "LOG_FORMAT",
            "text",
        ),
        (
            &["--set", "logging.level=debug"],
            "workers-planner",
            "LOG",
            "debug",
        ),
        (
            &["--set", "modules.mountPath=/modules"],
            "workers-general",
            "OPS_DIR",
            "/modules",
        ),
    ];
    for (args, deployment, var, want) in cases {
        let manifest = render(RELEASE, args)?;
        assert_eq!(
            env_of(&manifest, deployment, var).as_deref(),
            Some(*want),
            "{args:?}: {deployment} {var}"
        );
    }
    // The rest of a flavor's settings.
    let manifest = render(
        RELEASE,
        &[
            "--set",
            "mul.replicas=1",
            "--set",
            "mul.nodeSelector.pool=fast",
            "--set",
            "mul.tolerations[0].key=dedicated",
            "--set",
            "mul.tolerations[0].operator=Exists",
            "--set",
            "mul.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=zone",
            "--set",
            "mul.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
            "--set",
            "mul.resources.limits.cpu=2000m",
            "--set",
            "mul.resources.limits.memory=1Gi",
        ],
    )?;
    let mul = manifest.get("Deployment", "workers-mul")?;
    assert_eq!(pod_spec(mul)["nodeSelector"], json!({"pool": "fast"}));
    assert_eq!(pod_spec(mul)["tolerations"][0]["key"], "dedicated");
    assert!(pod_spec(mul)["affinity"]["nodeAffinity"].is_object());
    assert_eq!(
        container(mul)?["resources"]["limits"],
        json!({"cpu": "2000m", "memory": "1Gi"})
    );
    let general = manifest.get("Deployment", "workers-general")?;
    assert!(
        pod_spec(general)["nodeSelector"].is_null(),
        "a flavor's settings stay its own"
    );
    Ok(())
}

#[test]
fn the_token_is_generated_given_or_taken_from_an_existing_secret() -> Result<()> {
    let first = render(RELEASE, &[])?;
    let second = render(RELEASE, &[])?;
    let token = first.secret_value("workers-token", "token")?;
    assert!(
        token.len() >= 32 && token.chars().all(|c| c.is_ascii_alphanumeric()),
        "{token}"
    );
    assert_ne!(
        token,
        second.secret_value("workers-token", "token")?,
        "generated afresh at install"
    );
    for name in ["workers-planner", "workers-general"] {
        assert_eq!(
            token_secret_of(first.get("Deployment", name)?)?,
            ("workers-token".to_string(), "token".to_string()),
            "{name}"
        );
    }

    let given = render(RELEASE, &["--set", "auth.token=s3cret-value"])?;
    assert_eq!(
        given.secret_value("workers-token", "token")?,
        "s3cret-value"
    );

    let existing = render(
        RELEASE,
        &[
            "--set",
            "auth.existingSecret=mine",
            "--set",
            "auth.existingSecretKey=tok",
        ],
    )?;
    assert!(
        existing.all("Secret").is_empty(),
        "no Secret of its own with auth.existingSecret"
    );
    assert_eq!(
        token_secret_of(existing.get("Deployment", "workers-general")?)?,
        ("mine".to_string(), "tok".to_string())
    );
    Ok(())
}

/// The Secret and key a Deployment's container reads its token from: a
/// file (`TOKEN_FILE`) in a read-only Secret volume, never an environment
/// variable.
fn token_secret_of(deployment: &Value) -> Result<(String, String)> {
    let container = container(deployment)?;
    let env: Vec<&Value> = container["env"].as_array().into_iter().flatten().collect();
    ensure!(
        !env.iter().any(|e| e["name"] == "TOKEN"),
        "the token is in the environment"
    );
    let file = env
        .iter()
        .find(|e| e["name"] == "TOKEN_FILE")
        .and_then(|e| e["value"].as_str())
        .context("TOKEN_FILE env")?;
    let mount = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "token")
        .context("token volumeMount")?;
    ensure!(mount["readOnly"] == true, "{mount}");
    let dir = mount["mountPath"].as_str().context("mountPath")?;
    ensure!(
        file.strip_prefix(dir) == Some("/token"),
        "{file} under {dir}"
    );
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "token")
        .context("token volume")?;
    let secret = &volume["secret"];
    ensure!(secret["defaultMode"] == 0o440, "{secret}");
    ensure!(secret["items"][0]["path"] == "token", "{secret}");
    Ok((
        secret["secretName"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        secret["items"][0]["key"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

/// A stand-in for the Kubernetes API server, just enough for `helm template
/// --dry-run=server` (discovery, and GET of the release's objects): it holds
/// one Secret, the token an earlier install generated.
async fn fake_api_server(existing_token: &str) -> Result<(String, tokio::task::JoinHandle<()>)> {
    use axum::extract::Path as UrlPath;
    use axum::http::StatusCode;
    use axum::routing::get;

    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": "workers-token", "namespace": "default",
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": "default"}
        },
        "data": {"token": b64(existing_token.as_bytes())}
    });
    let resources = |group_version: &str, kinds: &[(&str, &str)]| {
        let resources: Vec<Value> = kinds
            .iter()
            .map(|(plural, kind)| json!({"name": plural, "singularName": kind.to_lowercase(), "namespaced": true, "kind": kind, "verbs": ["get", "list"]}))
            .collect();
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources})
    };
    let core = resources(
        "v1",
        &[
            ("secrets", "Secret"),
            ("configmaps", "ConfigMap"),
            ("services", "Service"),
            ("pods", "Pod"),
            ("persistentvolumeclaims", "PersistentVolumeClaim"),
        ],
    );
    let apps = resources("apps/v1", &[("deployments", "Deployment")]);
    let policy = resources(
        "policy/v1",
        &[("poddisruptionbudgets", "PodDisruptionBudget")],
    );
    let networking = resources(
        "networking.k8s.io/v1",
        &[("networkpolicies", "NetworkPolicy")],
    );
    let group_list: Vec<Value> = ["apps", "policy", "networking.k8s.io"]
        .iter()
        .map(|g| {
            json!({
                "name": g, "versions": [{"groupVersion": format!("{g}/v1"), "version": "v1"}],
                "preferredVersion": {"groupVersion": format!("{g}/v1"), "version": "v1"}
            })
        })
        .collect();
    let groups = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": group_list});
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
            ),
        )
    };
    let app = axum::Router::new()
        .route("/version", get(|| async { axum::Json(json!({"major": "1", "minor": "35", "gitVersion": "v1.35.0", "platform": "linux/amd64"})) }))
        .route("/api", get(|| async { axum::Json(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})) }))
        .route("/apis", get(move || async move { axum::Json(groups) }))
        .route("/api/v1", get(move || async move { axum::Json(core) }))
        .route("/apis/apps/v1", get(move || async move { axum::Json(apps) }))
        .route("/apis/policy/v1", get(move || async move { axum::Json(policy) }))
        .route(
            "/apis/networking.k8s.io/v1",
            get(move || async move { axum::Json(networking) }),
        )
        .route(
            "/api/v1/namespaces/{ns}/secrets/{name}",
            get(move |UrlPath((ns, name)): UrlPath<(String, String)>| async move {
                if ns == "default" && name == "workers-token" {
                    (StatusCode::OK, axum::Json(secret))
                } else {
                    not_found()
                }
            }),
        )
        .fallback(move || async move { not_found() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, server))
}

#[tokio::test]
async fn an_upgrade_keeps_the_token_already_in_the_cluster() -> Result<()> {
    let (url, server) = fake_api_server("kept-from-the-first-install").await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )?;
    let chart = chart_dir().display().to_string();
    let kubeconfig = kubeconfig.display().to_string();
    let args = [
        "template",
        RELEASE,
        &chart,
        "--namespace",
        "default",
        "--dry-run=server",
        "--disable-openapi-validation",
        "--kubeconfig",
        &kubeconfig,
    ];
    let output = helm_async(&args).await?;
    ensure!(
        output.status.success(),
        "helm template --dry-run=server: {}",
        describe(&output)
    );
    let manifest = Manifest::parse(&String::from_utf8(output.stdout)?)?;
    assert_eq!(
        manifest.secret_value("workers-token", "token")?,
        "kept-from-the-first-install"
    );
    // Pods do not restart for an unchanged token: the checksum is the same as
    // for that token given explicitly.
    let explicit = render(
        RELEASE,
        &["--set", "auth.token=kept-from-the-first-install"],
    )?;
    let checksum = |m: &Manifest| {
        pod_metadata(m.get("Deployment", "workers-general").unwrap())["annotations"]["checksum/token"].clone()
    };
    assert_eq!(checksum(&manifest), checksum(&explicit));
    assert!(checksum(&manifest).is_string());
    // An explicitly given token still wins.
    let mut with_token = args.to_vec();
    with_token.extend(["--set", "auth.token=new-one"]);
    let output = helm_async(&with_token).await?;
    ensure!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        Manifest::parse(&String::from_utf8(output.stdout)?)?
            .secret_value("workers-token", "token")?,
        "new-one"
    );
    server.abort();
    Ok(())
}

#[test]
fn modules_come_from_a_config_map_mounted_as_a_directory_and_a_change_does_not_roll_pods()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let pow = std::fs::read(fixture("pow"))?;
    let mul_v2 = std::fs::read(fixture("mul_v2"))?;
    let v1 = modules_values(dir.path(), "v1.yaml", &[("pow", &pow)])?;
    let v2 = modules_values(dir.path(), "v2.yaml", &[("pow", &pow), ("mul", &mul_v2)])?;
    let common = [
        "--set",
        "auth.token=fixed",
        "--set",
        "mul.replicas=1",
        "--set",
        "extraFlavors.pow.replicas=1",
        "--set",
        "extraFlavors.pow.ops={pow}",
    ];
    let first = render(RELEASE, &[&common[..], &["-f", &v1]].concat())?;
    let second = render(RELEASE, &[&common[..], &["-f", &v2]].concat())?;

    let files = first.config_map_files("workers-modules")?;
    assert_eq!(files.keys().collect::<Vec<_>>(), vec!["pow.wasm"]);
    assert_eq!(
        files["pow.wasm"], pow,
        "binaryData holds the module byte for byte"
    );
    assert_eq!(
        second.config_map_files("workers-modules")?["mul.wasm"],
        mul_v2
    );

    for deployment in first
        .all("Deployment")
        .into_iter()
        .filter(|d| name_of(d) != "workers-planner")
    {
        let name = name_of(deployment);
        let c = container(deployment)?;
        let mounts = c["volumeMounts"].as_array().context("volumeMounts")?;
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"] == "/ops")
            .with_context(|| format!("{name}: /ops mount"))?;
        assert!(
            mount.get("subPath").is_none(),
            "{name}: a subPath mount never sees ConfigMap updates"
        );
        assert_eq!(env_literal(c, "OPS_DIR"), Some("/ops"), "{name}");
        let volume = pod_spec(deployment)["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .context("the mount's volume")?;
        assert_eq!(volume["configMap"]["name"], "workers-modules", "{name}");
        // A changed module reaches running pods; it must not roll them.
        let after = second.get("Deployment", name)?;
        assert_eq!(
            deployment["spec"]["template"], after["spec"]["template"],
            "{name}: pod template changed with the modules"
        );
    }

    let existing = render(RELEASE, &["--set", "modules.existingConfigMap=my-ops"])?;
    assert!(existing.find("ConfigMap", "workers-modules").is_none());
    let volumes = &pod_spec(existing.get("Deployment", "workers-general")?)["volumes"];
    assert!(
        volumes
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["configMap"]["name"] == "my-ops")
    );
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

/// The chart rendered with a mix of flavors (and a `pow` flavor whose
/// module comes from the modules ConfigMap), every Deployment run as local
/// processes: the planner sees each worker with the right flavor, ops and
/// slots, and every task comes back right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_chart_renders_runs_and_computes() -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let pow = std::fs::read(fixture("pow"))?;
    let modules = modules_values(scratch.path(), "modules.yaml", &[("pow", &pow)])?;
    let values: &[&str] = &[
        "--set",
        "general.replicas=2",
        "--set",
        "mul.replicas=3",
        "--set",
        "add.replicas=2",
        "--set",
        "mul.slots=2",
        "--set",
        "extraFlavors.pow.replicas=1",
        "--set",
        "extraFlavors.pow.ops={pow}",
        "-f",
        &modules,
        // Every task takes at least 100 ms, mul workers' at least 200 ms:
        // the task timings show WORK_MS reached the workers.
        "--set",
        "worker.workMs=100",
        "--set",
        "mul.workMs=200",
        "--set",
        "planner.tasks=6",
    ];
    let manifest = render(RELEASE, values)?;
    let token = manifest.secret_value("workers-token", "token")?;
    let mut cluster = LocalCluster::new(manifest.clone(), "default")?;
    cluster.start_deployments().await?;

    let expected_flavors: BTreeMap<&str, (usize, Vec<&str>, u32)> = BTreeMap::from([
        ("general", (2, vec!["add", "mul"], 1)),
        ("mul", (3, vec!["mul"], 2)),
        ("add", (2, vec!["add"], 1)),
        ("pow", (1, vec!["pow"], 1)),
    ]);
    let planner_url = cluster.service_url("workers-planner", 3000)?;
    assert_eq!(
        cluster.pods.len(),
        1 + 2 + 3 + 2 + 1,
        "one process per replica"
    );
    let http = reqwest::Client::new();
    let workers: Vec<WorkerView> =
        poll(Duration::from_secs(30), "8 workers registered", || async {
            let list: Vec<WorkerView> = http
                .get(format!("{planner_url}/workers"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (list.len() == 8).then_some(list)
        })
        .await?;

    let mut by_flavor: BTreeMap<String, Vec<&WorkerView>> = BTreeMap::new();
    for worker in &workers {
        by_flavor
            .entry(worker.flavor.clone())
            .or_default()
            .push(worker);
    }
    for (flavor, (count, ops, slots)) in &expected_flavors {
        let found = by_flavor
            .get(*flavor)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert_eq!(found.len(), *count, "{flavor} workers: {workers:#?}");
        for worker in found {
            let names: Vec<&str> = worker
                .ops
                .as_ref()
                .context("ops")?
                .iter()
                .map(|o| o.name.as_str())
                .collect();
            assert_eq!(&names, ops, "{}", worker.id);
            assert_eq!(worker.slots, *slots, "{}", worker.id);
            // WORKER_ID is the pod name, ADDRESS the port the process really listens on.
            let pod = cluster
                .pods
                .iter()
                .find(|p| p.name == worker.id)
                .with_context(|| format!("no pod named {}", worker.id))?;
            assert_eq!(pod.component, *flavor);
            assert_eq!(
                worker.url,
                format!("http://127.0.0.1:{}", pod.service.addr.port()),
                "{}",
                worker.id
            );
        }
    }
    let pow_digest = hex::encode(Sha256::digest(&pow));
    let pow_op = by_flavor["pow"][0].ops.as_ref().context("ops")?;
    assert_eq!(
        pow_op[0].digest, pow_digest,
        "pow is the module from the ConfigMap"
    );

    // TOKEN reached the planner: registering without it is refused, while the
    // workers (same Secret) registered.
    let refused = http
        .post(format!("{planner_url}/workers"))
        .json(&json!({"id": "intruder", "url": "http://127.0.0.1:1", "slots": 1, "ops": []}))
        .send()
        .await?;
    assert_eq!(refused.status(), 401);
    let with_token = http
        .post(format!("{planner_url}/workers"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await?;
    assert!(
        with_token.status().is_client_error() && with_token.status() != 401,
        "the Secret's token is the planner's: {}",
        with_token.status()
    );

    // DATA_DIR is the planner's data volume.
    let planner_pods = cluster.pods_of("workers-planner");
    let data = &planner_pods[0].mounts["/data"];
    assert!(
        std::fs::read_dir(data)?.next().is_some(),
        "the durable store lives in the data volume {}",
        data.display()
    );

    // Tasks: mul, add and pow, all must come back right.
    let mut submission = Vec::new();
    for i in 0..16i64 {
        submission.push(json!({"op": "mul", "args": [i, i + 3]}));
        submission.push(json!({"op": "add", "args": [i * 1000, -i]}));
    }
    for i in 0..4i64 {
        submission.push(json!({"op": "pow", "args": [i + 2, 3]}));
    }
    let response = http
        .post(format!("{planner_url}/tasks"))
        .json(&submission)
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let ids: Vec<TaskId> = serde_json::from_value(response.json::<Value>().await?["ids"].clone())?;
    let mut views = Vec::new();
    for id in &ids {
        let view: TaskView = poll(Duration::from_secs(60), &format!("task {id}"), || async {
            let view: TaskView = http
                .get(format!("{planner_url}/tasks/{id}"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            view.status.is_final().then_some(view)
        })
        .await?;
        views.push(view);
    }
    let flavor_of: BTreeMap<&str, &str> = workers
        .iter()
        .map(|w| (w.id.as_str(), w.flavor.as_str()))
        .collect();
    for (task, view) in submission.iter().zip(&views) {
        let op = task["op"].as_str().unwrap_or("");
        let args: Vec<i64> = serde_json::from_value(task["args"].clone())?;
        let want = if op == "pow" {
            args[0].checked_pow(args[1] as u32)
        } else {
            expected(op, &args)
        };
        assert_eq!(view.status, TaskStatus::Done, "{task}: {view:?}");
        assert_eq!(view.result, want, "{task}");
        let worker = view.worker.as_deref().unwrap_or("");
        let flavor = flavor_of.get(worker).copied().unwrap_or("?");
        assert!(
            expected_flavors[flavor].1.contains(&op),
            "{op} ran on {worker} ({flavor})"
        );
        let took = view
            .finished_at_ms
            .unwrap_or(0)
            .saturating_sub(view.started_at_ms.unwrap_or(0));
        let floor = if flavor == "mul" { 200 } else { 100 };
        assert!(
            took + 1 >= floor,
            "{task} on a {flavor} worker took {took} ms; WORK_MS says at least {floor}"
        );
    }
    assert!(
        views
            .iter()
            .any(|v| flavor_of.get(v.worker.as_deref().unwrap_or("")) == Some(&"mul")),
        "specialists take mul tasks"
    );

    // The planner's TASKS random tasks ran too.
    let stats: Value = poll(Duration::from_secs(30), "all tasks done", || async {
        let stats: Value = http
            .get(format!("{planner_url}/stats"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (stats["by_status"]["done"] == json!(ids.len() + 6)).then_some(stats)
    })
    .await?;
    for status in ["failed", "queued", "running", "cancelled"] {
        assert!(
            stats["by_status"][status].as_u64().unwrap_or(0) == 0,
            "{stats}"
        );
    }

    // `helm test`: the rendered test Pod's script, run here, passes.
    let test_pod = manifest.get("Pod", "workers-test-submit")?;
    let output = cluster
        .run_pod(test_pod, "workers-test-submit", Duration::from_secs(60))
        .await?;
    ensure!(
        output.status.success(),
        "the helm test Pod failed: {}",
        describe(&output)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("mul(6, 7): HTTP 200") && stdout.contains("add(2, 3): HTTP 200"),
        "{stdout}"
    );

    // A changed modules ConfigMap, applied as the kubelet would, hot-swaps
    // mul on the running workers; no process restarts.
    let mul_v2 = std::fs::read(fixture("mul_v2"))?;
    let changed = modules_values(
        scratch.path(),
        "modules-v2.yaml",
        &[("pow", &pow), ("mul", &mul_v2)],
    )?;
    let values_v2: Vec<&str> = values
        .iter()
        .copied()
        .chain(["-f", changed.as_str()])
        .collect();
    let upgraded = render(RELEASE, &values_v2)?;
    let pids: Vec<Option<u32>> = cluster.pods.iter().map(|p| p.service.child.id()).collect();
    let updated = cluster.update_config_map(upgraded.get("ConfigMap", "workers-modules")?)?;
    assert_eq!(updated, 8, "every worker mounts the modules");
    let v2_digest = hex::encode(Sha256::digest(&mul_v2));
    poll(
        Duration::from_secs(30),
        "every mul worker to offer mul v2",
        || async {
            let list: Vec<WorkerView> = http
                .get(format!("{planner_url}/workers"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let muls: Vec<&str> = list
                .iter()
                .flat_map(|w| w.ops.iter().flatten())
                .filter(|o| o.name == "mul")
                .map(|o| o.digest.as_str())
                .collect();
            (muls.len() == 5 && muls.iter().all(|d| *d == v2_digest)).then_some(())
        },
    )
    .await?;
    let answer: Value = http
        .post(format!("{planner_url}/tasks?wait=true"))
        .json(&json!({"op": "mul", "args": [6, 7]}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(answer["result"], 1_000_042, "mul v2 answers: {answer}");
    for (pod, pid) in cluster.pods.iter_mut().zip(pids) {
        assert_eq!(pod.service.child.id(), pid, "{} restarted", pod.name);
        assert!(
            pod.service.child.try_wait()?.is_none(),
            "{} exited",
            pod.name
        );
    }
    Ok(())
}

/// The `helm test` Pod must fail when the planner answers a wrong result or
/// no result: run its script against a fake planner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helm_test_pod_fails_unless_the_right_result_comes_back() -> Result<()> {
    use axum::http::StatusCode;
    let manifest = render(
        RELEASE,
        &[
            "--set",
            "general.replicas=0",
            "--set",
            "mul.replicas=1",
            "--set",
            "tests.timeoutSeconds=5",
        ],
    )?;
    let pod = manifest.get("Pod", "workers-test-submit")?.clone();
    let script = container(&pod)?["args"][0]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        script.contains("submit mul 6 7 42") && !script.contains("submit add"),
        "tests only the ops offered: {script}"
    );

    for (status, body, passes) in [
        (
            StatusCode::OK,
            json!({"id": 1, "status": "done", "result": 42}),
            true,
        ),
        (
            StatusCode::OK,
            json!({"id": 1, "status": "done", "result": 41}),
            false,
        ),
        (
            StatusCode::OK,
            json!({"id": 1, "status": "done", "result": 420}),
            false,
        ),
        (
            StatusCode::ACCEPTED,
            json!({"id": 1, "status": "queued"}),
            false,
        ),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"id": 1, "status": "failed", "error": "boom"}),
            false,
        ),
    ] {
        let app = axum::Router::new().route(
            "/tasks",
            axum::routing::post(move || async move { (status, axum::Json(body.clone())) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut cluster = LocalCluster::new(manifest.clone(), "default")?;
        cluster.set_service("workers-planner", 3000, port);
        let output = cluster
            .run_pod(&pod, "workers-test-submit", Duration::from_secs(30))
            .await?;
        assert_eq!(
            output.status.success(),
            passes,
            "answer {status} must make the test {}: {}",
            if passes { "pass" } else { "fail" },
            describe(&output)
        );
        server.abort();
    }
    Ok(())
}

/// Bytes of a Kubernetes quantity (`2Gi`, `512Mi`, `1G`, `1000`).
fn quantity_bytes(quantity: &str) -> Result<u64> {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(number) = quantity.strip_suffix(suffix) {
            return Ok(number.parse::<u64>()? * factor);
        }
    }
    Ok(quantity.parse()?)
}

/// The default claim holds what retention keeps (issue 15): `RESULT_LIMIT`
/// finished tasks and a full queue at about 170 B each on disk (measured:
/// BENCHMARKS.md, "Steady state"), plus the WAL at its size limit. The
/// store is persistent by default and deletes finished tasks after 24 h.
#[test]
fn the_default_claim_holds_what_retention_keeps_and_a_full_queue() -> Result<()> {
    const BYTES_PER_TASK_ON_DISK: u64 = 170;
    const WAL_LIMIT: u64 = 64 << 20;
    let manifest = render("workers", &[])?;
    let claim = manifest.get("PersistentVolumeClaim", "workers-planner-data")?;
    let size = quantity_bytes(
        claim["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .context("no storage request")?,
    )?;
    let number = |name: &str| -> Result<u64> {
        env_of(&manifest, "workers-planner", name)
            .with_context(|| format!("no {name}"))?
            .parse()
            .with_context(|| format!("{name} is not a number"))
    };
    let (kept, queued) = (number("RESULT_LIMIT")?, number("QUEUE_LIMIT")?);
    assert!(kept > 0, "the store has a count cap by default");
    let needed = (kept + queued) * BYTES_PER_TASK_ON_DISK + WAL_LIMIT;
    assert!(
        size >= needed,
        "a {size} B claim for {kept} finished + {queued} queued tasks needing {needed} B"
    );
    assert_eq!(
        env_of(&manifest, "workers-planner", "RESULT_TTL").as_deref(),
        Some("24h")
    );
    let volumes = &pod_spec(manifest.get("Deployment", "workers-planner")?)["volumes"];
    assert!(
        volumes
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["persistentVolumeClaim"]["claimName"] == "workers-planner-data"),
        "the data dir is on the claim by default: {volumes}"
    );
    Ok(())
}

/// Issue 12: by default worker pods accept connections only from planner
/// pods, on their port; the planner only on its API port.
#[test]
fn network_policies_let_only_the_planner_reach_the_workers() -> Result<()> {
    let manifest = render(RELEASE, &[])?;
    let policies = manifest.all("NetworkPolicy");
    assert_eq!(policies.len(), 2, "on by default");
    let labels_of = |deployment: &str| -> Result<Value> {
        Ok(
            manifest.get("Deployment", deployment)?["spec"]["template"]["metadata"]["labels"]
                .clone(),
        )
    };
    let selects = |selector: &Value, labels: &Value| {
        selector["matchLabels"]
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v))
    };
    let (planner, general) = (labels_of("workers-planner")?, labels_of("workers-general")?);
    let workers = manifest.get("NetworkPolicy", "workers-workers")?;
    assert!(selects(&workers["spec"]["podSelector"], &general));
    assert!(!selects(&workers["spec"]["podSelector"], &planner));
    let rule = &workers["spec"]["ingress"][0];
    let from = rule["from"].as_array().context("from")?;
    assert_eq!(from.len(), 1, "{from:?}");
    assert!(selects(&from[0]["podSelector"], &planner));
    assert!(!selects(&from[0]["podSelector"], &general));
    let worker_port =
        container(manifest.get("Deployment", "workers-general")?)?["ports"][0]["containerPort"]
            .clone();
    assert_eq!(rule["ports"][0]["port"], worker_port);

    let planner_policy = manifest.get("NetworkPolicy", "workers-planner")?;
    assert!(selects(&planner_policy["spec"]["podSelector"], &planner));
    let rule = &planner_policy["spec"]["ingress"][0];
    assert!(rule.get("from").is_none(), "anyone may reach the API port");
    assert_eq!(rule["ports"].as_array().map(Vec::len), Some(1));
    assert_eq!(rule["ports"][0]["port"], 3000);

    let scraped = render(
        RELEASE,
        &[
            "--set",
            "networkPolicy.workerIngressFrom[0].namespaceSelector.matchLabels.team=monitoring",
        ],
    )?;
    let from = &scraped.get("NetworkPolicy", "workers-workers")?["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().map(Vec::len), Some(2), "{from}");
    let off = render(RELEASE, &["--set", "networkPolicy.enabled=false"])?;
    assert!(off.all("NetworkPolicy").is_empty());
    Ok(())
}

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
