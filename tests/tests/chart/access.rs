//! Client access (issue 12): `auth.submitRequiresToken`,
//! `auth.readRequiresToken` and a client-only token from an existing Secret,
//! rendered as the planner's environment and a file mount, and enforced by
//! the planner run as rendered.

use anyhow::{Context, Result};
use e2e::chart::{LocalCluster, container, env_literal, pod_spec, render};
use serde_json::{Value, json};

use super::{RELEASE, helm_test_passes};

const CLIENT_ACCESS: &[&str] = &[
    "--set",
    "auth.submitRequiresToken=true",
    "--set",
    "auth.readRequiresToken=true",
    "--set",
    "auth.clientToken.existingSecret=workers-client",
    "--set",
    "auth.clientToken.existingSecretKey=secret",
];

/// The file a container reads its client token from, checked to be a
/// read-only mount of `secret`'s `key` (0440), never an env value.
fn client_token_file(deployment: &Value, secret: &str, key: &str) -> Result<String> {
    let c = container(deployment)?;
    assert_eq!(env_literal(c, "CLIENT_TOKEN"), None, "never an env value");
    let file = env_literal(c, "CLIENT_TOKEN_FILE").context("CLIENT_TOKEN_FILE")?;
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "client-token")
        .context("client-token volumeMount")?;
    assert_eq!(mount["readOnly"], true, "{mount}");
    let dir = mount["mountPath"].as_str().context("mountPath")?;
    assert_eq!(file.strip_prefix(dir), Some("/token"), "{file} under {dir}");
    // Beside the shared token's mount, not inside that volume.
    for other in c["volumeMounts"].as_array().into_iter().flatten() {
        let path = other["mountPath"].as_str().unwrap_or("");
        assert!(
            other["name"] == "client-token" || !dir.starts_with(&format!("{path}/")),
            "{dir} is inside the {} mount",
            other["name"]
        );
    }
    let volume = pod_spec(deployment)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "client-token")
        .context("client-token volume")?;
    assert_eq!(volume["secret"]["secretName"], secret);
    assert_eq!(volume["secret"]["defaultMode"], 0o440);
    assert_eq!(
        volume["secret"]["items"],
        json!([{"key": key, "path": "token"}])
    );
    Ok(file.to_string())
}

#[test]
fn client_access_values_reach_the_planner_as_env_and_a_mounted_secret() -> Result<()> {
    let defaults = render(RELEASE, &[])?;
    let planner = container(defaults.get("Deployment", "workers-planner")?)?;
    assert_eq!(env_literal(planner, "SUBMIT_REQUIRES_TOKEN"), Some("false"));
    assert_eq!(env_literal(planner, "READ_REQUIRES_TOKEN"), Some("false"));
    assert_eq!(env_literal(planner, "CLIENT_TOKEN_FILE"), None);
    assert!(
        !defaults.text.contains("client-token"),
        "no client token volume unless asked for"
    );

    let with_monitor: Vec<&str> = CLIENT_ACCESS
        .iter()
        .copied()
        .chain(["--set", "metrics.serviceMonitor.enabled=true"])
        .collect();
    let manifest = render(RELEASE, &with_monitor)?;
    let planner = manifest.get("Deployment", "workers-planner")?;
    let c = container(planner)?;
    assert_eq!(env_literal(c, "SUBMIT_REQUIRES_TOKEN"), Some("true"));
    assert_eq!(env_literal(c, "READ_REQUIRES_TOKEN"), Some("true"));
    client_token_file(planner, "workers-client", "secret")?;
    // Workers never get it: it is a client's, not theirs.
    for worker in manifest
        .all("Deployment")
        .into_iter()
        .filter(|d| d["metadata"]["name"] != "workers-planner")
    {
        let c = container(worker)?;
        assert_eq!(env_literal(c, "CLIENT_TOKEN_FILE"), None);
    }
    // The planner's /metrics needs a token now: the ServiceMonitor presents
    // the client token.
    let monitor = manifest.get("ServiceMonitor", "workers")?;
    assert_eq!(
        monitor["spec"]["endpoints"][0]["authorization"],
        json!({"type": "Bearer", "credentials": {"name": "workers-client", "key": "secret"}})
    );
    // Reads protected without a client token: it presents the shared one.
    let shared = render(
        RELEASE,
        &[
            "--set",
            "auth.readRequiresToken=true",
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
    )?;
    assert_eq!(
        shared.get("ServiceMonitor", "workers")?["spec"]["endpoints"][0]["authorization"]["credentials"],
        json!({"name": "workers-token", "key": "token"})
    );
    Ok(())
}

/// The planner run as rendered with client access on: without a token,
/// submitting and reading are refused with 401; the client token from the
/// Secret opens them and nothing else; the `helm test` Pod still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_rendered_with_client_access_refuses_clients_without_the_token() -> Result<()> {
    let client_token = "a-client-only-token-0123456789";
    let manifest = render(RELEASE, CLIENT_ACCESS)?;
    let shared = manifest.secret_value("workers-token", "token")?;
    let mut cluster = LocalCluster::new(manifest.clone(), "default")?;
    cluster.create_secret("workers-client", &[("secret", client_token)])?;
    cluster.start_deployments().await?;
    let planner = cluster.service_url("workers-planner", 3000)?;
    let file = &cluster.pods_of("workers-planner")[0].env["CLIENT_TOKEN_FILE"];
    assert_eq!(std::fs::read_to_string(file)?, client_token);

    let http = reqwest::Client::new();
    let task = json!({"op": "mul", "args": [6, 7]});
    let submit = |token: Option<&str>| {
        let request = http.post(format!("{planner}/tasks?wait=true")).json(&task);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    let read = |path: &str, token: Option<&str>| {
        let request = http.get(format!("{planner}{path}"));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };

    let refused = submit(None).send().await?;
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await?;
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(submit(Some("wrong")).send().await?.status(), 401);
    for path in ["/tasks", "/workers", "/ops", "/stats", "/metrics"] {
        assert_eq!(read(path, None).send().await?.status(), 401, "{path}");
    }
    // Probes stay open: the kubelet presents no token.
    assert_eq!(read("/readyz", None).send().await?.status(), 200);

    let answer: Value = submit(Some(client_token)).send().await?.json().await?;
    assert_eq!(answer["result"], 42, "{answer}");
    for path in ["/tasks", "/workers", "/ops", "/stats", "/metrics"] {
        let status = read(path, Some(client_token)).send().await?.status();
        assert_eq!(status, 200, "{path} with the client token");
    }
    // The shared token opens the client routes too.
    let answer: Value = submit(Some(&shared)).send().await?.json().await?;
    assert_eq!(answer["result"], 42, "{answer}");
    // The client token never opens worker registration or rollouts.
    let hijack = http
        .post(format!("{planner}/workers"))
        .bearer_auth(client_token)
        .json(&json!({"id": "intruder", "url": "http://127.0.0.1:9", "slots": 1, "ops": []}))
        .send()
        .await?;
    assert_eq!(hijack.status(), 401);
    let rollout = http
        .put(format!("{planner}/ops/mul"))
        .bearer_auth(client_token)
        .body(b"\0asm".to_vec())
        .send()
        .await?;
    assert_eq!(rollout.status(), 401);

    helm_test_passes(&cluster).await?;
    Ok(())
}
