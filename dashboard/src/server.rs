//! The page and its data: `/` (the page), `/app.js`, `/style.css`,
//! `/api/model` (the latest picture as JSON) and `/api/events` (the same,
//! pushed as server-sent events at every read).
//!
//! The page is static and builds everything from the JSON with DOM calls
//! (never markup from data: a pod or route name cannot inject script), and
//! its Content-Security-Policy allows only its own script. Requests must
//! name this server by an IP address, `localhost` or an allowed host name,
//! so a web page elsewhere cannot read it through DNS rebinding.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_stream::wrappers::WatchStream;

/// The latest picture, serialized once per read for every viewer.
pub type Latest = watch::Receiver<Option<Arc<str>>>;

/// Open event streams at once; more get 503 (each holds a task).
const MAX_STREAMS: usize = 64;
/// A client must send its request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

#[derive(Clone, Debug)]
struct App {
    latest: Latest,
    streams: Arc<Semaphore>,
    allowed_hosts: Arc<Vec<String>>,
}

/// The routes, with the Host check and the security headers.
pub fn router(latest: Latest, allowed_hosts: Vec<String>) -> Router {
    let app = App {
        latest,
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        allowed_hosts: Arc::new(allowed_hosts),
    };
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { page("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/model", get(model))
        .route("/api/events", get(events))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

fn page(ctype: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, ctype)], body).into_response()
}

async fn model(State(app): State<App>) -> Response {
    let latest = app.latest.borrow().clone();
    match latest {
        Some(json) => (
            [(header::CONTENT_TYPE, "application/json")],
            json.to_string(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "nothing read yet; try again in a moment\n",
        )
            .into_response(),
    }
}

async fn events(State(app): State<App>) -> Response {
    let Ok(permit) = app.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many open event streams\n",
        )
            .into_response();
    };
    let stream = WatchStream::new(app.latest.clone()).filter_map(move |m| {
        // The permit lives as long as the stream.
        let _held = &permit;
        std::future::ready(
            m.map(|json| Ok::<_, Infallible>(Event::default().event("model").data(&*json))),
        )
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Refuses a request that does not name this server by an address,
/// `localhost` or an allowed name; adds the security headers.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !host_allowed(host, &app.allowed_hosts) {
        let msg = format!(
            "the dashboard does not answer to the host name {host:?}; open it by address \
             (http://127.0.0.1:PORT) or add the name with --allowed-host\n"
        );
        return (StatusCode::FORBIDDEN, msg).into_response();
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `Host` without its port: an IP address, `localhost`, or one of `allowed`.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, router: Router) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (builder, svc) = (builder.clone(), TowerToHyperService::new(router.clone()));
        tokio::spawn(async move {
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(
        router: Router,
        host: &str,
        path: &str,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let req = Request::builder()
            .uri(path)
            .header(header::HOST, host)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = router.oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn serves_the_page_and_the_latest_picture_to_its_own_host_only() {
        let (tx, rx) = watch::channel(None);
        let router = super::router(rx, Vec::new());
        let (status, _, body) = call(router.clone(), "127.0.0.1:9900", "/api/model").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        tx.send(Some(Arc::from("{\"nodes\":[]}"))).unwrap();
        let (status, headers, body) = call(router.clone(), "localhost:9900", "/api/model").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "{\"nodes\":[]}"));
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        let (status, _, page) = call(router.clone(), "127.0.0.1:9900", "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("<script src=\"/app.js\""), "{page}");
        // A page that rebinds its own name to 127.0.0.1 gets nothing.
        let (status, _, body) = call(router, "attacker.example:9900", "/api/model").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }

    #[test]
    fn only_addresses_localhost_and_allowed_names_are_answered() {
        let allowed = vec!["dash.example".to_string()];
        for ok in [
            "127.0.0.1:9900",
            "localhost:9900",
            "[::1]:9900",
            "10.0.0.5",
            "dash.example:80",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in ["evil.example:9900", "", "localhost.evil.example"] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }
}
