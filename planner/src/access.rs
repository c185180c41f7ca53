//! Who may do what on the planner, decided once at start from `AUTH`,
//! `TOKEN`/`TOKEN_FILE`, `CLIENT_TOKEN`/`CLIENT_TOKEN_FILE`,
//! `SUBMIT_REQUIRES_TOKEN` and `READ_REQUIRES_TOKEN`.
//!
//! Authentication is on by default: with no token given, the planner makes
//! one at first start and keeps it in `DATA_DIR/token` (mode 0600), so a
//! restarted planner keeps the token its workers were given. The token is
//! never logged; the file's path is.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serve::auth::{AuthMode, Guard, Token, read_token_file};

use crate::config::ServeConfig;

/// The generated token's file name under `DATA_DIR`.
pub const TOKEN_FILE_NAME: &str = "token";

/// The planner's access rules, as the API applies them.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The worker/admin token: registration, heartbeats, module rollouts;
    /// presented to workers on dispatch and module pushes. Unset only with
    /// `AUTH=off`.
    pub admin: Token,
    /// A client-only token, accepted besides the admin token where clients
    /// need one.
    pub client: Token,
    pub submit_requires_token: bool,
    pub read_requires_token: bool,
}

impl Access {
    /// Everything open: `AUTH=off`.
    pub fn open() -> Self {
        Self::default()
    }

    /// Worker and administration routes: the admin token only.
    pub fn admin_guard(&self) -> Guard {
        Guard::tokens([self.admin.clone()])
    }

    /// Submitting and cancelling tasks.
    pub fn submit_guard(&self) -> Guard {
        self.client_guard(self.submit_requires_token)
    }

    /// Reading tasks, workers, ops, events, stats, metrics.
    pub fn read_guard(&self) -> Guard {
        self.client_guard(self.read_requires_token)
    }

    fn client_guard(&self, required: bool) -> Guard {
        if required {
            Guard::tokens([self.admin.clone(), self.client.clone()])
        } else {
            Guard::open()
        }
    }
}

/// Reads the settings, generating `DATA_DIR/token` when authentication is on
/// and no token is given. Logs what it decided, never a token.
pub fn resolve(config: &ServeConfig) -> Result<Access> {
    let client = match (&config.client_token, &config.client_token_file) {
        (Some(value), _) => Token::new(Some(value.clone())),
        (None, Some(path)) => read_token_file(path)?,
        (None, None) => Token::default(),
    };
    let configured = config.auth.configured()?;
    if config.auth.auth == AuthMode::Off {
        if client.is_set() {
            anyhow::bail!("AUTH=off and CLIENT_TOKEN are both set: unset one of them");
        }
        tracing::warn!(
            "AUTH=off: no authentication; anyone who can reach this port may register workers, roll out modules and submit tasks"
        );
        return Ok(Access::open());
    }
    let admin = match configured {
        Some(token) => token,
        None => {
            let path = config.data_dir.join(TOKEN_FILE_NAME);
            let (token, generated) = generated_token(&path)?;
            tracing::info!(
                path = %path.display(),
                generated,
                "no TOKEN or TOKEN_FILE given: workers and clients present the token in this file (workers: TOKEN_FILE={})",
                path.display()
            );
            token
        }
    };
    let access = Access {
        admin,
        client,
        submit_requires_token: config.submit_requires_token,
        read_requires_token: config.read_requires_token,
    };
    tracing::info!(
        submit = if access.submit_requires_token {
            "token"
        } else {
            "open"
        },
        read = if access.read_requires_token {
            "token"
        } else {
            "open"
        },
        client_token = access.client.is_set(),
        "authentication on: workers and module rollouts need the token"
    );
    Ok(access)
}

/// The token kept at `path`, made there first if it does not exist yet
/// (`true` with it). Created whole or not at all: written to a private
/// temporary file, then hard-linked into place, which fails if another
/// planner got there first (then its token is the one used).
pub fn generated_token(path: &Path) -> Result<(Token, bool)> {
    if path.exists() {
        warn_if_readable_by_others(path);
        return Ok((read_token_file(path)?, false));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating {} for the token", dir.display()))?;
    let value: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let temporary = dir.join(format!(".{TOKEN_FILE_NAME}.{}.tmp", std::process::id()));
    let written = write_private(&temporary, &value).and_then(|()| {
        match std::fs::hard_link(&temporary, path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(err).with_context(|| format!("creating {}", path.display())),
        }
    });
    let _ = std::fs::remove_file(&temporary);
    let generated = written?;
    Ok((read_token_file(path)?, generated))
}

fn write_private(path: &PathBuf, value: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(value.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = %format!("{:o}", meta.permissions().mode() & 0o777),
            "the token file is readable by other users: chmod 600 it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("planner-access-{}", std::process::id()));
        let path = dir.join("data").join(TOKEN_FILE_NAME);
        let (first, generated) = generated_token(&path).expect("generated");
        assert!(generated);
        let mode = std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).expect("readable");
        assert_eq!(text.trim().len(), 64, "256 bits, hex");
        let (again, generated) = generated_token(&path).expect("reused");
        assert!(!generated);
        let presented = first.headers();
        assert!(again.admits(presented.get(axum::http::header::AUTHORIZATION)));
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("data"))
            .expect("listable")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(TOKEN_FILE_NAME)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn guards_by_role() {
        let access = Access {
            admin: Token::new(Some("admin".into())),
            client: Token::new(Some("client".into())),
            submit_requires_token: true,
            read_requires_token: false,
        };
        let bearer = |v: &'static str| axum::http::HeaderValue::from_static(v);
        assert!(access.admin_guard().admits(Some(&bearer("Bearer admin"))));
        assert!(!access.admin_guard().admits(Some(&bearer("Bearer client"))));
        assert!(access.submit_guard().admits(Some(&bearer("Bearer client"))));
        assert!(access.submit_guard().admits(Some(&bearer("Bearer admin"))));
        assert!(!access.submit_guard().admits(None));
        assert!(access.read_guard().admits(None));
        assert!(Access::open().admin_guard().admits(None));
    }
}
