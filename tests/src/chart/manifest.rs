//! The objects of a rendered chart, and where things are in them.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

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

pub(super) fn data_files(
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
            // A Secret's `stringData` is plain text; `binaryData` is base64.
            let bytes = if binary_key == "stringData" {
                text.as_bytes().to_vec()
            } else {
                base64::engine::general_purpose::STANDARD.decode(text.trim())?
            };
            files.insert(key.clone(), bytes);
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

/// Bytes of a Kubernetes quantity (`2Gi`, `512Mi`, `1G`, `1000`).
pub fn quantity_bytes(quantity: &str) -> Result<u64> {
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
