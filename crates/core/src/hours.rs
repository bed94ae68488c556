//! Access hours: weekly windows per weekday with minute resolution, in the
//! company's time zone (daylight-saving changes included), overnight
//! windows allowed, plus an account's valid-from / valid-until dates.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc, Weekday};
use chrono_tz::Tz;

use crate::error::{DomainError, DomainResult};

/// From `start` to `end` (minutes after local midnight) on `day`. When
/// `end <= start` the window runs overnight into the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessWindow {
    pub day: Weekday,
    pub start: u16,
    pub end: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoursDecision {
    Allowed,
    NotYetValid,
    Expired,
    OutsideHours,
}

/// Whether `now` falls in the windows (none = any time) and the validity
/// dates (local dates in `tz`; valid_until inclusive).
pub fn decide(
    now: DateTime<Utc>,
    tz: Tz,
    windows: &[AccessWindow],
    valid_from: Option<NaiveDate>,
    valid_until: Option<NaiveDate>,
) -> HoursDecision {
    let local = now.with_timezone(&tz);
    let date = local.date_naive();
    if valid_from.is_some_and(|d| date < d) {
        return HoursDecision::NotYetValid;
    }
    if valid_until.is_some_and(|d| date > d) {
        return HoursDecision::Expired;
    }
    if windows.is_empty() {
        return HoursDecision::Allowed;
    }
    let minute = (local.hour() * 60 + local.minute()) as u16;
    let today = local.weekday();
    let yesterday = today.pred();
    let inside = windows.iter().any(|w| {
        if w.start < w.end {
            w.day == today && (w.start..w.end).contains(&minute)
        } else {
            // Overnight: the evening part today, the morning part tomorrow.
            (w.day == today && minute >= w.start) || (w.day == yesterday && minute < w.end)
        }
    });
    if inside {
        HoursDecision::Allowed
    } else {
        HoursDecision::OutsideHours
    }
}

pub fn parse_tz(s: &str) -> DomainResult<Tz> {
    s.parse::<Tz>().map_err(|_| {
        DomainError::invalid(format!(
            "'{}' is not an IANA time zone such as Asia/Ho_Chi_Minh or Europe/Berlin",
            s.chars().take(60).collect::<String>()
        ))
    })
}

pub fn parse_day(s: &str) -> DomainResult<Weekday> {
    s.parse::<Weekday>()
        .map_err(|_| DomainError::invalid(format!("'{s}' is not a weekday (mon, tue, ... sun)")))
}

/// `HH:MM` → minutes after midnight; `24:00` is allowed as an end.
pub fn parse_time(s: &str) -> DomainResult<u16> {
    let bad = || DomainError::invalid(format!("'{s}' is not a time HH:MM (00:00 to 24:00)"));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m != 0) || h.to_string().len() > 2 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

pub fn format_time(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn w(day: Weekday, start: &str, end: &str) -> AccessWindow {
        AccessWindow {
            day,
            start: parse_time(start).unwrap(),
            end: parse_time(end).unwrap(),
        }
    }

    #[test]
    fn window_edges_in_the_company_time_zone() {
        let tz = parse_tz("Asia/Ho_Chi_Minh").unwrap(); // UTC+7
        let win = [w(Weekday::Thu, "08:00", "17:30")];
        // 2026-01-01 is a Thursday.
        assert_eq!(
            decide(at("2026-01-01T01:00:00Z"), tz, &win, None, None),
            HoursDecision::Allowed
        ); // 08:00
        assert_eq!(
            decide(at("2026-01-01T00:59:00Z"), tz, &win, None, None),
            HoursDecision::OutsideHours
        ); // 07:59
        assert_eq!(
            decide(at("2026-01-01T10:29:00Z"), tz, &win, None, None),
            HoursDecision::Allowed
        ); // 17:29
        assert_eq!(
            decide(at("2026-01-01T10:30:00Z"), tz, &win, None, None),
            HoursDecision::OutsideHours
        ); // 17:30
    }

    #[test]
    fn overnight_windows() {
        let tz = parse_tz("UTC").unwrap();
        let win = [w(Weekday::Fri, "22:00", "06:00")];
        assert_eq!(
            decide(at("2026-01-02T23:00:00Z"), tz, &win, None, None),
            HoursDecision::Allowed
        ); // Fri 23:00
        assert_eq!(
            decide(at("2026-01-03T05:59:00Z"), tz, &win, None, None),
            HoursDecision::Allowed
        ); // Sat 05:59
        assert_eq!(
            decide(at("2026-01-03T06:00:00Z"), tz, &win, None, None),
            HoursDecision::OutsideHours
        );
        assert_eq!(
            decide(at("2026-01-02T21:59:00Z"), tz, &win, None, None),
            HoursDecision::OutsideHours
        );
    }

    #[test]
    fn daylight_saving_day() {
        // Europe/Berlin moves from UTC+1 to UTC+2 on 2026-03-29 (a Sunday).
        let tz = parse_tz("Europe/Berlin").unwrap();
        let win = [w(Weekday::Sun, "09:00", "10:00")];
        assert_eq!(
            decide(at("2026-03-29T07:30:00Z"), tz, &win, None, None),
            HoursDecision::Allowed
        ); // 09:30 CEST
        assert_eq!(
            decide(at("2026-03-29T08:30:00Z"), tz, &win, None, None),
            HoursDecision::OutsideHours
        ); // 10:30 CEST
        assert_eq!(
            decide(at("2026-03-22T08:30:00Z"), tz, &win, None, None),
            HoursDecision::Allowed
        ); // 09:30 CET
    }

    #[test]
    fn validity_dates() {
        let tz = parse_tz("UTC").unwrap();
        let from = NaiveDate::from_ymd_opt(2026, 1, 2);
        let until = NaiveDate::from_ymd_opt(2026, 1, 31);
        assert_eq!(
            decide(at("2026-01-01T12:00:00Z"), tz, &[], from, until),
            HoursDecision::NotYetValid
        );
        assert_eq!(
            decide(at("2026-01-31T23:59:00Z"), tz, &[], from, until),
            HoursDecision::Allowed
        );
        assert_eq!(
            decide(at("2026-02-01T00:00:00Z"), tz, &[], from, until),
            HoursDecision::Expired
        );
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("24:00").unwrap(), 1440);
        assert!(parse_time("24:01").is_err());
        assert!(parse_time("7").is_err());
        assert!(parse_time("07:60").is_err());
        assert_eq!(format_time(parse_time("07:05").unwrap()), "07:05");
    }
}
