//! Times as users type and read them: Unix seconds or UTC `YYYY-MM-DD[THH:MM[:SS]][Z]`.

use hlfs_client::HlfsError;

/// Days from 1970-01-01 to a civil date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Unix seconds, or a UTC date and time `YYYY-MM-DD[THH:MM[:SS]][Z]` (a space may replace `T`).
pub fn parse_time(s: &str) -> Result<u64, HlfsError> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let bad = || {
        HlfsError::invalid(
            "time",
            s,
            "expected Unix seconds or YYYY-MM-DD[THH:MM[:SS]][Z]",
        )
    };
    let t = s.trim_end_matches('Z');
    let (date, clock) = t.split_once(['T', ' ']).unwrap_or((t, "00:00:00"));
    let num = |x: &str| x.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let c: Vec<&str> = clock.split(':').collect();
    if d.len() != 3 || !(2..=3).contains(&c.len()) {
        return Err(bad());
    }
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (h, min) = (num(c[0])?, num(c[1])?);
    let sec = c.get(2).map_or(Ok(0), |x| num(x))?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return Err(bad());
    }
    let days = days_from_civil(y, m, day);
    u64::try_from(days * 86_400 + h * 3600 + min * 60 + sec).map_err(|_| bad())
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(unix: u64) -> String {
    let secs = i64::try_from(unix).unwrap_or(i64::MAX / 2);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(parse_time("0").ok(), Some(0));
        assert_eq!(parse_time("1970-01-01").ok(), Some(0));
        assert_eq!(parse_time("2026-11-22T05:00:00Z").ok(), Some(1_795_323_600));
        assert_eq!(parse_time("2026-11-22 05:00").ok(), Some(1_795_323_600));
        assert_eq!(parse_time("2000-02-29T23:59:59").ok(), Some(951_868_799));
        assert_eq!(parse_time("2026-01-01").ok(), Some(1_767_225_600));
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-11-22T25:00",
            "1969-12-31",
            "2026-11",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert_eq!(e.error_name(), "org.hlfs.Error.Invalid", "{bad:?}");
        }
    }

    #[test]
    fn times_format_as_utc_and_round_trip() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_868_799), "2000-02-29 23:59:59 UTC");
        for t in [0u64, 86_399, 951_868_799, 1_795_323_600, 4_102_444_800] {
            let s = format_utc(t);
            assert_eq!(parse_time(s.trim_end_matches(" UTC")).ok(), Some(t), "{s}");
        }
    }
}
