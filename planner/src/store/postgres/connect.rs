//! Where the database is and how to reach it: the URL, TLS, the pool.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Connections in the pool: the writer, claims, renewals, and reads
/// (`GET /tasks/{id}` of tasks no longer in memory, id allocation).
const POOL_SIZE: usize = 16;

/// Where to connect: the URL and what may be shown of it.
#[derive(Clone)]
pub struct Target {
    pub(super) config: tokio_postgres::Config,
    /// `host:port/database`, never the password.
    pub shown: String,
}

impl Target {
    /// Parses a `postgres://` URL (or key=value string).
    pub fn parse(url: &str) -> Result<Self, String> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("DATABASE_URL is not a PostgreSQL URL: {e}"))?;
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let ports = config.get_ports();
        let port = ports.first().copied().unwrap_or(5432);
        let host = if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        };
        let database = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres");
        Ok(Self {
            shown: format!("{host}:{port}/{database}"),
            config,
        })
    }

    /// The connection settings, with a connect timeout if the URL has none.
    pub(super) fn config(&self) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config
    }
}

/// TLS as the URL asks for it (`sslmode=require`), with the web's roots.
pub(super) fn tls() -> anyhow::Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(tls))
}

pub(super) fn pool(target: &Target) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        target.config(),
        tls()?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager).max_size(POOL_SIZE).build()?)
}
