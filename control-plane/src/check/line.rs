//! One check's result, as one line: `✔ name: detail` or
//! `✘ name: what is wrong — how to fix it`.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Pass {
        name: String,
        detail: String,
    },
    Fail {
        name: String,
        problem: String,
        fix: String,
    },
}

impl Line {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Line {
        Line::Pass {
            name: name.into(),
            detail: detail.into(),
        }
    }

    pub fn fail(
        name: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Line {
        Line::Fail {
            name: name.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    pub fn passed(&self) -> bool {
        matches!(self, Line::Pass { .. })
    }

    pub fn name(&self) -> &str {
        match self {
            Line::Pass { name, .. } | Line::Fail { name, .. } => name,
        }
    }
}

/// Keeps a line a line: newlines in API messages become spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Pass { name, detail } => write!(f, "✔ {name}: {}", one_line(detail)),
            Line::Fail { name, problem, fix } => {
                write!(f, "✘ {name}: {} — {}", one_line(problem), one_line(fix))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_passes_and_failures() {
        let ok = Line::pass(
            "API server",
            "https://10.0.0.1:6443 answers, Kubernetes v1.34.4",
        );
        assert_eq!(
            ok.to_string(),
            "✔ API server: https://10.0.0.1:6443 answers, Kubernetes v1.34.4"
        );
        assert!(ok.passed());
        let bad = Line::fail(
            "CRD trafficpolicies.weft.dev",
            "not installed",
            "weftctl install | kubectl apply -f -",
        );
        assert_eq!(
            bad.to_string(),
            "✘ CRD trafficpolicies.weft.dev: not installed — weftctl install | kubectl apply -f -"
        );
        assert!(!bad.passed());
        assert_eq!(bad.name(), "CRD trafficpolicies.weft.dev");
    }

    #[test]
    fn a_line_stays_one_line() {
        let l = Line::fail("x", "the API said:\n  no\tway\n", "try\nagain");
        assert_eq!(l.to_string(), "✘ x: the API said: no way — try again");
        assert_eq!(l.to_string().lines().count(), 1);
    }
}
