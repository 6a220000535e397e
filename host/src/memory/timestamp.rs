//! Points in time as memory stores them: UTC milliseconds, written as
//! RFC 3339 in JSON and on the command line.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time, UTC, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// The time `millis` milliseconds after the Unix epoch.
    pub fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds after the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Parse RFC 3339 (`2026-05-01T12:00:00Z`, any offset) or a bare date
    /// (`2026-05-01`, midnight UTC).
    ///
    /// # Errors
    ///
    /// A message naming the accepted forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
            return Ok(Self::from_datetime(time));
        }
        let date_format = time::macros::format_description!("[year]-[month]-[day]");
        if let Ok(date) = time::Date::parse(text, &date_format) {
            return Ok(Self::from_datetime(date.midnight().assume_utc()));
        }
        Err(format!(
            "`{text}` is not a time: write RFC 3339 such as 2026-05-01T12:00:00Z, or a date such as 2026-05-01"
        ))
    }

    fn from_datetime(time: OffsetDateTime) -> Self {
        let nanos = time.unix_timestamp_nanos() / 1_000_000;
        Timestamp(i64::try_from(nanos).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX }))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Timestamp(i64::try_from(after.as_millis()).unwrap_or(i64::MAX)),
            Err(before) => {
                Timestamp(-i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX))
            }
        }
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nanos = i128::from(self.0) * 1_000_000;
        match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(time) => {
                let format = time::macros::format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
                );
                match time.format(&format) {
                    Ok(text) => f.write_str(&text),
                    Err(_) => write!(f, "@{}ms", self.0),
                }
            }
            Err(_) => write!(f, "@{}ms", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if let Some(millis) = text.strip_prefix('@').and_then(|t| t.strip_suffix("ms")) {
            return millis
                .parse()
                .map(Timestamp)
                .map_err(serde::de::Error::custom);
        }
        Timestamp::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let t = Timestamp::parse("2026-05-01T12:30:00.250+02:00").expect("parse");
        assert_eq!(t.to_string(), "2026-05-01T10:30:00.250Z");
        assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
        assert_eq!(
            Timestamp::parse("2026-05-01").map(|t| t.to_string()),
            Ok("2026-05-01T00:00:00.000Z".into())
        );
        let json = serde_json::to_string(&t).expect("json");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).ok(), Some(t));
        assert!(Timestamp::parse("yesterday").is_err());
    }
}
