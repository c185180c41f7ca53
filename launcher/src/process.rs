//! Child processes of the launcher (and of the end-to-end tests and the benchmark): the
//! real `planner` and `worker` binaries, each announcing its address on stdout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running service process; killed if dropped while still running.
pub struct Service {
    pub name: String,
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Service {
    /// Starts `command` (stderr to `log`) and waits for its
    /// `listening on http://ADDR` line (text or JSON, `serve::listen`).
    pub async fn start(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let announced = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = serve::listen::announced_addr(&line) {
                    return Ok::<_, anyhow::Error>(Some(addr));
                }
            }
            Ok(None)
        })
        .await;
        let addr = match announced {
            Ok(Ok(Some(addr))) => addr,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child
                    .wait()
                    .await
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                bail!(
                    "{name} exited before listening ({status}); last log lines:\n{}",
                    tail(log, 10)
                );
            }
            Err(_) => bail!(
                "{name} did not start listening within 30 s; log: {}",
                log.display()
            ),
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            name: name.into(),
            child,
            addr,
            log: log.into(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.id().map(|id| id as i32)
    }

    /// SIGTERM, the way Kubernetes stops a pod.
    pub fn terminate(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within {timeout:?}", self.name))?
            .context("waiting for the process")
    }

    /// SIGTERM, then SIGKILL if it has not exited in `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.terminate();
        match self.wait(grace).await {
            Ok(status) => Some(status),
            Err(_) => {
                self.kill();
                self.child.wait().await.ok()
            }
        }
    }
}

/// The last `n` lines of a log file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `worker` binary, expected next to the running executable (cargo puts
/// both in the same target directory).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    // Test executables live one level down, in `deps/`.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        // The profile is the directory cargo put this executable in.
        let release = dir.file_name().is_some_and(|d| d == "release");
        let profile = if release { " --release" } else { "" };
        bail!(
            "`{name}` binary not found at {}: build it first (cargo build{profile} --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// Polls `check` until it returns `Some`, or fails after `deadline` saying
/// what was awaited. For state that changes by events we can't subscribe to.
pub async fn poll<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = std::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if std::time::Instant::now() > until {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
