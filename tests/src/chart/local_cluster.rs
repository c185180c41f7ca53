//! Rendered workloads run as local processes ([`LocalCluster`]).
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
//! - `BIND=0.0.0.0` (every interface of the pod's own network namespace) is
//!   `127.0.0.1`: the tests listen on loopback only;
//! - `secretKeyRef` / `configMapKeyRef` / `envFrom`: read from the rendered
//!   Secret or ConfigMap, or from one the test created beforehand as
//!   `kubectl create secret` would ([`LocalCluster::create_secret`]); a
//!   missing one is an error;
//! - ports: every declared `containerPort` gets a free local port, chosen
//!   before start. `PORT` (the binaries' listen port) must equal a declared
//!   containerPort and becomes its local port, and `127.0.0.1:<containerPort>`
//!   in any value (the pod's own address, e.g. `ADDRESS` after `$(POD_IP)` is
//!   expanded) becomes `127.0.0.1:<local port>`. The process must then
//!   announce that very port;
//! - Services: `<service>[.<namespace>[.svc[.cluster.local]]]:<port>` in any
//!   value becomes `127.0.0.1:<local port>` of the pod the Service's selector
//!   picks, through its `targetPort`, or of a [`Front`] that spreads
//!   connections over the pods when it picks several (as kube-proxy does);
//!   so pods a Service selects are started first;
//! - volumes: each `volumeMount` is a directory of this test's temp dir
//!   (`emptyDir` per pod, a `persistentVolumeClaim` per claim, a `configMap`
//!   or `secret` filled from its object in the kubelet's layout: timestamped
//!   directory, `..data` symlink, one symlink per key, or per `items` entry
//!   under its `path`), and a value that is a mount path or lies under one is
//!   rewritten to that directory (the longest mount path that matches, as
//!   nested mounts shadow their parent).
//!
//! Anything else stays as rendered, so a value the chart does not wire through
//! (a wrong host, port or path) reaches the process unchanged and breaks it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use launcher::process::Service;
use serde_json::Value;

use super::kubelet::write_atomic_dir;
use super::manifest::{Manifest, container, data_files, name_of, pod_metadata, pod_spec, selects};
use crate::front::Front;

/// A port on 127.0.0.1 no one listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
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
pub(super) struct LocalService {
    pub(super) hosts: Vec<String>,
    pub(super) port: u16,
    pub(super) local: u16,
}

/// Rendered workloads run as local processes under a temp dir; everything is
/// killed when it is dropped.
pub struct LocalCluster {
    pub dir: tempfile::TempDir,
    pub namespace: String,
    pub manifest: Manifest,
    pub pods: Vec<LocalPod>,
    pub(super) services: Vec<LocalService>,
    /// Stand-ins for Services that select several pods.
    fronts: Vec<Front>,
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
            fronts: Vec::new(),
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
            self.map_services(&services).await?;
        }
        for deployment in then {
            self.start_deployment(deployment).await?;
        }
        Ok(())
    }

    async fn map_services(&mut self, services: &[Value]) -> Result<()> {
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
                let locals = backing
                    .iter()
                    .map(|pod| pod.local_port(&target))
                    .collect::<Result<Vec<u16>>>()
                    .with_context(|| format!("Service {name} targetPort {target}"))?;
                mapped.push((name.clone(), service_port, locals));
            }
        }
        for (name, port, locals) in mapped {
            let local = match locals[..] {
                [one] => one,
                _ => {
                    let backends = locals
                        .iter()
                        .map(|port| std::net::SocketAddr::from(([127, 0, 0, 1], *port)))
                        .collect();
                    let front = Front::start(backends).await?;
                    let port = front.addr.port();
                    self.fronts.push(front);
                    port
                }
            };
            self.set_service(&name, port, local);
        }
        Ok(())
    }

    /// The last `lines` log lines of every pod of `deployment`, for a
    /// failure message.
    pub fn log_tails(&self, deployment: &str, lines: usize) -> String {
        self.pods_of(deployment)
            .iter()
            .map(|pod| {
                let tail = launcher::process::tail(&pod.service.log, lines);
                format!("--- {} log:\n{tail}", pod.name)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A Secret that exists in the cluster before the install, as
    /// `kubectl create secret generic <name> --from-literal=<key>=<value>`
    /// makes it (e.g. the one `planner.database.existingSecret` names).
    pub fn create_secret(&mut self, name: &str, data: &[(&str, &str)]) -> Result<()> {
        ensure!(
            self.manifest.find("Secret", name).is_none(),
            "the chart renders a Secret {name} itself"
        );
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(key, value)| ((*key).to_string(), Value::String((*value).to_string())))
            .collect();
        self.manifest.objects.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": self.namespace},
            "stringData": data,
        }));
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

    async fn start_pod(&self, deployment: &Value, pod_name: &str) -> Result<LocalPod> {
        let prepared = self.prepare(deployment, pod_name)?;
        let command = prepared.command(pod_name);
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
        let mut command = prepared.command(pod_name);
        command.kill_on_drop(true);
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
