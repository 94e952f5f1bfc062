//! Fault injection, at the client's sidecar where a route rule is matched:
//! a FaultInjection a rule refers to delays and/or aborts a share of its
//! requests (drawn independently, in parts per million), optionally only
//! those carrying given headers. What is injected is marked (`weft-error:
//! fault-injected`, the access log's `fault`, the span's `weft.fault`) so
//! that nobody mistakes it for a real failure.

use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};
use weft_api::v1;

/// Parts per million: a share drawn below this is hit.
const MILLION: u32 = 1_000_000;

/// What an aborted request is answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort {
    pub http: StatusCode,
    /// The gRPC status for gRPC callers (trailers-only).
    pub grpc: u32,
}

/// A rule's fault, compiled once per snapshot.
#[derive(Debug)]
pub struct Fault {
    /// `namespace/name` of the FaultInjection.
    pub name: String,
    delay: Option<(Duration, u32)>,
    abort: Option<(Abort, u32)>,
    headers: Vec<(HeaderName, String)>,
}

/// What one request gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl Injected {
    /// For the access log and the span: `delay`, `abort`, `delay,abort`,
    /// or empty.
    pub fn kind(&self) -> &'static str {
        match (self.delay.is_some(), self.abort.is_some()) {
            (true, true) => "delay,abort",
            (true, false) => "delay",
            (false, true) => "abort",
            (false, false) => "",
        }
    }
}

impl Fault {
    pub fn new(f: &v1::Fault) -> Fault {
        let grpc = f.abort_grpc_status;
        let http = u16::try_from(f.abort_http_status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or_else(|| http_of_grpc(grpc.unwrap_or(2)));
        let abort = Abort {
            http,
            grpc: grpc.unwrap_or_else(|| grpc_of_http(http)),
        };
        Fault {
            name: f.name.clone(),
            delay: (f.delay_ppm > 0)
                .then(|| (Duration::from_millis(u64::from(f.delay_ms)), f.delay_ppm)),
            abort: (f.abort_ppm > 0).then_some((abort, f.abort_ppm)),
            headers: f
                .headers
                .iter()
                .filter_map(|h| Some((h.name.parse().ok()?, h.value.clone())))
                .collect(),
        }
    }

    /// The fault one request gets (none, if it lacks a header the fault
    /// asks for).
    pub fn sample(&self, headers: &HeaderMap) -> Injected {
        self.sample_with(headers, || rand::random_range(0..MILLION))
    }

    /// [`Fault::sample`] with the draws (each in 0..1,000,000) given.
    fn sample_with(&self, headers: &HeaderMap, mut draw: impl FnMut() -> u32) -> Injected {
        let targeted = self.headers.iter().all(|(name, value)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes())
        });
        if !targeted {
            return Injected::default();
        }
        Injected {
            delay: self.delay.and_then(|(d, ppm)| (draw() < ppm).then_some(d)),
            abort: self.abort.and_then(|(a, ppm)| (draw() < ppm).then_some(a)),
        }
    }
}

/// The gRPC status a gRPC client would read from this HTTP status (gRPC's
/// own mapping, "HTTP to gRPC Status Code Mapping").
fn grpc_of_http(s: StatusCode) -> u32 {
    match s.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// The HTTP status for a gRPC status (google.rpc.Code's mapping).
fn http_of_grpc(code: u32) -> StatusCode {
    let s = match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    };
    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(delay_ppm: u32, abort_ppm: u32) -> v1::Fault {
        v1::Fault {
            name: "shop/flaky".into(),
            delay_ms: 20,
            delay_ppm,
            abort_http_status: 503,
            abort_grpc_status: None,
            abort_ppm,
            headers: vec![],
        }
    }

    #[test]
    fn draws_below_the_share_are_hit() {
        let f = Fault::new(&fault(100_000, 1));
        let none = HeaderMap::new();
        let both = f.sample_with(&none, || 0);
        assert_eq!(both.delay, Some(Duration::from_millis(20)));
        assert_eq!(
            both.abort,
            Some(Abort {
                http: StatusCode::SERVICE_UNAVAILABLE,
                grpc: 14
            })
        );
        assert_eq!(both.kind(), "delay,abort");
        // The delay's draw, then the abort's.
        let mut draws = [99_999, 1].into_iter();
        assert_eq!(
            f.sample_with(&none, || draws.next().unwrap()).kind(),
            "delay"
        );
        let mut draws = [100_000, 0].into_iter();
        assert_eq!(
            f.sample_with(&none, || draws.next().unwrap()).kind(),
            "abort"
        );
        assert_eq!(f.sample_with(&none, || MILLION - 1).kind(), "");
        // Off: never drawn.
        let off = Fault::new(&fault(0, 0));
        assert_eq!(off.sample_with(&none, || 0), Injected::default());
        let all = Fault::new(&fault(MILLION, MILLION));
        assert_eq!(all.sample_with(&none, || MILLION - 1).kind(), "delay,abort");
    }

    #[test]
    fn sampling_hits_its_share() {
        let f = Fault::new(&fault(200_000, 100_000));
        let none = HeaderMap::new();
        let n = 100_000;
        let (mut delayed, mut aborted) = (0, 0);
        for _ in 0..n {
            let i = f.sample(&none);
            delayed += usize::from(i.delay.is_some());
            aborted += usize::from(i.abort.is_some());
        }
        // 4.5 sigma: sqrt(n p (1-p)) is 126 and 95.
        assert!(
            (20_000 - 570..=20_000 + 570).contains(&delayed),
            "{delayed}"
        );
        assert!(
            (10_000 - 430..=10_000 + 430).contains(&aborted),
            "{aborted}"
        );
    }

    #[test]
    fn only_requests_with_the_headers_are_targeted() {
        let mut v = fault(MILLION, MILLION);
        v.headers = vec![v1::Header {
            name: "x-fault".into(),
            value: "me".into(),
        }];
        let f = Fault::new(&v);
        let mut h = HeaderMap::new();
        assert_eq!(f.sample_with(&h, || 0), Injected::default());
        h.insert("x-fault", "someone-else".parse().unwrap());
        assert_eq!(f.sample_with(&h, || 0), Injected::default());
        h.append("x-fault", "me".parse().unwrap());
        assert_eq!(f.sample_with(&h, || 0).kind(), "delay,abort");
    }

    #[test]
    fn one_status_is_mapped_from_the_other() {
        let mut v = fault(0, MILLION);
        v.abort_http_status = 0;
        v.abort_grpc_status = Some(8);
        let a = Fault::new(&v).sample(&HeaderMap::new()).abort.unwrap();
        assert_eq!((a.http.as_u16(), a.grpc), (429, 8));
        v.abort_http_status = 404;
        v.abort_grpc_status = None;
        let a = Fault::new(&v).sample(&HeaderMap::new()).abort.unwrap();
        assert_eq!((a.http.as_u16(), a.grpc), (404, 12));
        v.abort_http_status = 418;
        v.abort_grpc_status = Some(10);
        let a = Fault::new(&v).sample(&HeaderMap::new()).abort.unwrap();
        assert_eq!((a.http.as_u16(), a.grpc), (418, 10));
    }
}
