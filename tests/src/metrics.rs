//! Reading values out of Prometheus / OpenMetrics text.

/// The value of the sample whose name and labels are exactly `series`
/// (e.g. `tcp_open_total{direction="outbound"}`), if present.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_exact_series() {
        let t = "# HELP x\nx_total{d=\"a\"} 3\nx_total{d=\"b\"} 4.5\n# EOF\n";
        assert_eq!(super::value(t, "x_total{d=\"b\"}"), Some(4.5));
        assert_eq!(super::value(t, "x_total"), None);
    }
}
