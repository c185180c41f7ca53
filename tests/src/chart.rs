//! Helpers of the Helm chart tests: the real `helm` and `kubernetes-validate`
//! that `scripts/install-tools` puts in `.tools/`, parsing what
//! `helm template` renders, and running rendered Deployments as local
//! processes ([`LocalCluster`]).
//!
//! # How a rendered pod becomes a local process
//!
//! The container's `command` and `args` are executed as written, except that
//! the image's `/usr/local/bin/<name>` is this workspace's
//! `target/release/<name>` (other absolute paths, such as the test Pod's
//! `/bin/sh`, are this machine's). The process gets exactly the container's
//! environment (`env_clear`, then `envFrom` and `env` resolved the way the
//! kubelet does, `$(VAR)` expansion included, plus `HOSTNAME` = the pod name),
//! with these mappings from the cluster to this machine:
//!
//! - downward API: `status.podIP` and `status.hostIP` are `127.0.0.1`,
//!   `metadata.name` is `<deployment>-<replica>`, `metadata.namespace` the
//!   namespace rendered for;
//! - `secretKeyRef` / `configMapKeyRef` / `envFrom`: read from the rendered
//!   Secret or ConfigMap (a missing one is an error);
//! - ports: every declared `containerPort` gets a free local port, chosen
//!   before start. `PORT` (the binaries' listen port) must equal a declared
//!   containerPort and becomes its local port, and `127.0.0.1:<containerPort>`
//!   in any value (the pod's own address, e.g. `ADDRESS` after `$(POD_IP)` is
//!   expanded) becomes `127.0.0.1:<local port>`. The process must then
//!   announce that very port;
//! - Services: `<service>[.<namespace>[.svc[.cluster.local]]]:<port>` in any
//!   value becomes `127.0.0.1:<local port>` of the one pod the Service's
//!   selector picks, through its `targetPort`; so pods a Service selects are
//!   started first;
//! - volumes: each `volumeMount` is a directory of this test's temp dir
//!   (`emptyDir` per pod, a `persistentVolumeClaim` per claim, a `configMap`
//!   or `secret` filled from the rendered object in the kubelet's layout:
//!   timestamped directory, `..data` symlink, one symlink per key), and a value
//!   that is a mount path or lies under one is rewritten to that directory.
//!
//! Anything else stays as rendered, so a value the chart does not wire through
//! (a wrong host, port or path) reaches the process unchanged and breaks it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use launcher::process::{Service, sibling_binary};
use serde::Deserialize;
use serde_json::Value;

/// The workspace root (holding `chart/` and `.tools/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn chart_dir() -> PathBuf {
    workspace_root().join("chart")
}

fn tool(relative: &str) -> Result<PathBuf> {
    let path = workspace_root().join(relative);
    if !path.exists() {
        bail!(
            "{} is missing: run scripts/install-tools (it installs helm, kubectl and kubernetes-validate into .tools/)",
            path.display()
        );
    }
    Ok(path)
}

/// `.tools/bin/helm`.
pub fn helm_path() -> Result<PathBuf> {
    tool(".tools/bin/helm")
}

/// `.tools/venv/bin/kubernetes-validate`.
pub fn kubernetes_validate_path() -> Result<PathBuf> {
    tool(".tools/venv/bin/kubernetes-validate")
}

/// Runs `helm` with `args` in the workspace root; the status is not checked.
pub fn helm(args: &[&str]) -> Result<Output> {
    std::process::Command::new(helm_path()?)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .context("running helm")
}

/// Like [`helm`], without blocking the async runtime (for a test that
/// serves something helm talks to).
pub async fn helm_async(args: &[&str]) -> Result<Output> {
    tokio::process::Command::new(helm_path()?)
        .args(args)
        .current_dir(workspace_root())
        .kill_on_drop(true)
        .output()
        .await
        .context("running helm")
}

/// Stdout and stderr of a command, for failure messages.
pub fn describe(output: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}\n--- stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `helm template <release> chart/ --namespace default <args>`, parsed.
pub fn render(release: &str, args: &[&str]) -> Result<Manifest> {
    let chart = chart_dir();
    let mut all = vec![
        "template",
        release,
        chart.to_str().context("chart path")?,
        "--namespace",
        "default",
    ];
    all.extend_from_slice(args);
    let output = helm(&all)?;
    ensure!(
        output.status.success(),
        "helm {} failed: {}",
        all.join(" "),
        describe(&output)
    );
    Manifest::parse(&String::from_utf8(output.stdout)?)
}

/// The objects of a rendered chart.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub text: String,
    pub objects: Vec<Value>,
}

impl Manifest {
    /// Parses a multi-document YAML stream (empty documents are skipped).
    pub fn parse(text: &str) -> Result<Self> {
        let mut objects = Vec::new();
        for document in serde_yaml_ng::Deserializer::from_str(text) {
            let value = Value::deserialize(document).context("rendered YAML does not parse")?;
            if !value.is_null() {
                objects.push(value);
            }
        }
        Ok(Self {
            text: text.to_string(),
            objects,
        })
    }

    pub fn all(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && name_of(o) == name)
    }

    pub fn get(&self, kind: &str, name: &str) -> Result<&Value> {
        self.find(kind, name).with_context(|| {
            let names: Vec<String> = self
                .objects
                .iter()
                .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or("?"), name_of(o)))
                .collect();
            format!("no {kind} named {name} rendered; rendered: {names:?}")
        })
    }

    /// The value of `key` in the rendered Secret `name` (`data`, base64, or `stringData`).
    pub fn secret_value(&self, name: &str, key: &str) -> Result<String> {
        let secret = self.get("Secret", name)?;
        if let Some(data) = secret["data"].get(key).and_then(Value::as_str) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .context("Secret data is not base64")?;
            return Ok(String::from_utf8(bytes)?);
        }
        secret["stringData"][key]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("Secret {name} has no key {key}"))
    }

    /// Files of the rendered ConfigMap `name`: `data` as is, `binaryData` decoded.
    pub fn config_map_files(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let map = self.get("ConfigMap", name)?;
        data_files(map, "data", "binaryData")
    }
}

fn data_files(
    object: &Value,
    text_key: &str,
    binary_key: &str,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    if let Some(data) = object[text_key].as_object() {
        for (key, value) in data {
            let text = value
                .as_str()
                .with_context(|| format!("{text_key}.{key} is not a string"))?;
            let bytes = if object["kind"] == "Secret" {
                base64::engine::general_purpose::STANDARD.decode(text)?
            } else {
                text.as_bytes().to_vec()
            };
            files.insert(key.clone(), bytes);
        }
    }
    if let Some(data) = object[binary_key].as_object() {
        for (key, value) in data {
            let text = value
                .as_str()
                .with_context(|| format!("{binary_key}.{key} is not a string"))?;
            files.insert(
                key.clone(),
                base64::engine::general_purpose::STANDARD.decode(text.trim())?,
            );
        }
    }
    Ok(files)
}

pub fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

/// The pod spec of a Deployment (its template) or of a Pod.
pub fn pod_spec(object: &Value) -> &Value {
    if object["kind"] == "Pod" {
        &object["spec"]
    } else {
        &object["spec"]["template"]["spec"]
    }
}

/// The pod template's metadata of a Deployment, or a Pod's metadata.
pub fn pod_metadata(object: &Value) -> &Value {
    if object["kind"] == "Pod" {
        &object["metadata"]
    } else {
        &object["spec"]["template"]["metadata"]
    }
}

/// The only container of a pod spec.
pub fn container(object: &Value) -> Result<&Value> {
    let containers = pod_spec(object)["containers"]
        .as_array()
        .context("no containers")?;
    ensure!(
        containers.len() == 1,
        "{} has {} containers; expected one",
        name_of(object),
        containers.len()
    );
    Ok(&containers[0])
}

/// The literal `value` of env var `name` of a container, if it has one.
pub fn env_literal<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// True when every `selector` label is among `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| &labels[k] == v))
}

/// A port on 127.0.0.1 no one listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Expands `$(VAR)` with the variables defined so far, as the kubelet does:
/// `$$` is a literal `$`, and an undefined reference stays as written.
pub fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[at..at + 2 + end + 1]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A declared container port and the local port standing in for it.
#[derive(Debug, Clone)]
pub struct PortMap {
    pub name: Option<String>,
    pub container: u16,
    pub local: u16,
}

/// A Deployment replica running as a local process.
pub struct LocalPod {
    pub deployment: String,
    pub name: String,
    /// Its `app.kubernetes.io/component` label.
    pub component: String,
    /// The environment it was started with, after the mappings.
    pub env: BTreeMap<String, String>,
    pub ports: Vec<PortMap>,
    /// Mount path -> the local directory standing in for it.
    pub mounts: BTreeMap<String, PathBuf>,
    pub service: Service,
}

impl LocalPod {
    pub fn local_port(&self, container_port: &Value) -> Result<u16> {
        let found = match container_port {
            Value::String(name) => self.ports.iter().find(|p| p.name.as_deref() == Some(name)),
            Value::Number(n) => self
                .ports
                .iter()
                .find(|p| Some(p.container as u64) == n.as_u64()),
            _ => None,
        };
        found.map(|p| p.local).with_context(|| {
            format!(
                "pod {} declares no container port {container_port}",
                self.name
            )
        })
    }

    pub fn url(&self) -> String {
        self.service.url()
    }
}

/// A Service, once the pod it selects runs: the host names it answers to and
/// the local address standing in for `<service>:<port>`.
struct LocalService {
    hosts: Vec<String>,
    port: u16,
    local: u16,
}

/// Rendered workloads run as local processes under a temp dir; everything is
/// killed when it is dropped.
pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub namespace: String,
    pub manifest: Manifest,
    pub pods: Vec<LocalPod>,
    services: Vec<LocalService>,
    http: reqwest::Client,
}

impl LocalCluster {
    pub fn new(manifest: Manifest, namespace: &str) -> Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new().prefix("chart-e2e-").tempdir()?,
            namespace: namespace.into(),
            manifest,
            pods: Vec::new(),
            services: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// Starts `spec.replicas` processes of every Deployment: first those a
    /// Service selects, whose addresses the others may refer to.
    pub async fn start_deployments(&mut self) -> Result<()> {
        let deployments: Vec<Value> = self
            .manifest
            .all("Deployment")
            .into_iter()
            .cloned()
            .collect();
        let services: Vec<Value> = self.manifest.all("Service").into_iter().cloned().collect();
        let selected = |d: &Value| {
            services
                .iter()
                .any(|s| selects(&s["spec"]["selector"], &pod_metadata(d)["labels"]))
        };
        let (first, then): (Vec<&Value>, Vec<&Value>) =
            deployments.iter().partition(|d| selected(d));
        for deployment in first {
            self.start_deployment(deployment).await?;
            self.map_services(&services)?;
        }
        for deployment in then {
            self.start_deployment(deployment).await?;
        }
        Ok(())
    }

    fn map_services(&mut self, services: &[Value]) -> Result<()> {
        let mut mapped = Vec::new();
        for service in services {
            let name = name_of(service).to_string();
            // A headless Service has no address to stand in for.
            if service["spec"]["clusterIP"] == "None"
                || self.services.iter().any(|s| s.hosts[0] == name)
            {
                continue;
            }
            let backing: Vec<&LocalPod> = self
                .pods
                .iter()
                .filter(|p| {
                    let d = self
                        .manifest
                        .get("Deployment", &p.deployment)
                        .expect("pods come from rendered Deployments");
                    selects(&service["spec"]["selector"], &pod_metadata(d)["labels"])
                })
                .collect();
            if backing.is_empty() {
                continue;
            }
            ensure!(
                backing.len() == 1,
                "Service {name} selects {} pods; only one backing pod is simulated",
                backing.len()
            );
            for port in service["spec"]["ports"]
                .as_array()
                .context("Service without ports")?
            {
                let service_port = port["port"]
                    .as_u64()
                    .context("Service port is not a number")?
                    as u16;
                let target = port
                    .get("targetPort")
                    .cloned()
                    .unwrap_or(port["port"].clone());
                let local = backing[0]
                    .local_port(&target)
                    .with_context(|| format!("Service {name} targetPort {target}"))?;
                mapped.push((name.clone(), service_port, local));
            }
        }
        for (name, port, local) in mapped {
            self.set_service(&name, port, local);
        }
        Ok(())
    }

    /// `http://127.0.0.1:<local>` for `<service>:<port>`.
    pub fn service_url(&self, name: &str, port: u16) -> Result<String> {
        self.services
            .iter()
            .find(|s| s.hosts[0] == name && s.port == port)
            .map(|s| format!("http://127.0.0.1:{}", s.local))
            .with_context(|| format!("Service {name}:{port} is not running here"))
    }

    pub fn pods_of(&self, deployment: &str) -> Vec<&LocalPod> {
        self.pods
            .iter()
            .filter(|p| p.deployment == deployment)
            .collect()
    }

    async fn start_deployment(&mut self, deployment: &Value) -> Result<()> {
        let name = name_of(deployment).to_string();
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
        ensure!(
            selects(
                &deployment["spec"]["selector"]["matchLabels"],
                &pod_metadata(deployment)["labels"]
            ),
            "Deployment {name}: its selector does not match its pod template's labels"
        );
        for replica in 0..replicas {
            let pod_name = format!("{name}-{replica}");
            let mut attempt = 0;
            let pod = loop {
                attempt += 1;
                match self.start_pod(deployment, &pod_name).await {
                    Ok(pod) => break pod,
                    // Another test may take the free port between our pick and the bind.
                    Err(err) if attempt < 3 && format!("{err:#}").contains("cannot listen") => {
                        continue;
                    }
                    Err(err) => return Err(err.context(format!("starting pod {pod_name}"))),
                }
            };
            self.pods.push(pod);
        }
        Ok(())
    }

    /// Prepares the mounts and environment of `object`'s container as pod
    /// `pod_name`, returning (program, arguments, environment, ports, mounts).
    fn prepare(&self, object: &Value, pod_name: &str) -> Result<Prepared> {
        let container = container(object)?;
        let pod_dir = self.dir.path().join(pod_name);
        std::fs::create_dir_all(&pod_dir)?;

        let mut ports = Vec::new();
        for port in container["ports"].as_array().into_iter().flatten() {
            ports.push(PortMap {
                name: port["name"].as_str().map(str::to_string),
                container: port["containerPort"].as_u64().context("containerPort")? as u16,
                local: free_port()?,
            });
        }

        let mut mounts = BTreeMap::new();
        let volumes = pod_spec(object)["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume_name = mount["name"].as_str().context("volumeMount without name")?;
            let mount_path = mount["mountPath"]
                .as_str()
                .context("volumeMount without mountPath")?;
            ensure!(
                mount.get("subPath").is_none(),
                "volumeMount {mount_path} uses subPath: not simulated"
            );
            let volume = volumes
                .iter()
                .find(|v| v["name"] == volume_name)
                .with_context(|| format!("volumeMount {volume_name} names no volume"))?;
            let local = if volume.get("emptyDir").is_some() {
                pod_dir.join(format!("empty-{volume_name}"))
            } else if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                self.dir.path().join(format!("pvc-{claim}"))
            } else if let Some(map) = volume["configMap"]["name"].as_str() {
                let dir = pod_dir.join(format!("configmap-{volume_name}"));
                let files = self.manifest.config_map_files(map)?;
                write_atomic_dir(&dir, &files)?;
                dir
            } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
                let dir = pod_dir.join(format!("secret-{volume_name}"));
                let object = self.manifest.get("Secret", secret)?;
                write_atomic_dir(&dir, &data_files(object, "data", "stringData")?)?;
                dir
            } else {
                bail!("volume {volume_name} is of a kind not simulated: {volume}");
            };
            std::fs::create_dir_all(&local)?;
            mounts.insert(mount_path.to_string(), local);
        }

        let mut raw: Vec<(String, String)> = Vec::new();
        let set = |raw: &mut Vec<(String, String)>, key: String, value: String| {
            raw.retain(|(k, _)| *k != key);
            raw.push((key, value));
        };
        for source in container["envFrom"].as_array().into_iter().flatten() {
            let prefix = source["prefix"].as_str().unwrap_or("");
            let files = if let Some(name) = source["configMapRef"]["name"].as_str() {
                self.manifest.config_map_files(name)?
            } else if let Some(name) = source["secretRef"]["name"].as_str() {
                data_files(self.manifest.get("Secret", name)?, "data", "stringData")?
            } else {
                bail!("envFrom of a kind not simulated: {source}");
            };
            for (key, value) in files {
                set(
                    &mut raw,
                    format!("{prefix}{key}"),
                    String::from_utf8(value)?,
                );
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            let key = var["name"]
                .as_str()
                .context("env without name")?
                .to_string();
            let value = if let Some(value) = var.get("value") {
                expand(value.as_str().unwrap_or(""), &raw)
            } else if let Some(from) = var.get("valueFrom") {
                self.value_from(from, pod_name)
                    .with_context(|| format!("env {key}"))?
            } else {
                String::new()
            };
            set(&mut raw, key, value);
        }

        let mut env = BTreeMap::new();
        for (key, value) in raw {
            let value = if key == "PORT" {
                let port = ports
                    .iter()
                    .find(|p| p.container.to_string() == value)
                    .with_context(|| {
                        format!("PORT={value} is not a declared containerPort ({ports:?})")
                    })?;
                port.local.to_string()
            } else {
                self.localize(&value, &ports, &mounts)
            };
            env.insert(key, value);
        }

        let command: Vec<String> = string_list(&container["command"])?;
        let args: Vec<String> = string_list(&container["args"])?;
        let mut argv: Vec<String> = command
            .into_iter()
            .chain(args)
            .map(|a| expand(&a, &env_pairs(&env)))
            .collect();
        ensure!(
            !argv.is_empty(),
            "container of {pod_name} has no command: the image's entrypoint is not simulated"
        );
        let program = local_program(&argv.remove(0))?;
        Ok(Prepared {
            program,
            argv,
            env,
            ports,
            mounts,
            dir: pod_dir,
        })
    }

    fn value_from(&self, from: &Value, pod_name: &str) -> Result<String> {
        if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            return Ok(match path {
                "metadata.name" => pod_name.to_string(),
                "metadata.namespace" => self.namespace.clone(),
                "status.podIP" | "status.hostIP" => "127.0.0.1".to_string(),
                "spec.nodeName" => "localhost".to_string(),
                other => bail!("fieldRef {other} is not simulated"),
            });
        }
        if let Some(reference) = from.get("secretKeyRef") {
            let name = reference["name"]
                .as_str()
                .context("secretKeyRef without name")?;
            let key = reference["key"]
                .as_str()
                .context("secretKeyRef without key")?;
            return self.manifest.secret_value(name, key);
        }
        if let Some(reference) = from.get("configMapKeyRef") {
            let name = reference["name"]
                .as_str()
                .context("configMapKeyRef without name")?;
            let key = reference["key"]
                .as_str()
                .context("configMapKeyRef without key")?;
            let files = self.manifest.config_map_files(name)?;
            let value = files
                .get(key)
                .with_context(|| format!("ConfigMap {name} has no key {key}"))?;
            return Ok(String::from_utf8(value.clone())?);
        }
        bail!("valueFrom of a kind not simulated: {from}")
    }

    /// The pod's own address, Service addresses and mount paths, as here.
    fn localize(
        &self,
        value: &str,
        ports: &[PortMap],
        mounts: &BTreeMap<String, PathBuf>,
    ) -> String {
        let mut value = value.to_string();
        for port in ports {
            value = value.replace(
                &format!("127.0.0.1:{}", port.container),
                &format!("127.0.0.1:{}", port.local),
            );
        }
        for service in &self.services {
            // Longest host names first, so `name` does not eat into `name.ns`.
            for host in service.hosts.iter().rev() {
                let from = format!("{host}:{}", service.port);
                let to = format!("127.0.0.1:{}", service.local);
                if value == from {
                    value = to.clone();
                }
                value = value.replace(&format!("//{from}"), &format!("//{to}"));
            }
        }
        for (path, local) in mounts {
            if value == *path {
                return local.display().to_string();
            }
            if let Some(rest) = value.strip_prefix(&format!("{path}/")) {
                return local.join(rest).display().to_string();
            }
        }
        value
    }

    async fn start_pod(&self, deployment: &Value, pod_name: &str) -> Result<LocalPod> {
        let prepared = self.prepare(deployment, pod_name)?;
        let mut command = tokio::process::Command::new(&prepared.program);
        command
            .args(&prepared.argv)
            .env_clear()
            .envs(&prepared.env)
            .env("HOSTNAME", pod_name)
            .current_dir(&prepared.dir);
        let log = self.dir.path().join(format!("{pod_name}.log"));
        let service = Service::start(pod_name, command, &log).await?;
        if let Some(port) = prepared.env.get("PORT") {
            ensure!(
                service.addr.port().to_string() == *port,
                "{pod_name} listens on {} but PORT is {port}",
                service.addr
            );
        }
        let pod = LocalPod {
            deployment: name_of(deployment).to_string(),
            name: pod_name.to_string(),
            component: pod_metadata(deployment)["labels"]["app.kubernetes.io/component"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            env: prepared.env,
            ports: prepared.ports,
            mounts: prepared.mounts,
            service,
        };
        self.check_probes(deployment, &pod).await?;
        Ok(pod)
    }

    /// Every httpGet probe of the pod's container answers 200 (readiness
    /// within a deadline, as the kubelet would retry it).
    async fn check_probes(&self, object: &Value, pod: &LocalPod) -> Result<()> {
        let container = container(object)?;
        for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let Some(get) = container[kind].get("httpGet") else {
                continue;
            };
            let port = pod
                .local_port(&get["port"])
                .with_context(|| format!("{kind} of {}", pod.name))?;
            let path = get["path"].as_str().unwrap_or("/");
            let url = format!("http://127.0.0.1:{port}{path}");
            crate::poll(
                Duration::from_secs(20),
                &format!("{kind} {url} of {} to answer 200", pod.name),
                || async {
                    let response = self.http.get(&url).send().await.ok()?;
                    response.status().is_success().then_some(())
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Runs a rendered Pod (such as a `helm test` hook) to completion with
    /// the same mappings, as `pod_name`.
    pub async fn run_pod(&self, pod: &Value, pod_name: &str, timeout: Duration) -> Result<Output> {
        let prepared = self.prepare(pod, pod_name)?;
        let mut command = tokio::process::Command::new(&prepared.program);
        command
            .args(&prepared.argv)
            .env_clear()
            .envs(&prepared.env)
            .env("HOSTNAME", pod_name)
            .current_dir(&prepared.dir)
            .kill_on_drop(true);
        tokio::time::timeout(timeout, command.output())
            .await
            .with_context(|| format!("pod {pod_name} did not finish within {timeout:?}"))?
            .with_context(|| format!("running pod {pod_name}"))
    }

    /// Makes `<service>:<port>` stand for `127.0.0.1:<local>` (e.g. a fake
    /// planner) in pods started or run after this.
    pub fn set_service(&mut self, name: &str, port: u16, local: u16) {
        self.services
            .retain(|s| !(s.hosts[0] == name && s.port == port));
        let ns = &self.namespace;
        let hosts = vec![
            name.to_string(),
            format!("{name}.{ns}"),
            format!("{name}.{ns}.svc"),
            format!("{name}.{ns}.svc.cluster.local"),
        ];
        self.services.push(LocalService { hosts, port, local });
    }

    /// What the kubelet does when a mounted ConfigMap changes: writes the
    /// new files into a fresh timestamped directory and swaps the `..data`
    /// symlink to it, in every running pod that mounts it.
    pub fn update_config_map(&self, object: &Value) -> Result<usize> {
        let name = name_of(object);
        let files = data_files(object, "data", "binaryData")?;
        let mut updated = 0;
        for pod in &self.pods {
            let deployment = self.manifest.get("Deployment", &pod.deployment)?;
            let container = container(deployment)?;
            let volumes = pod_spec(deployment)["volumes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for mount in container["volumeMounts"].as_array().into_iter().flatten() {
                let volume = volumes.iter().find(|v| v["name"] == mount["name"]);
                if volume.is_some_and(|v| v["configMap"]["name"] == name) {
                    let path = mount["mountPath"].as_str().unwrap_or_default();
                    write_atomic_dir(&pod.mounts[path], &files)?;
                    updated += 1;
                }
            }
        }
        Ok(updated)
    }
}

struct Prepared {
    program: PathBuf,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    ports: Vec<PortMap>,
    mounts: BTreeMap<String, PathBuf>,
    dir: PathBuf,
}

fn env_pairs(env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    env.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn string_list(value: &Value) -> Result<Vec<String>> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).context("not a string"))
            .collect(),
        other => bail!("expected a list of strings, got {other}"),
    }
}

/// The image's `/usr/local/bin/<name>` is this workspace's build of it; any
/// other absolute path must exist on this machine (e.g. `/bin/sh`).
fn local_program(path: &str) -> Result<PathBuf> {
    if let Some(name) = path.strip_prefix("/usr/local/bin/") {
        return sibling_binary(name);
    }
    let path = PathBuf::from(path);
    ensure!(
        path.is_absolute(),
        "command {} is not an absolute path",
        path.display()
    );
    ensure!(
        path.exists(),
        "the image's {} is not on this machine",
        path.display()
    );
    Ok(path)
}

/// Writes `files` into `dir` the way the kubelet fills a ConfigMap or Secret
/// volume: a new `..<stamp>` directory, `..data` swapped to it atomically,
/// and `<key>` -> `..data/<key>` symlinks.
pub fn write_atomic_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let stamp = format!(
        "..{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir(&fresh)?;
    for (key, bytes) in files {
        std::fs::write(fresh.join(key), bytes)?;
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, dir.join("..data"))?;
    for key in files.keys() {
        let link = dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), &link)?;
        }
    }
    // Keys that are gone: their links go too, then the old directory.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("..") && !files.contains_key(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}
