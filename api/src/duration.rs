//! The one parser for durations given on command lines (`500ms`, `5s`,
//! `1m30s`), so every binary accepts the same forms and says the same thing
//! when one does not parse.

use std::time::Duration;

/// A command-line duration that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("`{value}` is not a duration like 500ms, 5s or 1m30s: {reason}")]
pub struct DurationError {
    value: String,
    reason: humantime::DurationError,
}

/// Parses `500ms`, `5s`, `1m30s` and the like (clap's `value_parser`).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(s).map_err(|reason| DurationError {
        value: s.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms_and_names_a_bad_one() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        let e = parse("soon").unwrap_err().to_string();
        assert!(e.starts_with("`soon` is not a duration"), "{e}");
    }
}
