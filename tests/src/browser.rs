//! A real headless Chromium, driven over WebDriver by a chromedriver on a
//! loopback port, for tests of what the project shows in a browser.
//!
//! [`Browser::start`] runs Debian's `chromedriver` (package `chromium-driver`)
//! in a process group of its own, waits for its `/status` to say ready, and
//! opens a [`fantoccini::Client`] session on Debian's `chromium` with a fresh
//! profile. The client and its HTTP connection to chromedriver live on a small
//! tokio runtime owned by the [`Browser`], so one fixture serves both kinds of
//! test:
//!
//! - a `#[tokio::test]` awaits the helpers (or [`Browser::client`]) directly;
//! - a plain `#[test]` wraps its steps in [`Browser::block_on`].
//!
//! Dropping the [`Browser`] closes the session and kills chromedriver's
//! process group and any process still naming the profile directory, so no
//! Chromium outlives the test, panics included (a failing test also prints
//! the end of chromedriver's log, which carries Chromium's own output).

use std::fs::File;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// Chromium's arguments. The machines that run the tests have no outside
/// network: without the background-networking switches Chromium keeps trying
/// Google's hosts. The tests run as root, hence `--no-sandbox`.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
];

/// How long chromedriver may take to answer `/status`, and Chromium to open
/// a session (a cold start on a loaded 2-core machine takes a few seconds).
const DRIVER_READY: Duration = Duration::from_secs(20);
const SESSION_READY: Duration = Duration::from_secs(60);

/// A headless Chromium session; see the module documentation.
#[derive(Debug)]
pub struct Browser {
    client: Client,
    driver: Child,
    rt: Option<tokio::runtime::Runtime>,
    log: PathBuf,
    dir: tempfile::TempDir,
    startup: Duration,
}

impl Browser {
    /// Starts chromedriver and a Chromium session. Blocks until the session
    /// is open; callable from plain and from async tests. Panics with what to
    /// install when chromium or chromedriver is missing.
    pub fn start() -> Browser {
        let began = Instant::now();
        let chromium = binary("WEFT_CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver = binary(
            "WEFT_CHROMEDRIVER",
            "/usr/bin/chromedriver",
            "chromium-driver",
        );
        let dir = tempfile::Builder::new()
            .prefix("weft-browser-")
            .tempdir()
            .expect("creating the browser's temporary directory");
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).expect("creating the browser profile directory");
        let log = dir.path().join("chromedriver.log");

        let (driver, port) = start_driver(&chromedriver, &log);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weft-browser")
            .enable_all()
            .build()
            .expect("building the browser's runtime");

        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        let url = format!("http://127.0.0.1:{port}");
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let session = ClientBuilder::new(HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await;
            let _ = tx.send(session);
        });
        // Waits on a channel rather than `block_on`, so that this works
        // inside another runtime too; the session opens on `rt`'s worker.
        let client = match rx.recv_timeout(SESSION_READY) {
            Ok(Ok(client)) => client,
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no session after {SESSION_READY:?}"),
                };
                let mut driver = driver;
                kill_group(&mut driver, dir.path());
                rt.shutdown_background();
                eprintln!("{}", tail(&log));
                panic!(
                    "chromium ({}) did not start a WebDriver session: {reason} \
                     (chromedriver's log is above)",
                    chromium.display()
                );
            }
        };
        Browser {
            client,
            driver,
            rt: Some(rt),
            log,
            dir,
            startup: began.elapsed(),
        }
    }

    /// The WebDriver session, for anything the helpers below do not cover.
    /// Its futures may be awaited on any tokio runtime.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How long [`Browser::start`] took (chromedriver and Chromium).
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The end of chromedriver's log (with Chromium's own output in it).
    pub fn log(&self) -> String {
        tail(&self.log)
    }

    /// Runs `fut` to completion on the browser's runtime: for plain
    /// (blocking) tests. An async test awaits the helpers instead.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "Browser::block_on is for blocking tests: in an async test, .await the helpers"
        );
        self.rt
            .as_ref()
            .expect("the browser's runtime lives until drop")
            .block_on(fut)
    }

    /// Navigates to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))
    }

    /// Waits up to `timeout` for an element matching the CSS selector `css`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> anyhow::Result<Element> {
        match self
            .client
            .wait()
            .at_most(timeout)
            .every(Duration::from_millis(50))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(el) => Ok(el),
            Err(e) => {
                let url = self.client.current_url().await.map(String::from);
                Err(anyhow::anyhow!(
                    "no element matching {css:?} within {timeout:?} on {}: {e}",
                    url.unwrap_or_else(|e| format!("<no URL: {e}>"))
                ))
            }
        }
    }

    /// Runs `script` in the page as the body of a function (WebDriver's
    /// Execute Script): `return` the value wanted, e.g.
    /// `"return document.title"`. Promises are awaited.
    pub async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.client
            .execute(script, Vec::new())
            .await
            .with_context(|| format!("running {script:?}"))
    }

    /// Writes a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        let png = self
            .client
            .screenshot()
            .await
            .context("taking a screenshot")?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", tail(&self.log));
        }
        if let Some(rt) = self.rt.take() {
            // Ending the session makes chromedriver quit Chromium cleanly.
            let client = self.client.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            rt.spawn(async move {
                let _ = tx.send(client.close().await);
            });
            let _ = rx.recv_timeout(Duration::from_secs(10));
            // Not a plain drop: that panics inside an async test.
            rt.shutdown_background();
        }
        kill_group(&mut self.driver, self.dir.path());
    }
}

/// The binary named by `var`, else `default`; panics naming the package.
fn binary(var: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if !path.is_file() {
        panic!(
            "{} not found: the browser tests need Debian's `{package}` package \
             (scripts/deps installs it; or apt-get install {package}), or set {var} \
             to the binary",
            path.display()
        );
    }
    path
}

/// Starts chromedriver on a free loopback port and waits until it is ready.
fn start_driver(chromedriver: &Path, log: &Path) -> (Child, u16) {
    // A port found free can be taken before chromedriver binds it: retry.
    for _ in 0..3 {
        let port = free_port();
        let out = File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out.try_clone().expect("cloning the log file handle");
        let mut child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--enable-chrome-logs")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group, with the Chromium it starts: one kill.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let deadline = Instant::now() + DRIVER_READY;
        loop {
            if driver_ready(port) {
                return (child, port);
            }
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not answer /status on port {port} within {DRIVER_READY:?}:\n{}",
                    chromedriver.display(),
                    tail(log)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    panic!(
        "{} exited before it was ready, three times:\n{}",
        chromedriver.display(),
        tail(log)
    );
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free loopback port")
}

/// Whether chromedriver's `/status` says `"ready": true`.
fn driver_ready(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    // chromedriver speaks HTTP/1.1 only, and keeps the connection open:
    // the answer ends after Content-Length bytes of body.
    let req = format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if conn.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let body = loop {
        if let Some(end) = reply.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&reply[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len
                && reply.len() >= end + 4 + len
            {
                break reply[end + 4..end + 4 + len].to_vec();
            }
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    };
    serde_json::from_slice::<Value>(&body)
        .ok()
        .is_some_and(|v| v["value"]["ready"] == json!(true))
}

/// Kills chromedriver's process group (Chromium is in it), and then any
/// process whose command line still names `dir` (the profile directory:
/// Chromium's helpers, should one have left the group), and reaps
/// chromedriver.
fn kill_group(driver: &mut Child, dir: &Path) {
    let pgid = Pid::from_raw(driver.id() as i32);
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = driver.wait();
    let needle = dir.as_os_str().as_encoded_bytes();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_naming(needle);
        if left.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in left {
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live processes whose command line contains `needle`.
fn processes_naming(needle: &[u8]) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // A zombie has an empty command line, and is not "left".
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .map(Pid::from_raw)
        .collect()
}

/// The last 100 lines of the log at `path`, less Chromium's complaints that
/// the machine has no D-Bus (dozens at every start).
fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("dbus/") && !l.contains("D-Bus"))
        .collect();
    let start = lines.len().saturating_sub(100);
    format!(
        "----- chromedriver ({}) -----\n{}",
        path.display(),
        lines[start..].join("\n")
    )
}
