//! Port lists as users write them on the command line: `25,587,8000-8010`.

use std::fmt;
use std::str::FromStr;

/// An inclusive range of TCP/UDP ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    /// Written the way iptables' `--dport` takes it (`8000:8010`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// A comma-separated list of ports and ranges. Empty means no ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<PortRange>);

impl PortList {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(port))
    }
}

/// Why a port list did not parse; the message quotes the offending item.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortListError {
    #[error("`{0}` is not a port number (1-65535)")]
    NotAPort(String),
    #[error("`{0}` is not a port range: the first port is above the last")]
    Backwards(String),
}

fn parse_port(s: &str) -> Result<u16, PortListError> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(PortListError::NotAPort(s.trim().to_string())),
        Ok(p) => Ok(p),
    }
}

impl FromStr for PortList {
    type Err = PortListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let range = match item.split_once('-') {
                Some((a, b)) => {
                    let (first, last) = (parse_port(a)?, parse_port(b)?);
                    if first > last {
                        return Err(PortListError::Backwards(item.to_string()));
                    }
                    PortRange { first, last }
                }
                None => {
                    let p = parse_port(item)?;
                    PortRange { first: p, last: p }
                }
            };
            out.push(range);
        }
        Ok(PortList(out))
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.first == r.last {
                write!(f, "{}", r.first)?;
            } else {
                write!(f, "{}-{}", r.first, r.last)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_ranges() {
        let l: PortList = "22, 8000-8010,443".parse().unwrap();
        assert_eq!(l.0.len(), 3);
        assert!(l.contains(22) && l.contains(8005) && l.contains(443));
        assert!(!l.contains(8011));
        assert_eq!(l.to_string(), "22,8000-8010,443");
        assert_eq!(l.0[1].to_string(), "8000:8010");
    }

    #[test]
    fn empty_is_no_ports() {
        assert_eq!("".parse::<PortList>().unwrap(), PortList::default());
    }

    #[test]
    fn rejects_bad_items_by_name() {
        assert_eq!(
            "22,http".parse::<PortList>(),
            Err(PortListError::NotAPort("http".into()))
        );
        assert_eq!(
            "0".parse::<PortList>(),
            Err(PortListError::NotAPort("0".into()))
        );
        assert_eq!(
            "70000".parse::<PortList>(),
            Err(PortListError::NotAPort("70000".into()))
        );
        assert_eq!(
            "9-3".parse::<PortList>(),
            Err(PortListError::Backwards("9-3".into()))
        );
    }
}
