//! The duration notation of the config file: an integer amount followed by a unit.

use std::time::Duration;

/// The accepted forms, quoted in every duration error message.
pub(crate) const DURATION_FORMS: &str = "an integer followed by a unit: ms, s, m or h (e.g. 250ms, 30s, 5m, 1h; 0s turns a timeout off where allowed)";

/// Parses a config duration such as `250ms`, `30s`, `5m` or `1h`.
///
/// The amount is a non-negative integer and the unit is one of `ms`, `s`, `m`, `h`.
/// `0s` (or `0ms`, `0m`, `0h`) is accepted and yields [`Duration::ZERO`]; the fields that
/// document "0s = off" treat it as "no timeout". A bare number (`30`), a fraction (`1.5s`)
/// or an unknown unit (`30sec`) is an error whose message lists the accepted forms.
///
/// ```
/// use std::time::Duration;
/// use switchback_config::parse_duration;
///
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
/// assert!(parse_duration("30").unwrap_err().contains("ms, s, m or h"));
/// ```
///
/// # Errors
///
/// Returns a message (without location) describing the problem and the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (amount, unit) = trimmed.split_at(digits_end);
    if amount.is_empty() {
        return Err(format!("invalid duration \"{text}\": expected {DURATION_FORMS}"));
    }
    if unit.is_empty() {
        return Err(format!(
            "invalid duration \"{text}\": a bare number has no unit; expected {DURATION_FORMS}"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "invalid duration \"{text}\": fractions are not supported, use a smaller unit (e.g. 1500ms); expected {DURATION_FORMS}"
        ));
    }
    let Ok(amount) = amount.parse::<u64>() else {
        return Err(format!("invalid duration \"{text}\": the amount is too large"));
    };
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "invalid duration \"{text}\": unknown unit \"{unit}\"; expected {DURATION_FORMS}"
            ));
        }
    };
    amount
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration \"{text}\": the amount is too large"))
}

/// Formats a duration in the config notation, using the largest unit that represents it
/// exactly (`30s`, `5m`, `1h`, `250ms`; zero is `0s`).
///
/// Sub-millisecond parts cannot be written in the config notation and are rounded down to
/// whole milliseconds.
///
/// ```
/// use std::time::Duration;
/// use switchback_config::format_duration;
///
/// assert_eq!(format_duration(Duration::from_secs(90)), "90s");
/// assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
/// assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
/// assert_eq!(format_duration(Duration::ZERO), "0s");
/// ```
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    for (unit, per) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000)] {
        if millis.is_multiple_of(per) {
            return format!("{}{unit}", millis / per);
        }
    }
    format!("{millis}ms")
}

/// `serialize_with` helper: a duration as its config string.
pub(crate) fn serialize<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}

/// `serialize_with` helper: an optional duration as its config string (or none).
pub(crate) fn serialize_opt<S: serde::Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => serializer.serialize_some(&format_duration(*duration)),
        None => serializer.serialize_none(),
    }
}
