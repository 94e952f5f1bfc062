//! The headless-browser fixture itself: a real Chromium, through chromedriver,
//! opens a page served on loopback, waits for what its script adds, watches it
//! change, and takes a screenshot. Needs no root (only Debian's chromium and
//! chromium-driver, which scripts/deps installs).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use weft_e2e::Browser;

/// A page whose script counts up every 200 ms, and marks itself ready at the
/// first tick.
const PAGE: &str = r#"<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>weft browser self-test</title>
<style>
  body { font: 20px sans-serif; margin: 40px; background: #f3f5fa; color: #1c2333; }
  #counter { font-size: 96px; font-weight: bold; color: #2456c8; }
  .panel { border: 2px solid #2456c8; border-radius: 8px; padding: 20px; width: 480px;
           background: linear-gradient(90deg, #ffffff, #dbe6ff); }
</style>
</head>
<body>
<h1>Weft dashboard harness</h1>
<div class="panel">
  <div id="counter" data-kind="ticker">0</div>
  <p>ticks every 200 ms</p>
</div>
<script>
  let n = 0;
  setInterval(() => {
    n += 1;
    const c = document.getElementById("counter");
    c.textContent = String(n);
    if (n === 1) {
      const p = document.createElement("p");
      p.className = "ready";
      p.textContent = "running";
      document.body.appendChild(p);
    }
  }, 200);
</script>
</body>
</html>
"#;

/// Serves [`PAGE`] at `/` (404 elsewhere) until the runtime ends.
async fn serve(listener: TcpListener) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let (status, body) = if req.starts_with(b"GET / ") {
                ("200 OK", PAGE)
            } else {
                ("404 Not Found", "not found\n")
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[tokio::test]
async fn a_real_chromium_watches_a_page_change() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    // On this test's own (single-threaded) runtime: the browser's session
    // runs on the fixture's, so awaiting it leaves this one free to serve.
    tokio::spawn(serve(listener));

    let browser = Browser::start();
    eprintln!(
        "chromedriver and chromium started in {:?}",
        browser.startup()
    );
    let began = Instant::now();
    browser.goto(&url).await.expect("open the page");
    browser
        .wait_for("p.ready", Duration::from_secs(5))
        .await
        .expect("the page's script ran");
    let counter = browser
        .wait_for("#counter", Duration::from_secs(1))
        .await
        .expect("the counter");
    let first = counter.text().await.expect("counter text");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = counter.text().await.expect("counter text");
    let (a, b): (u64, u64) = (
        first.parse().expect("a number"),
        second.parse().expect("a number"),
    );
    assert!(b > a, "the counter went from {a} to {b} in 700 ms");
    assert_eq!(
        counter
            .attr("data-kind")
            .await
            .expect("attribute")
            .as_deref(),
        Some("ticker")
    );
    let title = browser
        .eval("return document.title")
        .await
        .expect("evaluate");
    assert_eq!(title, serde_json::json!("weft browser self-test"));

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-self-test.png");
    browser.screenshot(&shot).await.expect("screenshot");
    let png = std::fs::read(&shot).expect("read the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        shot.display()
    );
    assert!(png.len() > 1024, "a {}-byte screenshot", png.len());
    eprintln!(
        "page checks took {:?}; screenshot {} ({} bytes)",
        began.elapsed(),
        shot.display(),
        png.len()
    );
}

#[test]
fn a_blocking_test_drives_it_through_block_on() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    listener.set_nonblocking(true).expect("nonblocking");
    // The page is served from a thread of its own; it ends with the test
    // binary.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async { serve(TcpListener::from_std(listener).expect("listener")).await });
    });

    let browser = Browser::start();
    let ticks = browser.block_on(async {
        browser.goto(&url).await?;
        browser.wait_for("p.ready", Duration::from_secs(5)).await?;
        browser
            .eval("return Number(document.getElementById('counter').textContent)")
            .await
    });
    let ticks = ticks.expect("the page ran in the browser");
    assert!(ticks.as_u64().is_some_and(|n| n >= 1), "counter {ticks}");
}
