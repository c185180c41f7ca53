//! `helm upgrade`: what an earlier install left in the cluster is kept.

use super::{RELEASE, b64};
use anyhow::{Result, ensure};
use e2e::chart::{Manifest, chart_dir, describe, helm_async, pod_metadata, render};
use serde_json::{Value, json};

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
