//! The API server's version, and whether it runs native sidecars.

use super::layout::NATIVE_SIDECARS;

/// `(major, minor)` from `/version`: `major` and `minor` as the API server
/// gives them (`"1"`, `"34"`, or `"34+"` on some managed clusters), falling
/// back to `gitVersion` (`v1.34.4`, `v1.30.2-gke.1587003`).
pub fn parse(major: &str, minor: &str, git_version: &str) -> Option<(u32, u32)> {
    let number = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    if let (Some(ma), Some(mi)) = (number(major), number(minor)) {
        return Some((ma, mi));
    }
    let mut parts = git_version.trim_start_matches('v').split('.');
    let ma = number(parts.next()?)?;
    let mi = number(parts.next()?)?;
    Some((ma, mi))
}

/// Whether pods get native sidecars (an init container with
/// `restartPolicy: Always`) without setting a feature gate: 1.29 and newer.
/// On 1.28 the gate may be on, but nothing says so from outside.
pub fn native_sidecars(version: (u32, u32)) -> bool {
    version >= NATIVE_SIDECARS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_managed_and_git_versions() {
        assert_eq!(parse("1", "34", "v1.34.4"), Some((1, 34)));
        assert_eq!(parse("1", "30+", "v1.30.2-gke.1587003"), Some((1, 30)));
        assert_eq!(parse("", "", "v1.28.15-eks-abc"), Some((1, 28)));
        assert_eq!(parse("", "", "v1.31"), Some((1, 31)));
        assert_eq!(parse("", "", "nonsense"), None);
        assert_eq!(parse("x", "y", ""), None);
    }

    #[test]
    fn native_sidecars_from_1_29() {
        assert!(!native_sidecars((1, 27)));
        assert!(!native_sidecars((1, 28)));
        assert!(native_sidecars((1, 29)));
        assert!(native_sidecars((1, 34)));
        assert!(native_sidecars((2, 0)));
    }
}
