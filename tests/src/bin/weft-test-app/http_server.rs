use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use socket2::SockRef;
use tokio::net::TcpListener;

use crate::db::Db;
use crate::resolver::CachingResolver;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The service this instance belongs to (reported by `/`).
    #[arg(long, env = "WEFT_TEST_SERVICE", default_value = "test")]
    service: String,
    #[arg(long, env = "WEFT_TEST_VERSION", default_value = "v1")]
    version: String,
    /// This instance's name; also sent as `x-served-by` on every response.
    #[arg(long, env = "WEFT_TEST_POD", default_value = "test-0")]
    pod: String,
    /// The namespace this instance runs in (reported by `/` and echoes).
    #[arg(long, env = "WEFT_TEST_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Answer every path not otherwise served (and `/` without --backend)
    /// with 200 and what the request was: path, query, method, host and
    /// headers, as the Gateway API conformance echo server does.
    #[arg(long)]
    echo_requests: bool,
    /// Share of requests (0..=1) answered with --fail-status instead.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    #[arg(long, default_value_t = 503)]
    fail_status: u16,
    /// Share of requests (0..=1) whose connection is reset (RST) unanswered.
    #[arg(long, default_value_t = 0.0)]
    reset_rate: f64,
    /// Added to every response (e.g. `50ms`), to make a slow instance.
    #[arg(long, value_parser = humantime::parse_duration)]
    latency: Option<Duration>,
    /// Makes this a frontend: `/` first GETs this URL (e.g.
    /// `http://backend/`) and answers with what it said.
    #[arg(long)]
    backend: Option<http::Uri>,
    /// With --backend: `/` also round-trips a ping through this TCP echo
    /// server (`host:port`, e.g. `db:6379`), on a new connection each time.
    #[arg(long)]
    db: Option<String>,
    /// Keep db connections open and reuse them, as a connection pool does.
    #[arg(long)]
    db_keep_alive: bool,
}

type Body = BoxBody<Bytes, hyper::Error>;

/// The client every outgoing call goes through: connections kept alive and
/// reused, names from the cache, as a real service's HTTP client does.
type HttpClient = Client<HttpConnector<CachingResolver>, Empty<Bytes>>;

/// How many requests `/_seen` remembers.
const SEEN: usize = 64;

#[derive(Debug)]
struct State {
    args: Args,
    requests: AtomicU64,
    client: HttpClient,
    db: Option<Db>,
    /// The last [`SEEN`] requests (`/_seen`), oldest first.
    seen: Mutex<VecDeque<serde_json::Value>>,
}

/// Returned by the handler to make hyper drop the connection.
#[derive(Debug, thiserror::Error)]
#[error("reset on purpose")]
struct Reset;

pub async fn serve(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.fail_rate) && (0.0..=1.0).contains(&args.reset_rate),
        "--fail-rate and --reset-rate are shares between 0 and 1"
    );
    StatusCode::from_u16(args.fail_status).context("--fail-status is not an HTTP status")?;
    let l = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, service = %args.service, version = %args.version, pod = %args.pod, "http server listening");
    let resolver = CachingResolver::default();
    let mut connector = HttpConnector::new_with_resolver(resolver.clone());
    connector.set_nodelay(true);
    let db = args
        .db
        .as_deref()
        .map(|addr| Db::new(addr, resolver, args.db_keep_alive))
        .transpose()?;
    let state = Arc::new(State {
        args,
        requests: AtomicU64::new(0),
        client: Client::builder(TokioExecutor::new()).build(connector),
        db,
        seen: Mutex::new(VecDeque::with_capacity(SEEN)),
    });
    loop {
        let (stream, peer) = l.accept().await?;
        let _ = stream.set_nodelay(true);
        // A second handle on the socket, to set SO_LINGER=0 before dropping
        // the connection when a reset is wanted.
        let std_stream = stream.into_std()?;
        let handle = Arc::new(std_stream.try_clone()?);
        let stream = tokio::net::TcpStream::from_std(std_stream)?;
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (state, handle) = (state.clone(), handle.clone());
                async move {
                    // A HEAD answer has the GET answer's headers and no body
                    // (hyper's HTTP/2 server would send one).
                    let head = req.method() == http::Method::HEAD;
                    let set = echo_set_headers(req.headers());
                    let mut res = handle_request(req, &state, &handle).await?;
                    apply_headers(res.headers_mut(), set);
                    Ok::<_, Reset>(if head { without_body(res) } else { res })
                }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "http connection");
            }
        });
    }
}

async fn handle_request(
    req: Request<Incoming>,
    st: &State,
    sock: &std::net::TcpStream,
) -> Result<Response<Body>, Reset> {
    let path = req.uri().path().to_string();
    if path == "/_stats" {
        let n = st.requests.load(Ordering::Relaxed);
        return Ok(json_response(st, StatusCode::OK, json!({ "requests": n })));
    }
    if path == "/_seen" {
        let seen: Vec<_> = st.seen.lock().expect("seen").iter().cloned().collect();
        return Ok(json_response(
            st,
            StatusCode::OK,
            json!({ "requests": seen }),
        ));
    }
    st.requests.fetch_add(1, Ordering::Relaxed);
    {
        let mut seen = st.seen.lock().expect("seen");
        if seen.len() == SEEN {
            seen.pop_front();
        }
        seen.push_back(json!({
            "path": path,
            "query": req.uri().query().unwrap_or_default(),
            "method": req.method().as_str(),
            "headers": header_map(req.headers()),
        }));
    }
    if let Some(l) = st.args.latency {
        tokio::time::sleep(l).await;
    }

    if st.args.reset_rate > 0.0 && rand::random_bool(st.args.reset_rate) {
        let _ = SockRef::from(sock).set_linger(Some(Duration::ZERO));
        return Err(Reset);
    }
    if st.args.fail_rate > 0.0 && rand::random_bool(st.args.fail_rate) {
        let status =
            StatusCode::from_u16(st.args.fail_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Ok(json_response(
            st,
            status,
            json!({ "error": "failure injected" }),
        ));
    }

    if path == "/ws" {
        return Ok(websocket(req, st));
    }
    if req.method() == http::Method::CONNECT {
        return Ok(connect_echo(req, st));
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let res = match segments.as_slice() {
        [""] if st.args.backend.is_some() => frontend(st, req.headers()).await,
        [""] if st.args.echo_requests => echo_request(st, &req),
        [""] => json_response(
            st,
            StatusCode::OK,
            json!({
                "service": st.args.service,
                "version": st.args.version,
                "pod": st.args.pod,
                "namespace": st.args.namespace,
                "path": path,
                "method": req.method().as_str(),
                "host": host(&req),
            }),
        ),
        ["status", code] => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => json_response(st, status, json!({ "status": status.as_u16() })),
            None => json_response(
                st,
                StatusCode::BAD_REQUEST,
                json!({ "error": "bad status code" }),
            ),
        },
        ["delay", ms] => match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json_response(st, StatusCode::OK, json!({ "delayed_ms": ms }))
            }
            Err(_) => json_response(st, StatusCode::BAD_REQUEST, json!({ "error": "bad delay" })),
        },
        ["headers"] => json_response(
            st,
            StatusCode::OK,
            json!({ "headers": header_map(req.headers()) }),
        ),
        ["forward", target, rest @ ..] => forward(st, target, rest, req.headers()).await,
        ["echo"] => {
            // Streams the body (and trailers) back as it arrives.
            let mut res = Response::new(req.into_body().boxed());
            served_by(st, &mut res);
            res
        }
        _ if st.args.echo_requests => echo_request(st, &req),
        _ => json_response(
            st,
            StatusCode::NOT_FOUND,
            json!({ "error": "no such path" }),
        ),
    };
    Ok(res)
}

/// `--echo-requests`: 200 and what the request was.
fn echo_request(st: &State, req: &Request<Incoming>) -> Response<Body> {
    json_response(
        st,
        StatusCode::OK,
        json!({
            "path": req.uri().path(),
            "query": req.uri().query().unwrap_or_default(),
            "method": req.method().as_str(),
            "host": host(req),
            "headers": header_map(req.headers()),
            "service": st.args.service,
            "version": st.args.version,
            "pod": st.args.pod,
            "namespace": st.args.namespace,
        }),
    )
}

/// The `Host` header, or the `:authority` of an HTTP/2 request; "" without.
fn host<B>(req: &Request<B>) -> String {
    req.headers()
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// Headers by (lowercase) name, the values of a repeated one joined with ", ".
pub(crate) fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map = BTreeMap::<String, String>::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_string())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    map
}

/// The request header that sets response headers, as in the Gateway API
/// conformance echo server: `x-echo-set-header: name:value,name2:value2`.
pub(crate) const ECHO_SET_HEADER: &str = "x-echo-set-header";

/// The response headers every `x-echo-set-header` asks for, in order (so the
/// last of a name wins when they are applied). Pairs without a `:`, and
/// invalid names or values, are left out.
pub(crate) fn echo_set_headers(headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .get_all(ECHO_SET_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|pair| {
            let (name, value) = pair.split_once(':')?;
            let name = HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            let value = HeaderValue::from_str(value.trim()).ok()?;
            Some((name, value))
        })
        .collect()
}

/// Inserts `set` into `headers` (replacing what a name had before).
pub(crate) fn apply_headers(headers: &mut HeaderMap, set: Vec<(HeaderName, HeaderValue)>) {
    for (name, value) in set {
        headers.insert(name, value);
    }
}

fn served_by(st: &State, res: &mut Response<Body>) {
    if let Ok(v) = header::HeaderValue::from_str(&st.args.pod) {
        res.headers_mut().insert("x-served-by", v);
    }
}

/// The response's headers, with the length its body would have had.
fn without_body(res: Response<Body>) -> Response<Body> {
    use hyper::body::Body as _;
    let (mut parts, body) = res.into_parts();
    if let Some(n) = body.size_hint().exact() {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
    }
    Response::from_parts(
        parts,
        Full::new(Bytes::new())
            .map_err(|e: Infallible| match e {})
            .boxed(),
    )
}

fn json_response(st: &State, status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut body = body.to_string();
    body.push('\n');
    let mut res = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    served_by(st, &mut res);
    res
}

/// `/ws`: a WebSocket echo (text and binary frames come back as sent).
fn websocket(mut req: Request<Incoming>, st: &State) -> Response<Body> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return json_response(
            st,
            StatusCode::BAD_REQUEST,
            json!({ "error": "not a WebSocket handshake" }),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut res = Response::new(
        Full::new(Bytes::new())
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    served_by(st, &mut res);
    res
}

/// CONNECT: accepts the tunnel and echoes whatever comes through it.
fn connect_echo(mut req: Request<Incoming>, st: &State) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let mut res = Response::new(
        Full::new(Bytes::new())
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    served_by(st, &mut res);
    res
}

/// A frontend's `/`: the backend's answer (its status passed on) and the db's
/// echo; 502 when either cannot be reached.
async fn frontend(st: &State, headers: &http::HeaderMap) -> Response<Body> {
    let Some(backend) = &st.args.backend else {
        return json_response(st, StatusCode::NOT_FOUND, json!({ "error": "no backend" }));
    };
    let target = backend.authority().map(|a| a.as_str()).unwrap_or_default();
    let path: Vec<&str> = backend.path().trim_matches('/').split('/').collect();
    let res = forward(st, target, &path, headers).await;
    if !res.status().is_success() {
        return res;
    }
    let status = res.status();
    let body = read_all(res.into_body()).await;
    let backend: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let db = match &st.db {
        Some(db) => match db.ping().await {
            Ok(()) => json!("ok"),
            Err(e) => {
                let addr = st.args.db.as_deref().unwrap_or_default();
                return json_response(
                    st,
                    StatusCode::BAD_GATEWAY,
                    json!({ "error": format!("db {addr}: {e}") }),
                );
            }
        },
        None => serde_json::Value::Null,
    };
    json_response(
        st,
        status,
        json!({ "service": st.args.service, "pod": st.args.pod, "backend": backend, "db": db }),
    )
}

/// The whole body; what arrived before an error, nothing, is all there is.
async fn read_all<B: hyper::body::Body<Data = Bytes>>(body: B) -> Bytes {
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}

/// `/forward/<host:port>/<path>`: calls `http://host:port/path`, passing the
/// trace headers on (as an instrumented app would), and answers with what it
/// got back.
async fn forward(
    st: &State,
    target: &str,
    rest: &[&str],
    headers: &http::HeaderMap,
) -> Response<Body> {
    const TRACE: [&str; 7] = [
        "traceparent",
        "tracestate",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
    ];
    let url = format!("http://{target}/{}", rest.join("/"));
    let mut req = Request::get(url.as_str());
    for h in TRACE {
        if let Some(v) = headers.get(h) {
            req = req.header(h, v);
        }
    }
    let Ok(req) = req.body(Empty::new()) else {
        return json_response(
            st,
            StatusCode::BAD_REQUEST,
            json!({ "error": "bad forward target" }),
        );
    };
    match st.client.request(req).await {
        Ok(res) => {
            let status = res.status();
            let body = read_all(res.into_body()).await;
            let mut out =
                Response::new(Full::new(body).map_err(|e: Infallible| match e {}).boxed());
            *out.status_mut() = status;
            served_by(st, &mut out);
            out
        }
        Err(e) => json_response(
            st,
            StatusCode::BAD_GATEWAY,
            json!({ "error": e.to_string() }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(ECHO_SET_HEADER, HeaderValue::from_str(v).unwrap());
        }
        h.insert("x-other", HeaderValue::from_static("a:b"));
        h
    }

    fn set(values: &[&str]) -> Vec<(String, String)> {
        echo_set_headers(&request(values))
            .into_iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn pairs_are_split_and_trimmed() {
        assert_eq!(
            set(&["X-Header-Set-1: one, x-header-set-2:two:with:colons"]),
            [
                ("x-header-set-1".into(), "one".into()),
                ("x-header-set-2".into(), "two:with:colons".into()),
            ]
        );
        assert_eq!(set(&["x-empty:"]), [("x-empty".into(), String::new())]);
    }

    #[test]
    fn every_header_applies_and_the_last_wins() {
        let mut res = HeaderMap::new();
        res.insert("x-a", HeaderValue::from_static("before"));
        res.append("x-b", HeaderValue::from_static("1"));
        res.append("x-b", HeaderValue::from_static("2"));
        apply_headers(
            &mut res,
            echo_set_headers(&request(&["x-a:1,x-c:3", "x-a:2,x-b:only"])),
        );
        assert_eq!(res.get_all("x-a").iter().collect::<Vec<_>>(), ["2"]);
        assert_eq!(res.get_all("x-b").iter().collect::<Vec<_>>(), ["only"]);
        assert_eq!(res["x-c"], "3");
        assert!(res.get("x-other").is_none());
    }

    #[test]
    fn invalid_pairs_are_ignored() {
        assert_eq!(
            set(&["no-colon, :no-name, bad name:v, x-ok:fine"]),
            [("x-ok".into(), "fine".into())]
        );
        assert!(set(&[]).is_empty());
        let mut h = HeaderMap::new();
        h.insert(
            ECHO_SET_HEADER,
            HeaderValue::from_bytes(b"x-a:\xff").unwrap(),
        );
        assert!(echo_set_headers(&h).is_empty());
    }
}
