//! Headless Chromium driven through chromedriver (WebDriver), for the tests
//! that need a real browser: the dashboard's, and the cross-site request
//! (CSRF) one.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/install-tools`
//! installs them). Chromium runs as whatever user the tests run as; as root
//! it needs `--no-sandbox`, acceptable for a test browser that loads only
//! the tests' own pages on 127.0.0.1.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::poll;

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The page size the browser's viewport is set to.
pub const WIDTH: u32 = 1280;
pub const HEIGHT: u32 = 900;

/// chromedriver on a free 127.0.0.1 port, with a session of headless
/// Chromium in a fresh profile. `stop` ends both; so does dropping it (a
/// test that fails half-way), which kills their whole process group:
/// killing chromedriver alone would leave Chromium running, holding its
/// profile directory.
pub struct Browser {
    driver: Child,
    pub client: Client,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&self.driver);
    }
}

/// chromedriver leads its own process group, which Chromium joins.
fn kill_group(driver: &Child) {
    if let Some(pid) = driver.id() {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Browser {
    pub async fn start(log_dir: &Path) -> Result<Self> {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            ensure!(
                Path::new(tool).exists(),
                "{tool} is missing: run scripts/install-tools (Debian's chromium and chromium-driver)"
            );
        }
        let profile = tempfile::Builder::new().prefix("chromium-").tempdir()?;
        let (driver, port) = start_driver(log_dir).await?;
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    format!("--window-size={WIDTH},{HEIGHT}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            bail!("capabilities are an object");
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        let client = match client {
            Ok(client) => client,
            Err(err) => {
                kill_group(&driver);
                bail!("no Chromium session: {err}");
            }
        };
        let browser = Self {
            driver,
            client,
            _profile: profile,
        };
        if let Err(err) = browser.size_viewport().await {
            browser.stop().await;
            return Err(err);
        }
        Ok(browser)
    }

    /// `--window-size` counts the window's frame; make the page itself
    /// WIDTH x HEIGHT, as the screenshots are.
    async fn size_viewport(&self) -> Result<()> {
        let frame = self
            .client
            .execute(
                "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await?;
        let extra = |i: usize| frame[i].as_u64().unwrap_or(0).min(1000) as u32;
        self.client
            .set_window_size(WIDTH + extra(0), HEIGHT + extra(1))
            .await?;
        Ok(())
    }

    pub async fn stop(self) {
        // Closing the session makes chromedriver quit Chromium; dropping
        // kills whatever is left.
        let _ = self.client.clone().close().await;
    }
}

async fn start_driver(log_dir: &Path) -> Result<(Child, u16)> {
    let mut last_error = None;
    for attempt in 0..3 {
        // Another process may take the port between here and chromedriver's
        // bind; then try another.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(log_dir.join(format!("chromedriver-{attempt}.log")))?;
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .context("starting chromedriver")?;
        let http = reqwest::Client::new();
        let status_url = format!("http://127.0.0.1:{port}/status");
        let ready = poll(Duration::from_secs(20), "chromedriver to listen", || {
            let (http, status_url) = (&http, &status_url);
            async move {
                let status: Value = http.get(status_url).send().await.ok()?.json().await.ok()?;
                (status["value"]["ready"] == true).then_some(())
            }
        });
        tokio::select! {
            ready = ready => match ready {
                Ok(()) => return Ok((driver, port)),
                Err(err) => {
                    let _ = driver.kill().await;
                    last_error = Some(err);
                }
            },
            exited = driver.wait() => {
                last_error = Some(anyhow::anyhow!("chromedriver exited: {exited:?}"));
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("chromedriver did not start")))
}
