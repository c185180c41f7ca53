//! How a rendered pod's container becomes a command line here: its ports,
//! mounts and environment mapped as the [`LocalCluster`] docs say.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use launcher::process::sibling_binary;
use serde_json::Value;

use super::kubelet::{expand, write_atomic_dir};
use super::local_cluster::{LocalCluster, PortMap, free_port};
use super::manifest::{container, data_files, pod_spec};

impl LocalCluster {
    /// Prepares the mounts and environment of `object`'s container as pod
    /// `pod_name`, returning (program, arguments, environment, ports, mounts).
    pub(super) fn prepare(&self, object: &Value, pod_name: &str) -> Result<Prepared> {
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
                write_atomic_dir(&dir, &projected(files, &volume["configMap"]["items"])?)?;
                dir
            } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
                let dir = pod_dir.join(format!("secret-{volume_name}"));
                let object = self.manifest.get("Secret", secret)?;
                let files = data_files(object, "data", "stringData")?;
                write_atomic_dir(&dir, &projected(files, &volume["secret"]["items"])?)?;
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
            } else if key == "BIND" && value == "0.0.0.0" {
                "127.0.0.1".to_string()
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
        // Nested mounts shadow their parent: the longest path that matches.
        let mut by_depth: Vec<(&String, &PathBuf)> = mounts.iter().collect();
        by_depth.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        for (path, local) in by_depth {
            if value == *path {
                return local.display().to_string();
            }
            if let Some(rest) = value.strip_prefix(&format!("{path}/")) {
                return local.join(rest).display().to_string();
            }
        }
        value
    }
}

pub(super) struct Prepared {
    pub(super) program: PathBuf,
    pub(super) argv: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) ports: Vec<PortMap>,
    pub(super) mounts: BTreeMap<String, PathBuf>,
    pub(super) dir: PathBuf,
}

impl Prepared {
    /// The process, with exactly the container's environment (plus
    /// `HOSTNAME`, as in a pod), in the pod's directory.
    pub(super) fn command(&self, pod_name: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.argv)
            .env_clear()
            .envs(&self.env)
            .env("HOSTNAME", pod_name)
            .current_dir(&self.dir);
        command
    }
}

/// The files a ConfigMap or Secret volume shows: every key, or with `items`
/// only the keys listed, each under its `path`.
fn projected(files: BTreeMap<String, Vec<u8>>, items: &Value) -> Result<BTreeMap<String, Vec<u8>>> {
    let Some(items) = items.as_array() else {
        return Ok(files);
    };
    let mut shown = BTreeMap::new();
    for item in items {
        let key = item["key"].as_str().context("volume item without key")?;
        let path = item["path"].as_str().context("volume item without path")?;
        ensure!(
            !path.contains('/'),
            "volume item path {path}: nested paths not simulated"
        );
        let bytes = files
            .get(key)
            .with_context(|| format!("volume item names key {key}, which is not there"))?;
        shown.insert(path.to_string(), bytes.clone());
    }
    Ok(shown)
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
