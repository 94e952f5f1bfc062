//! Workload identities: SPIFFE IDs of the form
//! `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, carried as the URI
//! SAN of workload certificates.

use std::fmt;
use std::str::FromStr;

/// A workload's SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error(
        "`{0}` is not a SPIFFE ID: expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"
    )]
    Shape(String),
    #[error("`{0}` in `{1}` is not a valid DNS-1123 name (lowercase letters, digits, '-', '.')")]
    Name(String, String),
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let whole = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        for part in [trust_domain, namespace, service_account] {
            if !valid_name(part) {
                return Err(SpiffeIdError::Name(part.to_string(), whole));
            }
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The SPIFFE ID of an X.509 SVID: its URI SAN, of which the SPIFFE
    /// X.509-SVID standard (section 2) allows exactly one. A certificate
    /// with none, or with two (which would let one certificate speak as two
    /// workloads), is not an SVID.
    pub fn from_svid(der: &[u8]) -> Result<SpiffeId, SvidError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|_| SvidError::Unparsable)?;
        let uris: Vec<&str> = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(_) => return Err(SvidError::Unparsable),
        };
        match uris.as_slice() {
            [uri] => uri
                .parse()
                .map_err(|e: SpiffeIdError| SvidError::NotSpiffe {
                    uri: (*uri).to_string(),
                    reason: e.to_string(),
                }),
            other => Err(SvidError::UriCount(other.len())),
        }
    }

    /// The SPIFFE IDs among a DER certificate's URI SANs. Anything else (no
    /// URI SAN, an unparsable certificate) gives an empty list.
    pub fn from_certificate(der: &[u8]) -> Vec<SpiffeId> {
        use x509_parser::extensions::GeneralName;
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return Vec::new();
        };
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return Vec::new();
        };
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => u.parse().ok(),
                _ => None,
            })
            .collect()
    }
}

/// Why a certificate is not an X.509 SVID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("not a parsable X.509 certificate")]
    Unparsable,
    #[error("{0} URI SANs (an X.509 SVID has exactly one)")]
    UriCount(usize),
    #[error("URI SAN `{uri}` is not a SPIFFE ID: {reason}")]
    NotSpiffe { uri: String, reason: String },
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shape = || SpiffeIdError::Shape(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(shape)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => SpiffeId::new(td, ns, sa),
            _ => Err(shape()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns/A/sa/b",
            "spiffe://cluster.local/ns//sa/b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
        }
    }
}
