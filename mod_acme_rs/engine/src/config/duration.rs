//! Durations as the directives write them: a positive whole number and one unit, `90s`, `15m`,
//! `12h`, `30d`.

use std::time::Duration;

/// Why a string is not a duration. The Display text completes `'<value>' is not a valid duration: ...`.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("it is empty (write it like 90s, 15m, 12h or 30d)")]
    Empty,
    #[error("it has no unit (add s, m, h or d, like 30d)")]
    MissingUnit,
    #[error("it has no number before the unit (like 30d)")]
    MissingNumber,
    #[error("unknown unit '{0}' (use s, m, h or d)")]
    UnknownUnit(String),
    #[error("use exactly one unit (like 36h, not 1d12h)")]
    SeveralUnits,
    #[error("it must be positive")]
    Negative,
    #[error("it must be a whole number (like 36h instead of 1.5d)")]
    Fractional,
    #[error("it must be greater than zero")]
    Zero,
    #[error("it is too large")]
    TooLarge,
    #[error("it does not start with a number (write it like 90s, 15m, 12h or 30d)")]
    NotANumber,
}

/// Parse `90s`, `15m`, `12h` or `30d`: a positive integer immediately followed by exactly one unit.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(if unit_seconds(unit).is_some() {
            DurationError::MissingNumber
        } else {
            DurationError::NotANumber
        });
    }
    if unit.starts_with(['.', ',']) {
        return Err(DurationError::Fractional);
    }
    let per_unit = match unit_seconds(unit) {
        Some(n) => n,
        None if unit.is_empty() => return Err(DurationError::MissingUnit),
        // `1d12h`: a known unit followed by more digits.
        // (`get`, not indexing: the unit may start with a multi-byte character.)
        None if unit.get(..1).and_then(unit_seconds).is_some()
            && unit.as_bytes().get(1).is_some_and(u8::is_ascii_digit) =>
        {
            return Err(DurationError::SeveralUnits)
        }
        None => return Err(DurationError::UnknownUnit(unit.to_string())),
    };
    let n: u64 = digits.parse().map_err(|_| DurationError::TooLarge)?;
    if n == 0 {
        return Err(DurationError::Zero);
    }
    n.checked_mul(per_unit)
        .map(Duration::from_secs)
        .ok_or(DurationError::TooLarge)
}

fn unit_seconds(unit: &str) -> Option<u64> {
    match unit {
        "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3600),
        "d" => Some(86400),
        _ => None,
    }
}

/// Write a duration back in the largest unit that divides it exactly (for messages and status).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".to_string(),
        _ if s % 86400 == 0 => format!("{}d", s / 86400),
        _ if s % 3600 == 0 => format!("{}h", s / 3600),
        _ if s % 60 == 0 => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_duration("007s"), Ok(Duration::from_secs(7)));
    }

    #[test]
    fn bad_durations() {
        use DurationError::*;
        let cases = [
            ("", Empty),
            ("10", MissingUnit),
            ("10x", UnknownUnit("x".into())),
            ("10days", UnknownUnit("days".into())),
            ("-5d", Negative),
            ("0d", Zero),
            ("d", MissingNumber),
            ("abc", NotANumber),
            ("1.5d", Fractional),
            ("1d12h", SeveralUnits),
            ("1é", UnknownUnit("é".into())),
            ("5dé", UnknownUnit("dé".into())),
            ("99999999999999999999d", TooLarge),
            ("999999999999999d", TooLarge),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s), Err(want), "{s}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(Duration::from_secs(86400 * 30)), "30d");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }
}
