//! UTC timestamps in RFC 3339 form, without a calendar crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now as `2026-11-23T07:00:00Z`.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now(), false)
}

/// `t` as RFC 3339 UTC, with milliseconds when `millis` is set.
pub fn rfc3339(t: SystemTime, millis: bool) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, mo, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    if millis {
        format!(
            "{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
            d.subsec_millis()
        )
    } else {
        format!("{y:04}-{mo:02}-{day:02}T{h:02}:{mi:02}:{s:02}Z")
    }
}

/// Append `t` as RFC 3339 UTC with milliseconds (`2026-11-23T07:00:00.123Z`), digits
/// written directly (the access log's timestamp, once per request).
pub fn push_rfc3339_millis(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, mo, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let digits = |out: &mut String, n: u64, width: u32| {
        for i in (0..width).rev() {
            out.push(char::from(b'0' + (n / 10u64.pow(i) % 10) as u8));
        }
    };
    digits(out, y.clamp(0, 9999) as u64, 4);
    out.push('-');
    digits(out, u64::from(mo), 2);
    out.push('-');
    digits(out, u64::from(day), 2);
    out.push('T');
    digits(out, rem / 3600, 2);
    out.push(':');
    digits(out, rem % 3600 / 60, 2);
    out.push(':');
    digits(out, rem % 60, 2);
    out.push('.');
    digits(out, u64::from(d.subsec_millis()), 3);
    out.push('Z');
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        let t = UNIX_EPOCH + Duration::from_millis(1_732_345_200_123);
        assert_eq!(rfc3339(t, false), "2024-11-23T07:00:00Z");
        assert_eq!(rfc3339(t, true), "2024-11-23T07:00:00.123Z");
        let mut s = String::new();
        push_rfc3339_millis(&mut s, t);
        assert_eq!(s, "2024-11-23T07:00:00.123Z");
    }
}
