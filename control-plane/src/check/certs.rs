//! PEM bundles as sets of certificates, compared by their DER bytes, and the
//! rule that says whether a CA is fit for the next month.

use std::collections::BTreeSet;

use time::OffsetDateTime;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("not PEM: {0}")]
    NotPem(String),
    #[error("no PEM CERTIFICATE block in it")]
    Empty,
    #[error("certificate {index} does not parse as X.509: {message}")]
    NotX509 { index: usize, message: String },
}

/// One certificate of a bundle: its DER and what a person reads of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cert {
    pub der: Vec<u8>,
    pub subject: String,
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Cert {
    /// `CN=weft root (serial 1a2b3c4d…)`.
    pub fn describe(&self) -> String {
        let serial = if self.serial.len() > 12 {
            format!("{}…", &self.serial[..12])
        } else {
            self.serial.clone()
        };
        format!("{} (serial {serial})", self.subject)
    }
}

/// Every CERTIFICATE block of `pem`, parsed; other blocks (a key) are
/// skipped. At least one certificate is required.
pub fn parse_bundle(pem: &[u8]) -> Result<Vec<Cert>, CertError> {
    let blocks = pem::parse_many(pem).map_err(|e| CertError::NotPem(e.to_string()))?;
    let mut out = Vec::new();
    for (index, block) in blocks
        .iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .enumerate()
    {
        let der = block.contents().to_vec();
        let (_, x509) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::NotX509 {
                index: index + 1,
                message: e.to_string(),
            })?;
        let validity = x509.validity();
        out.push(Cert {
            subject: x509.subject().to_string(),
            serial: x509.raw_serial_as_string().replace(':', ""),
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            der: der.clone(),
        });
    }
    if out.is_empty() {
        return Err(CertError::Empty);
    }
    Ok(out)
}

/// How two bundles differ, as sets of certificates (order and repeats do
/// not matter; PEM whitespace and line length do not either).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// In the first bundle only (descriptions).
    pub only_first: Vec<String>,
    /// In the second bundle only.
    pub only_second: Vec<String>,
    /// In both.
    pub common: usize,
}

impl Diff {
    pub fn same(&self) -> bool {
        self.only_first.is_empty() && self.only_second.is_empty()
    }
}

pub fn compare(first: &[Cert], second: &[Cert]) -> Diff {
    let a: BTreeSet<&[u8]> = first.iter().map(|c| c.der.as_slice()).collect();
    let b: BTreeSet<&[u8]> = second.iter().map(|c| c.der.as_slice()).collect();
    let only = |certs: &[Cert], other: &BTreeSet<&[u8]>| {
        let mut seen = BTreeSet::new();
        certs
            .iter()
            .filter(|c| !other.contains(c.der.as_slice()) && seen.insert(c.der.as_slice()))
            .map(Cert::describe)
            .collect()
    };
    Diff {
        only_first: only(first, &b),
        only_second: only(second, &a),
        common: a.intersection(&b).count(),
    }
}

/// Where a certificate stands at `now`, with `margin_days` of warning.
#[derive(Debug, PartialEq, Eq)]
pub enum Validity {
    /// Valid for `days_left` more days, at least the margin.
    Valid {
        days_left: i64,
    },
    /// Valid now, but ends within the margin.
    Expiring {
        days_left: i64,
    },
    Expired,
    NotYetValid,
}

pub fn validity(cert: &Cert, now: OffsetDateTime, margin_days: i64) -> Validity {
    if now < cert.not_before {
        return Validity::NotYetValid;
    }
    if now > cert.not_after {
        return Validity::Expired;
    }
    let left = cert.not_after - now;
    let days_left = left.whole_days();
    if left < time::Duration::days(margin_days) {
        Validity::Expiring { days_left }
    } else {
        Validity::Valid { days_left }
    }
}

/// The certificate of `certs` that ends first.
pub fn earliest_end(certs: &[Cert]) -> Option<&Cert> {
    certs.iter().min_by_key(|c| c.not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, days: i64) -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn the_same_certificates_in_another_order_and_layout_are_the_same() {
        let (a, b) = (cert("root a", 365), cert("root b", 365));
        let first = parse_bundle(format!("{a}{b}").as_bytes()).unwrap();
        // Reordered, with CRLF line ends, blank lines and a key around.
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let second_text = format!("{key}\n{b}\n\n{a}").replace('\n', "\r\n");
        let second = parse_bundle(second_text.as_bytes()).unwrap();
        assert_eq!(second.len(), 2);
        let d = compare(&first, &second);
        assert!(d.same(), "{d:?}");
        assert_eq!(d.common, 2);
    }

    #[test]
    fn a_missing_or_extra_certificate_is_named() {
        let (a, b, c) = (
            cert("root a", 365),
            cert("root b", 365),
            cert("root c", 365),
        );
        let first = parse_bundle(format!("{a}{b}").as_bytes()).unwrap();
        let second = parse_bundle(format!("{a}{c}").as_bytes()).unwrap();
        let d = compare(&first, &second);
        assert!(!d.same());
        assert_eq!(d.common, 1);
        assert_eq!(d.only_first.len(), 1);
        assert!(d.only_first[0].starts_with("CN=root b (serial "), "{d:?}");
        assert!(d.only_second[0].starts_with("CN=root c"), "{d:?}");
        // Two certificates with the same name still differ.
        let again = parse_bundle(cert("root a", 365).as_bytes()).unwrap();
        let a_only = parse_bundle(a.as_bytes()).unwrap();
        assert!(!compare(&a_only, &again).same());
    }

    #[test]
    fn bad_bundles_say_what_is_wrong() {
        assert_eq!(parse_bundle(b""), Err(CertError::Empty));
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert_eq!(parse_bundle(key.as_bytes()), Err(CertError::Empty));
        let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_bundle(junk.as_bytes()),
            Err(CertError::NotX509 { index: 1, .. })
        ));
        let broken = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_bundle(broken.as_bytes()),
            Err(CertError::NotPem(_))
        ));
    }

    #[test]
    fn the_expiry_rule() {
        let c = parse_bundle(cert("root", 365).as_bytes())
            .unwrap()
            .remove(0);
        let now = OffsetDateTime::now_utc();
        assert!(matches!(
            validity(&c, now, 30),
            Validity::Valid {
                days_left: 364 | 365
            }
        ));
        // 29 days before the end: within the margin.
        let late = c.not_after - time::Duration::days(29);
        assert_eq!(validity(&c, late, 30), Validity::Expiring { days_left: 29 });
        // Exactly 30 days before the end still passes.
        let edge = c.not_after - time::Duration::days(30);
        assert_eq!(validity(&c, edge, 30), Validity::Valid { days_left: 30 });
        assert_eq!(
            validity(&c, c.not_after + time::Duration::seconds(1), 30),
            Validity::Expired
        );
        assert_eq!(
            validity(&c, c.not_before - time::Duration::seconds(1), 30),
            Validity::NotYetValid
        );
        let short =
            parse_bundle(format!("{}{}", cert("a", 400), cert("b", 10)).as_bytes()).unwrap();
        assert_eq!(
            earliest_end(&short).map(|c| c.subject.as_str()),
            Some("CN=b")
        );
    }
}
