//! Where the planner is and which token to present: flags, then the
//! environment, then the config file, then the defaults.
//!
//! The config file is TOML:
//!
//! ```toml
//! planner = "http://planner.example:3000"
//! token_file = "/run/secrets/workers-token"   # or: token = "..."
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::cli::Global;

pub const DEFAULT_PLANNER: &str = "http://127.0.0.1:3000";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    planner: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

/// Where to talk to, and with which token.
pub struct Target {
    pub planner: String,
    pub token: Option<String>,
}

/// The environment as the resolution sees it (a function, so tests can
/// resolve without touching the process's own environment).
pub fn resolve(flags: &Global, env: impl Fn(&str) -> Option<String>) -> Result<Target> {
    let env = |key: &str| env(key).filter(|v| !v.is_empty());
    let file = load(
        flags
            .config
            .clone()
            .or_else(|| env("WORKERS_CONFIG").map(PathBuf::from)),
        &env,
    )?;
    let planner = flags
        .planner
        .clone()
        .or_else(|| env("PLANNER"))
        .or(file.planner)
        .unwrap_or_else(|| DEFAULT_PLANNER.to_string());
    let planner = normalize(&planner)?;
    let token = if let Some(token) = &flags.token {
        Some(token.clone())
    } else if let Some(path) = &flags.token_file {
        Some(read_token(path)?)
    } else if let Some(token) = env("TOKEN") {
        Some(token)
    } else if let Some(path) = env("TOKEN_FILE") {
        Some(read_token(Path::new(&path))?)
    } else if let Some(token) = file.token {
        Some(token)
    } else if let Some(path) = file.token_file {
        Some(read_token(&path)?)
    } else {
        None
    };
    Ok(Target {
        planner,
        token: token.filter(|t| !t.is_empty()),
    })
}

/// The named file must exist; the default one may not.
fn load(explicit: Option<PathBuf>, env: &impl Fn(&str) -> Option<String>) -> Result<File> {
    let (path, required) = match explicit {
        Some(path) => (path, true),
        None => match default_path(env) {
            Some(path) => (path, false),
            None => return Ok(File::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(File::default());
        }
        Err(err) => return Err(err).with_context(|| format!("reading config {}", path.display())),
    };
    toml::from_str(&text)
        .map_err(|err| anyhow::anyhow!("config {}: {}", path.display(), err.message().trim_end()))
}

/// `$XDG_CONFIG_HOME/workers/config.toml`, else `~/.config/workers/config.toml`.
pub fn default_path(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("workers").join("config.toml"))
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// `host:3000` → `http://host:3000`; no trailing slash.
fn normalize(url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let parsed = reqwest::Url::parse(&url).with_context(|| format!("planner URL `{url}`"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        bail!("planner URL `{url}`: only http:// and https:// are supported");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Output;
    use std::collections::HashMap;

    fn flags() -> Global {
        Global {
            planner: None,
            token: None,
            token_file: None,
            config: None,
            output: Output::Text,
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn flags_beat_environment_beats_file_beats_default() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let dir = dir.path();
        let config = dir.join("config.toml");
        std::fs::write(&config, "planner = \"file:1\"\ntoken = \"from-file\"\n")?;
        let config_env = config.to_string_lossy().to_string();

        let none = resolve(&flags(), env(&[("HOME", "/nonexistent")]))?;
        assert_eq!(none.planner, DEFAULT_PLANNER);
        assert_eq!(none.token, None);

        let from_file = resolve(&flags(), env(&[("WORKERS_CONFIG", &config_env)]))?;
        assert_eq!(from_file.planner, "http://file:1");
        assert_eq!(from_file.token.as_deref(), Some("from-file"));

        let vars = [
            ("WORKERS_CONFIG", config_env.as_str()),
            ("PLANNER", "http://env:2/"),
            ("TOKEN", "from-env"),
        ];
        let from_env = resolve(&flags(), env(&vars))?;
        assert_eq!(from_env.planner, "http://env:2");
        assert_eq!(from_env.token.as_deref(), Some("from-env"));

        let mut given = flags();
        given.planner = Some("http://flag:3".into());
        given.token = Some("from-flag".into());
        let from_flags = resolve(&given, env(&vars))?;
        assert_eq!(from_flags.planner, "http://flag:3");
        assert_eq!(from_flags.token.as_deref(), Some("from-flag"));
        Ok(())
    }

    #[test]
    fn token_files_are_read_and_trimmed_and_xdg_is_the_default_location() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let dir = dir.path();
        std::fs::create_dir_all(dir.join("workers"))?;
        std::fs::write(dir.join("secret"), "s3cret\n")?;
        std::fs::write(
            dir.join("workers/config.toml"),
            format!("token_file = \"{}\"\n", dir.join("secret").display()),
        )?;
        let xdg = dir.to_string_lossy().to_string();
        let target = resolve(&flags(), env(&[("XDG_CONFIG_HOME", &xdg)]))?;
        assert_eq!(target.token.as_deref(), Some("s3cret"));
        Ok(())
    }

    #[test]
    fn a_named_config_must_exist_and_parse() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let dir = dir.path();
        let mut given = flags();
        given.config = Some(dir.join("missing.toml"));
        assert!(resolve(&given, env(&[])).is_err());
        std::fs::write(dir.join("bad.toml"), "plannr = \"x\"\n")?;
        given.config = Some(dir.join("bad.toml"));
        let err = resolve(&given, env(&[])).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("unknown field")));
        Ok(())
    }
}
