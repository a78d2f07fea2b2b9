//! Unit-bearing config values: durations ("250ms", "5s", "1m", "1h", "1d"), sizes ("512",
//! "64KiB", "10MiB") and rates ("100/s"). Each serializes back in its largest exact unit
//! (`60s` shows as `1m`), so the effective config reads like a config.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written as `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    /// The parsed duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// Longest duration any key accepts: a year. Bounding every duration where it is read
/// keeps each conversion to milliseconds or microseconds, and each deadline computed as
/// now plus a duration, far from overflow (a `sync_interval` of `300000000d` used to wrap
/// when turned into microseconds, an `eject_for` near `u64::MAX` ms when added to the clock).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Parse a duration string (at most [`MAX_DURATION`]); the error message is the one shown
/// to operators.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const MSG: &str = "expected a duration such as 250ms, 5s, 1m, 1h or 1d";
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| MSG.to_string())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| MSG.to_string())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(MSG.to_string()),
    };
    ms.map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| "duration is too large: at most 365d".to_string())
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000u64),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = d.deserialize_any(StrOrInt)?;
        parse_duration(&s).map(Dur).map_err(de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

/// A byte size: a plain integer or `<integer><unit>` with unit `B`, `KiB`, `MiB`, `GiB`
/// (`KB`/`MB`/`GB` and `k`/`m`/`g` are read as the binary units too, as nginx does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Size(pub u64);

/// Parse a size string; the error message is the one shown to operators.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const MSG: &str = "expected a size such as 512, 64KiB or 10MiB";
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| MSG.to_string())?;
    let mul: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "KiB" | "KB" | "K" | "k" | "kb" => 1 << 10,
        "MiB" | "MB" | "M" | "m" | "mb" => 1 << 20,
        "GiB" | "GB" | "G" | "g" | "gb" => 1 << 30,
        _ => return Err(MSG.to_string()),
    };
    n.checked_mul(mul)
        .ok_or_else(|| "size is too large".to_string())
}

fn format_size(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    n.to_string()
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = d.deserialize_any(StrOrInt)?;
        parse_size(&s).map(Size).map_err(de::Error::custom)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(self.0))
    }
}

/// A rate `N/s`, `N/m`, `N/h` or `N/d`: `count` events per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed per window.
    pub count: u64,
    /// The window length.
    pub per: Duration,
}

/// Parse a rate string; the error message is the one shown to operators.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    const MSG: &str = "expected N/s, N/m, N/h or N/d";
    let (num, unit) = s.trim().split_once('/').ok_or_else(|| MSG.to_string())?;
    let count: u64 = num.trim().parse().map_err(|_| MSG.to_string())?;
    let secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(MSG.to_string()),
    };
    if count == 0 {
        return Err("a rate must allow at least 1 request".to_string());
    }
    Ok(Rate {
        count,
        per: Duration::from_secs(secs),
    })
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = d.deserialize_any(StrOrInt)?;
        parse_rate(&s).map_err(de::Error::custom)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Accepts a string or an integer and yields it as text.
struct StrOrInt;

impl<'de> Visitor<'de> for StrOrInt {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        // Regression: anything up to u64::MAX milliseconds was accepted, and wrapped
        // where it was added to a clock or turned into microseconds.
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        assert_eq!(
            parse_duration("366d"),
            Err("duration is too large: at most 365d".to_string())
        );
        assert!(parse_duration("300000000d").is_err());
        for bad in ["", "5", "s", "5x", "-1s", "1.5s", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        for bad in ["", "KiB", "10XB", "-1", "1.5MiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(format_size(32 * 1024), "32KiB");
    }

    #[test]
    fn rates() {
        let r = parse_rate("100/s").unwrap();
        assert_eq!((r.count, r.per), (100, Duration::from_secs(1)));
        assert_eq!(parse_rate("1000/m").unwrap().per, Duration::from_secs(60));
        assert_eq!(parse_rate("5/d").unwrap().to_string(), "5/d");
        for bad in ["100", "100/x", "/s", "0/s", "a/s", "100/sec"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_rate("x").unwrap_err(),
            "expected N/s, N/m, N/h or N/d"
        );
    }
}
