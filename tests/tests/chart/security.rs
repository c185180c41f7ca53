//! Locked-down pods, the token as a file from a Secret, and the
//! NetworkPolicies.

use std::collections::BTreeSet;

use super::{RELEASE, example};
use anyhow::{Context, Result, ensure};
use e2e::chart::{container, name_of, pod_metadata, pod_spec, render, selects};
use serde_json::{Value, json};

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
