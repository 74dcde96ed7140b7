//! RFC 3339 timestamps (`2026-12-03T14:47:55.123456Z`) to and from Unix seconds: what Google
//! writes in `expireTime` and `expirationTime`, without a date crate for two functions.

/// Unix seconds of an RFC 3339 UTC or offset timestamp; fractions are dropped.
#[cfg_attr(not(feature = "affinity"), allow(dead_code))]
pub(crate) fn parse(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let time_end = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(time_end);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next()?.parse().ok()?;
    let ss: i64 = t.next().unwrap_or("0").parse().ok()?;
    let offset = match zone.chars().next() {
        None | Some('Z' | 'z') => 0,
        Some(sign) => {
            let (oh, om) = zone[1..].split_once(':').unwrap_or((&zone[1..], "0"));
            let o = oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60;
            if sign == '-' { -o } else { o }
        }
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let secs = days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 + ss - offset;
    u64::try_from(secs).ok()
}

/// The RFC 3339 UTC form of Unix seconds, as Google writes it (`...Z`).
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) fn format(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The UTC date (year, month, day) holding Unix seconds `unix`.
pub(crate) fn civil(unix: u64) -> (i64, u32, u32) {
    civil_from_days((unix / 86_400) as i64)
}

/// Unix seconds of midnight UTC on a date.
pub(crate) fn unix_of_date(y: i64, m: u32, d: u32) -> u64 {
    u64::try_from(days_from_civil(y, m, d) * 86_400).unwrap_or(0)
}

/// The RFC 3339 UTC form of Unix seconds, whole seconds (`2027-01-01T00:00:00Z`).
pub(crate) fn format_seconds(unix: u64) -> String {
    let (y, m, d) = civil(unix);
    let rem = unix % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// Howard Hinnant's algorithms.
#[cfg_attr(not(feature = "affinity"), allow(dead_code))]
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
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
    #[test]
    fn round_trips_and_reads_offsets() {
        let t = 1_796_395_675; // 2026-12-04T...
        assert_eq!(super::parse(&super::format(t)), Some(t));
        assert_eq!(super::parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(super::parse("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(super::parse("2024-02-29T12:00:00.5Z"), Some(1_709_208_000));
        assert_eq!(super::parse("garbage"), None);
    }
}
