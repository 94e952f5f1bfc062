//! Prometheus / OpenMetrics text, as samples.

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// A label's value, empty when absent.
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

/// Parses the text; lines it cannot read are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    parse_only(text, |_| true)
}

/// Parses the samples whose metric name `keep` accepts (the rest are not
/// even split into labels).
pub fn parse_only(text: &str, keep: impl Fn(&str) -> bool) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter(|l| keep(l.split(['{', ' ']).next().unwrap_or_default()))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.insert(key.to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_with_escapes_parse() {
        let s = parse(r#"x_total{a="q\"uote",b="c,d"} 2"#);
        assert_eq!(s[0].labels["a"], "q\"uote");
        assert_eq!(s[0].label("b"), "c,d");
        assert_eq!(s[0].value, 2.0);
    }

    #[test]
    fn only_kept_names_are_read() {
        let t = "# HELP a A.\na_total{x=\"1\"} 3\nb_total 4\nc 5\n# EOF\n";
        let s = parse_only(t, |n| n != "b_total");
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a_total", "c"]);
    }
}
