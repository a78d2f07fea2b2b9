//! Dates for authentication, in whole UNIX seconds, UTC:
//! - RFC 3339 timestamps (API-key `expires`): moat's grammar (below) on `jiff`'s calendar,
//!   which checks the date and converts it;
//! - HTTP dates (the `Date`/`X-Date` an HMAC request signs): IMF-fixdate only, read and
//!   written by `httpdate`, which also checks that the weekday is the date's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now in UNIX seconds.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Last second an HTTP date can carry (9999-12-31T23:59:59Z).
const MAX_HTTP_DATE: i64 = 253_402_300_799;

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// UNIX seconds of a UTC civil date and time, checked by `jiff` (month lengths, leap
/// years); a leap second (`60`) counts as `59`.
fn to_secs(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> Option<i64> {
    if s > 60 {
        return None;
    }
    let small = |v: i64| i8::try_from(v).ok();
    let dt = jiff::civil::DateTime::new(
        i16::try_from(y).ok()?,
        small(mo)?,
        small(d)?,
        small(h)?,
        small(mi)?,
        small(s.min(59))?,
        0,
    )
    .ok()?;
    let t = jiff::tz::Offset::UTC.to_timestamp(dt).ok()?;
    Some(t.as_second())
}

/// Parse an RFC 3339 timestamp (`2027-12-31T00:00:00Z`, fractions and `±HH:MM` offsets
/// accepted; a bare date `2027-12-31` means its midnight UTC). The grammar is moat's:
/// `jiff`'s own parser also reads forms RFC 3339 does not have (`+0200` offsets, basic
/// ISO 8601, time-zone annotations, omitted seconds), which stay refused.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_ascii() {
        return None;
    }
    if s.len() == 10 {
        let (y, mo, d) = (num(&s[0..4])?, num(&s[5..7])?, num(&s[8..10])?);
        if &s[4..5] != "-" || &s[7..8] != "-" {
            return None;
        }
        return to_secs(y, mo, d, 0, 0, 0);
    }
    if s.len() < 20 {
        return None;
    }
    let b = s.as_bytes();
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(&s[0..4])?, num(&s[5..7])?, num(&s[8..10])?);
    let (h, mi, sec) = (num(&s[11..13])?, num(&s[14..16])?, num(&s[17..19])?);
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let v = num(&o[1..3])? * 3600 + num(&o[4..6])? * 60;
            if o.starts_with('-') {
                -v
            } else {
                v
            }
        }
        _ => return None,
    };
    Some(to_secs(y, mo, d, h, mi, sec)? - offset)
}

/// Parse an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form HTTP/1.1
/// senders may generate. `httpdate` also reads the obsolete RFC 850 and asctime forms,
/// which a signed request may not use: neither has a comma after a three-letter weekday.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.as_bytes().get(3) != Some(&b',') {
        return None;
    }
    let t = httpdate::parse_http_date(s).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// Format UNIX seconds as an IMF-fixdate (clamped to the years 1970 to 9999).
pub fn format_http_date(secs: i64) -> String {
    let secs = secs.clamp(0, MAX_HTTP_DATE) as u64;
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-11-23T07:00:00Z"), Some(1_732_345_200));
        assert_eq!(
            parse_rfc3339("2024-11-23T07:00:00.123Z"),
            Some(1_732_345_200)
        );
        assert_eq!(
            parse_rfc3339("2024-11-23T09:00:00+02:00"),
            Some(1_732_345_200)
        );
        assert_eq!(parse_rfc3339("2024-11-23"), Some(1_732_320_000));
        for bad in [
            "",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-11-23T25:00:00Z",
            "2024-11-23T07:00:00",
            "2024-11-23T07:00:00+0200",
            "x024-11-23T07:00:00Z",
            "2024-11-23T07:00:00.Z",
            "202\u{e9}-11-1",
            "2024-1\u{e9}01",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_some());
    }

    #[test]
    fn http_date() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            format_http_date(784_111_777),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        let now = now_secs();
        assert_eq!(parse_http_date(&format_http_date(now)), Some(now));
        for bad in [
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_edges() {
        // A leap second counts as :59, past 60 is refused; long fractions are read.
        assert_eq!(
            parse_rfc3339("2016-12-31T23:59:60Z"),
            parse_rfc3339("2016-12-31T23:59:59Z")
        );
        assert_eq!(parse_rfc3339("2016-12-31T23:59:61Z"), None);
        assert_eq!(
            parse_rfc3339("2024-11-23t07:00:00.1234567891z"),
            Some(1_732_345_200)
        );
        assert_eq!(
            parse_rfc3339(" 2024-11-23 05:30:00-01:30 "),
            Some(1_732_345_200)
        );
        // Forms jiff's own parser reads but RFC 3339 does not have.
        for bad in [
            "2024-11-23T07:00Z",
            "20241123T070000Z",
            "2024-11-23T07:00:00Z[UTC]",
            "2024-11-23T07:00:00+02",
            "+002024-11-23T07:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_date_is_checked_whole() {
        // httpdate checks the weekday against the date and the form's single spaces.
        for bad in [
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Sun,  06 Nov 1994 08:49:37 GMT",
            "Sunday, 06 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:60 GMT",
            "Sun, 06-Nov-94 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
        assert_eq!(
            parse_http_date("  Sun, 06 Nov 1994 08:49:37 GMT "),
            Some(784_111_777)
        );
        assert_eq!(format_http_date(-5), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
