//! What the demo shows: the live table while it runs, and the summary at
//! the end (as text, or JSON for scripts and the e2e test).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::args::{Args, Scenario};
use crate::load::ClientSummary;
use crate::scenario::Event;
use crate::scrape::Scrape;
use crate::stats::{Row, fmt_opt};

/// Rows keyed by (service, route).
pub type Rows = BTreeMap<(String, String), Row>;

/// One row over the whole run.
#[derive(Debug, Serialize)]
pub struct RowSummary {
    service: String,
    route: String,
    protocol: &'static str,
    /// Requests (HTTP) or connections (opaque TCP) over the run.
    requests: f64,
    success_rate: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    mtls_share: Option<f64>,
    retries: f64,
}

impl RowSummary {
    fn of(r: &Row) -> RowSummary {
        RowSummary {
            service: r.service.clone(),
            route: r.route.clone(),
            protocol: r.protocol,
            requests: r.requests,
            success_rate: r.success_rate(),
            p50_ms: r.quantile(0.5),
            p99_ms: r.quantile(0.99),
            mtls_share: r.mtls_share(),
            retries: r.retries,
        }
    }

    /// What happened between the first scrape and the last.
    pub fn over_run(first: Option<&Rows>, last: Option<&Rows>) -> Vec<RowSummary> {
        let Some(last) = last else {
            return Vec::new();
        };
        last.values()
            .map(|r| {
                let before = first.and_then(|f| f.get(&(r.service.clone(), r.route.clone())));
                RowSummary::of(&r.since(before))
            })
            .collect()
    }
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub ended_by: &'static str,
    pub seconds: f64,
    /// What the demo's client saw calling the frontend.
    pub client: Option<ClientSummary>,
    /// Per Service and route, as the calling sidecars counted them.
    pub services: Vec<RowSummary>,
    pub proxies: usize,
    pub proxies_up: usize,
    pub control_plane_up: bool,
    pub events: Vec<Event>,
}

impl Summary {
    /// Whether the client saw at least 99% success.
    pub fn healthy(&self) -> bool {
        self.client
            .as_ref()
            .and_then(|c| c.success_rate)
            .is_some_and(|r| r >= 0.99)
    }
}

/// The live table: what happened since the previous scrape.
#[derive(Debug)]
pub struct Frame<'a> {
    pub rows: &'a Rows,
    pub prev: Option<&'a Rows>,
    pub scrape: &'a Scrape,
    pub client: Option<&'a ClientSummary>,
    pub elapsed: Duration,
    pub events: &'a [Event],
    /// Where to look further: the dashboard, the control plane, Prometheus.
    pub links: &'a str,
}

impl Frame<'_> {
    pub fn print(&self, args: &Args) {
        // Clear the screen and go home, so the table refreshes in place.
        let mut out = String::from("\x1b[2J\x1b[H");
        out.push_str(&self.header(args));
        out.push_str(&format!(
            "{:<22} {:<10} {:>8} {:>9} {:>9} {:>9} {:>6} {:>8}\n",
            "SERVICE", "ROUTE", "RPS", "SUCCESS", "P50 ms", "P99 ms", "mTLS", "RETRY/s"
        ));
        for (key, row) in self.rows {
            out.push_str(&table_line(row, self.prev.and_then(|p| p.get(key))));
        }
        if let Some(c) = self.client {
            out.push_str(&format!("\n{}\n", client_line(c)));
        }
        for e in self.events.iter().rev().take(5) {
            out.push_str(&format!("  at {:>5.1}s: {}\n", e.at_s, e.what));
        }
        out.push_str(self.links);
        out.push_str("\nRows are what callers' sidecars saw; (served): what a workload's own sidecar\nanswered; (tcp): connections. Ctrl-C ends the demo and removes the mesh.\n");
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    fn header(&self, args: &Args) -> String {
        let s = self.scrape;
        format!(
            "Weft demo · scenario {} · {:.0}s{} · proxies up {}/{} · control plane {} · current config {}/{}\n\n",
            args.scenario.name(),
            self.elapsed.as_secs_f64(),
            args.duration
                .map_or(String::new(), |d| format!(" of {}s", d.as_secs())),
            s.up,
            s.total,
            if s.control_up { "up" } else { "DOWN" },
            s.current,
            s.total,
        )
    }
}

/// One row of the live table, over the interval since `prev`.
fn table_line(row: &Row, prev: Option<&Row>) -> String {
    let d = row.since(prev);
    let (p50, p99) = if row.protocol == "http" {
        (
            fmt_opt(d.quantile(0.5), 1.0, 2),
            fmt_opt(d.quantile(0.99), 1.0, 2),
        )
    } else {
        ("-".to_string(), "-".to_string())
    };
    format!(
        "{:<22} {:<10} {:>8.1} {:>9} {:>9} {:>9} {:>6} {:>8.1}\n",
        row.service,
        route_name(row.protocol, &row.route),
        d.requests,
        fmt_opt(d.success_rate(), 100.0, 1) + "%",
        p50,
        p99,
        fmt_opt(d.mtls_share(), 100.0, 0) + "%",
        d.retries,
    )
}

fn client_line(c: &ClientSummary) -> String {
    format!(
        "client → frontend: {} requests, {}% ok, p50 {} ms, p99 {} ms",
        c.requests,
        fmt_opt(c.success_rate, 100.0, 2),
        fmt_opt(c.p50_ms, 1.0, 1),
        fmt_opt(c.p99_ms, 1.0, 1)
    )
}

/// `(tcp)` for opaque rows, `default` for the Service's own route.
fn route_name<'a>(protocol: &str, route: &'a str) -> &'a str {
    match (protocol, route) {
        ("tcp", _) => "(tcp)",
        ("served", _) => "(served)",
        (_, "") => "default",
        (_, r) => r,
    }
}

pub fn print_summary(s: &Summary) {
    println!("\nSummary ({:.0}s, ended by {}):", s.seconds, s.ended_by);
    if let Some(c) = &s.client {
        println!("  {}", client_line(c));
    }
    for r in &s.services {
        println!(
            "  {} {}: {} {}, {}% ok, {}% mTLS, {} retries",
            r.service,
            route_name(r.protocol, &r.route),
            r.requests,
            if r.protocol == "tcp" {
                "connections"
            } else {
                "requests"
            },
            fmt_opt(r.success_rate, 100.0, 2),
            fmt_opt(r.mtls_share, 100.0, 0),
            r.retries
        );
    }
}
