//! The Gateway API CORS filter: the sidecar answers a browser's preflight
//! itself (it never reaches the app) and adds the CORS headers to the answers
//! of allowed cross-origin requests. Built once per snapshot.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use weft_api::v1;

use super::{Body, full};

/// `scheme://host:port`, the port made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn parse(s: &str) -> Option<Origin> {
        let (scheme, rest) = s.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => 0,
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, p.parse().ok()?),
            _ => (rest, default),
        };
        (!host.is_empty()).then(|| Origin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether `origin` is allowed by this configured entry (whose host may
    /// start with the `*.` wildcard, any number of labels deep).
    fn allows(&self, origin: &Origin) -> bool {
        if self.scheme != origin.scheme || self.port != origin.port {
            return false;
        }
        match self.host.strip_prefix('*') {
            Some(suffix) => origin.host.ends_with(suffix) && origin.host.len() > suffix.len(),
            None => self.host == origin.host,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<Origin>,
    any_method: bool,
    methods: Option<HeaderValue>,
    any_header: bool,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

fn joined(list: &[String]) -> Option<HeaderValue> {
    let list: Vec<&str> = list
        .iter()
        .map(String::as_str)
        .filter(|s| *s != "*")
        .collect();
    (!list.is_empty())
        .then(|| HeaderValue::from_str(&list.join(", ")).ok())
        .flatten()
}

impl Cors {
    pub fn new(c: &v1::Cors) -> Cors {
        let star = |l: &[String]| l.iter().any(|s| s == "*");
        Cors {
            any_origin: star(&c.allow_origins),
            origins: c
                .allow_origins
                .iter()
                .filter_map(|o| Origin::parse(o))
                .collect(),
            any_method: star(&c.allow_methods),
            methods: joined(&c.allow_methods),
            any_header: star(&c.allow_headers),
            headers: joined(&c.allow_headers),
            expose: joined(&c.expose_headers),
            credentials: c.allow_credentials,
            max_age: HeaderValue::from(c.max_age_seconds.max(1)),
        }
    }

    fn allowed(&self, origin: &HeaderValue) -> bool {
        if self.any_origin {
            return true;
        }
        let Some(o) = origin.to_str().ok().and_then(Origin::parse) else {
            return false;
        };
        self.origins.iter().any(|c| c.allows(&o))
    }

    fn allow_origin(&self, origin: &HeaderValue, out: &mut HeaderMap) {
        let value = if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
        if !self.any_origin || self.credentials {
            out.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }

    /// The answer to a preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`); None for any other request.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response<Body>> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        let mut res = Response::new(full(Vec::new()));
        *res.status_mut() = StatusCode::NO_CONTENT;
        if !self.allowed(origin) {
            return Some(res);
        }
        let out = res.headers_mut();
        self.allow_origin(origin, out);
        let methods = match (self.any_method, self.credentials) {
            (true, true) => Some(requested.clone()),
            (true, false) => Some(HeaderValue::from_static("*")),
            (false, _) => self.methods.clone(),
        };
        if let Some(m) = methods {
            out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m);
        }
        if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            let allowed = match (self.any_header, self.credentials) {
                (true, true) => Some(asked.clone()),
                (true, false) => Some(HeaderValue::from_static("*")),
                (false, _) => self.headers.clone(),
            };
            if let Some(h) = allowed {
                out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, h);
            }
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Some(res)
    }

    /// Adds the CORS headers to the answer of an allowed cross-origin request.
    pub fn decorate(&self, origin: Option<&HeaderValue>, out: &mut HeaderMap) {
        if let Some(o) = origin.filter(|o| self.allowed(o)) {
            self.allow_origin(o, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(&v1::Cors {
            enabled: true,
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: vec!["GET".into(), "OPTIONS".into()],
            allow_headers: vec!["x-header-1".into()],
            expose_headers: vec!["x-expose".into()],
            allow_credentials: credentials,
            max_age_seconds: 3600,
        })
    }

    fn preflight(c: &Cors, origin: &str) -> Response<Body> {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            "GET".parse().unwrap(),
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "x-header-1".parse().unwrap(),
        );
        c.preflight(&Method::OPTIONS, &h).unwrap()
    }

    #[test]
    fn origins_match_exactly_or_by_wildcard_with_default_ports() {
        let c = cors(&["https://www.foo.com", "https://*.bar.com"], false);
        for (origin, ok) in [
            ("https://www.foo.com", true),
            ("https://www.foo.com:443", true),
            ("https://www.foo.com:8443", false),
            ("http://www.foo.com", false),
            ("https://www.bar.com", true),
            ("https://a.b.bar.com", true),
            ("https://bar.com", false),
            ("https://evilbar.com", false),
        ] {
            let res = preflight(&c, origin);
            assert_eq!(
                res.headers()
                    .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
                ok,
                "{origin}"
            );
        }
        let res = preflight(&c, "https://a.bar.com");
        let h = res.headers();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.bar.com");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, OPTIONS");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-header-1");
        assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-expose");
        assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "3600");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn a_wildcard_origin_is_echoed_when_credentials_are_allowed() {
        let any = cors(&["*"], false);
        let res = preflight(&any, "https://x.example:1234");
        assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let creds = cors(&["*"], true);
        let mut h = HeaderMap::new();
        creds.decorate(Some(&"https://x.example".parse().unwrap()), &mut h);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://x.example");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        // Not a preflight: no Access-Control-Request-Method.
        assert!(
            creds
                .preflight(&Method::OPTIONS, &HeaderMap::new())
                .is_none()
        );
    }
}
