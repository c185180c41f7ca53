//! A real PostgreSQL for the tests and the benchmark: a fresh database per
//! test, or a cluster of one's own.
//!
//! With `DATABASE_URL` set, each test gets a new database on that server.
//! Otherwise the first test that asks starts a throwaway cluster (initdb in a
//! temporary directory, a free port on 127.0.0.1, trust authentication on
//! 127.0.0.1 only, the socket in the temporary directory) and the tests of
//! this process share it; it is stopped, by pid, when the last [`Database`]
//! handed out is dropped (a later test starts a new one).
//!
//! The server runs as the `postgres` OS user when the tests run as root,
//! since initdb and postgres refuse to run as root.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// A database for one test; the cluster it lives on stays up while any
/// [`Database`] does.
pub struct Database {
    /// `postgres://...` naming this database.
    pub url: String,
    pub name: String,
    /// The cluster's data and socket directory, when the harness started it.
    pub cluster_dir: Option<PathBuf>,
    cluster: Option<Arc<Cluster>>,
}

impl Database {
    /// The cluster this database lives on, when the harness started it (for
    /// tests that stop and restart the server).
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }
}

/// Creates a fresh, empty database: on `DATABASE_URL` if set, else on this
/// process's throwaway cluster.
pub async fn database() -> Result<Database> {
    let name = format!("e2e_{}_{}", std::process::id(), next_seq());
    if let Ok(base) = std::env::var("DATABASE_URL") {
        psql(&base, &format!("CREATE DATABASE {name}")).await?;
        let mut url = reqwest::Url::parse(&base).context("DATABASE_URL is not a URL")?;
        url.set_path(&format!("/{name}"));
        return Ok(Database {
            url: url.to_string(),
            name,
            cluster_dir: None,
            cluster: None,
        });
    }
    let cluster = shared_cluster().await?;
    psql(&cluster.url("postgres"), &format!("CREATE DATABASE {name}")).await?;
    Ok(Database {
        url: cluster.url(&name),
        name,
        cluster_dir: Some(cluster.dir.path().to_path_buf()),
        cluster: Some(cluster),
    })
}

fn next_seq() -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The cluster every test of this process shares while any holds it.
async fn shared_cluster() -> Result<Arc<Cluster>> {
    static SHARED: tokio::sync::Mutex<Weak<Cluster>> = tokio::sync::Mutex::const_new(Weak::new());
    let mut shared = SHARED.lock().await;
    if let Some(cluster) = shared.upgrade() {
        return Ok(cluster);
    }
    let cluster = Arc::new(Cluster::start().await?);
    *shared = Arc::downgrade(&cluster);
    Ok(cluster)
}

/// Runs one SQL statement with psql against `url`.
pub async fn psql(url: &str, sql: &str) -> Result<String> {
    let output = Command::new(bin("psql")?)
        .args(["-v", "ON_ERROR_STOP=1", "-qAtX", "-d", url, "-c", sql])
        .stdin(Stdio::null())
        .output()
        .await
        .context("running psql")?;
    if !output.status.success() {
        bail!(
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A PostgreSQL binary from Debian's packages (/usr/lib/postgresql/VER/bin,
/// the newest version installed).
pub fn bin(name: &str) -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| format!("{} is missing: run scripts/install-tools", root.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin").join(name)))
        })
        .filter(|(_, path)| path.exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, path)| path)
        .with_context(|| format!("no {name} under {}", root.display()))
}

/// A throwaway PostgreSQL server in a temporary directory.
pub struct Cluster {
    dir: tempfile::TempDir,
    pub port: u16,
    server: Mutex<Option<std::process::Child>>,
    /// The OS user the server runs as (when the tests run as root).
    user: Option<nix::unistd::User>,
    /// Waits for the disk on commit, like a production server (the
    /// benchmark's); the tests' clusters do not.
    durable: bool,
}

impl Cluster {
    /// A new cluster of its own (most tests share one through [`database`]),
    /// not waiting for the disk.
    pub async fn start() -> Result<Self> {
        Self::start_with(false).await
    }

    /// A cluster that fsyncs its commits, as a production server does.
    pub async fn start_durable() -> Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(durable: bool) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("e2e-pg-").tempdir()?;
        let user = if nix::unistd::Uid::effective().is_root() {
            let user = nix::unistd::User::from_name("postgres")?
                .context("running as root, and there is no `postgres` user to run the server as")?;
            Some(user)
        } else {
            None
        };
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        if let Some(user) = &user {
            for path in [dir.path(), &data] {
                nix::unistd::chown(path, Some(user.uid), Some(user.gid))?;
            }
        }
        let mut initdb = std::process::Command::new(bin("initdb")?);
        initdb
            .args([
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "--encoding=UTF8",
            ])
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null());
        as_user(&mut initdb, user.as_ref());
        let output = tokio::task::spawn_blocking(move || initdb.output()).await??;
        if !output.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let mut cluster = Self {
            dir,
            port: 0,
            server: Mutex::new(None),
            user,
            durable,
        };
        cluster.port = free_port()?;
        cluster.run().await?;
        Ok(cluster)
    }

    /// The server's (postmaster's) process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(std::process::Child::id)
    }

    /// `postgres://` URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Starts the server (again, after [`Cluster::stop`]) on the same port
    /// and waits until it accepts connections.
    pub async fn run(&self) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join("postgres.log"))?;
        if let Some(user) = &self.user {
            nix::unistd::chown(
                &self.dir.path().join("postgres.log"),
                Some(user.uid),
                Some(user.gid),
            )?;
        }
        let mut postgres = std::process::Command::new(bin("postgres")?);
        postgres
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .args(["-c", "max_connections=300"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if !self.durable {
            // Throwaway data: no need to wait for the disk.
            postgres
                .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        as_user(&mut postgres, self.user.as_ref());
        let child = postgres.spawn().context("starting postgres")?;
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let ready = crate::process::poll(
            Duration::from_secs(60),
            "postgres to accept connections",
            || async {
                let status = Command::new(bin("pg_isready").ok()?)
                    .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .status()
                    .await
                    .ok()?;
                status.success().then_some(())
            },
        )
        .await;
        if let Err(err) = ready {
            let log = crate::process::tail(&self.dir.path().join("postgres.log"), 10);
            bail!("{err}; postgres log:\n{log}");
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: SIGINT, then SIGKILL after 10 s).
    pub fn stop(&self) {
        let child = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn as_user(command: &mut std::process::Command, user: Option<&nix::unistd::User>) {
    use std::os::unix::process::CommandExt;
    if let Some(user) = user {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        command.env("HOME", &user.dir).env("USER", &user.name);
    }
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
