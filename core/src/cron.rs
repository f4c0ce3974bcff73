//! Cron schedules as CronJobs write them: five fields (minute, hour, day of month, month,
//! day of week) or a macro, evaluated in a time zone.
//!
//! Fields take `*` (or `?`), numbers, ranges `a-b`, steps `*/n`, `a-b/n` and `a/n`, and
//! comma lists; months and weekdays also take their three-letter English names, and
//! weekday 7 is Sunday as 0 is. As in the cron library Kubernetes uses, when both
//! day-of-month and day-of-week are restricted a day matching either runs, and when
//! either is `*` both must match. Macros: `@yearly` (`@annually`), `@monthly`,
//! `@weekly`, `@daily` (`@midnight`), `@hourly`. Times that a daylight-saving change
//! skips run at the corresponding instant after the change; repeated ones run once.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A schedule could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unparseable schedule {schedule:?}: {reason}")]
pub struct ParseError {
    /// The schedule.
    pub schedule: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed cron schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_star: bool,
    weekdays_star: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(s: &str, names: &[&str], offset: u32) -> Option<u32> {
    if let Ok(v) = s.parse::<u32>() {
        return Some(v);
    }
    let lower = s.to_ascii_lowercase();
    names
        .iter()
        .position(|n| *n == lower)
        .and_then(|i| u32::try_from(i).ok())
        .map(|i| i + offset)
}

/// Parses one field into a bit set; also whether it was a bare `*`.
fn field(s: &str, min: u32, max: u32, names: &[&str], offset: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut star = false;
    for part in s.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => {
                let st: u32 = st
                    .parse()
                    .map_err(|_| format!("bad step {st:?} in {part:?}"))?;
                if st == 0 {
                    return Err(format!("step of zero in {part:?}"));
                }
                (r, Some(st))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            if step.is_none_or(|s| s == 1) {
                star = true;
            }
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = value(a, names, offset).ok_or_else(|| format!("bad value {a:?}"))?;
            let b = value(b, names, offset).ok_or_else(|| format!("bad value {b:?}"))?;
            (a, b)
        } else {
            let a = value(range, names, offset).ok_or_else(|| format!("bad value {range:?}"))?;
            (a, if step.is_some() { max } else { a })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{part:?} is outside {min}-{max}"));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Schedule {
    /// Parses a schedule.
    ///
    /// # Errors
    /// [`ParseError`] naming what is wrong.
    pub fn parse(schedule: &str) -> Result<Schedule, ParseError> {
        let err = |reason: String| ParseError {
            schedule: schedule.to_owned(),
            reason,
        };
        let trimmed = schedule.trim();
        let expanded = match trimmed {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => return Err(err(format!("unknown macro {s:?}"))),
            s => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!("expected 5 fields, found {}", fields.len())));
        }
        let (minutes, _) = field(fields[0], 0, 59, &[], 0).map_err(err)?;
        let (hours, _) = field(fields[1], 0, 23, &[], 0).map_err(err)?;
        let (days, days_star) = field(fields[2], 1, 31, &[], 0).map_err(err)?;
        let (months, _) = field(fields[3], 1, 12, &MONTHS, 1).map_err(err)?;
        let (mut weekdays, weekdays_star) = field(fields[4], 0, 7, &WEEKDAYS, 0).map_err(err)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_star,
            weekdays_star,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first scheduled time strictly after `after`, in `tz` (none within five
    /// years, e.g. for February 30th).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let local = after.to_zoned(tz.clone()).datetime();
        let mut date = local.date();
        let mut hour = u32::try_from(local.hour()).unwrap_or(0);
        let mut minute = u32::try_from(local.minute()).unwrap_or(0) + 1;
        let limit = date.checked_add(jiff::Span::new().years(5)).ok()?;
        let next_day = |d: Date| d.tomorrow().ok();
        while date < limit {
            if self.months & (1 << date.month()) == 0 {
                let first = date.first_of_month();
                date = first.checked_add(jiff::Span::new().months(1)).ok()?;
                (hour, minute) = (0, 0);
                continue;
            }
            if !self.day_matches(date) {
                date = next_day(date)?;
                (hour, minute) = (0, 0);
                continue;
            }
            if minute > 59 {
                (hour, minute) = (hour + 1, 0);
            }
            let Some(h) = (hour..24).find(|h| self.hours & (1 << h) != 0) else {
                date = next_day(date)?;
                (hour, minute) = (0, 0);
                continue;
            };
            if h != hour {
                (hour, minute) = (h, 0);
            }
            let Some(m) = (minute..60).find(|m| self.minutes & (1 << m) != 0) else {
                (hour, minute) = (hour + 1, 0);
                if hour > 23 {
                    date = next_day(date)?;
                    (hour, minute) = (0, 0);
                }
                continue;
            };
            let dt = DateTime::from_parts(
                date,
                jiff::civil::Time::new(i8::try_from(hour).ok()?, i8::try_from(m).ok()?, 0, 0)
                    .ok()?,
            );
            let at = tz.to_ambiguous_zoned(dt).compatible().ok()?.timestamp();
            if at > after {
                return Some(at);
            }
            minute = m + 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(schedule: &str, after: &str, tz: &str) -> String {
        let tz = TimeZone::get(tz).unwrap();
        Schedule::parse(schedule)
            .unwrap()
            .next_after(ts(after), &tz)
            .unwrap()
            .to_string()
    }

    #[test]
    fn five_fields_and_macros_give_the_next_minute_that_matches() {
        assert_eq!(
            next("*/15 * * * *", "2025-01-01T00:07:30Z", "UTC"),
            "2025-01-01T00:15:00Z"
        );
        assert_eq!(
            next("* * * * *", "2025-01-01T00:15:00Z", "UTC"),
            "2025-01-01T00:16:00Z"
        );
        assert_eq!(
            next("@hourly", "2025-01-01T23:30:00Z", "UTC"),
            "2025-01-02T00:00:00Z"
        );
        assert_eq!(
            next("0 9 * * mon-fri", "2025-01-03T10:00:00Z", "UTC"),
            "2025-01-06T09:00:00Z"
        );
        assert_eq!(
            next("0 0 29 feb *", "2025-03-01T00:00:00Z", "UTC"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2025-06-01T00:00:00Z", "UTC"),
            "2026-01-01T00:00:00Z"
        );
        // Day of month or day of week when both are restricted.
        assert_eq!(
            next("0 0 13 * 5", "2025-01-01T00:00:00Z", "UTC"),
            "2025-01-03T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "2025-01-01T00:00:00Z", "UTC"),
            "2025-01-05T00:00:00Z"
        );
    }

    #[test]
    fn a_time_zone_moves_the_schedule_and_follows_daylight_saving() {
        assert_eq!(
            next("30 2 * * *", "2025-01-01T00:00:00Z", "America/New_York"),
            "2025-01-01T07:30:00Z"
        );
        // 02:30 does not exist on 2025-03-09 in New York: it runs at 03:30 EDT.
        assert_eq!(
            next("30 2 * * *", "2025-03-09T05:00:00Z", "America/New_York"),
            "2025-03-09T07:30:00Z"
        );
    }

    #[test]
    fn bad_schedules_are_refused_with_a_reason() {
        for bad in [
            "* * * *",
            "60 * * * *",
            "*/0 * * * *",
            "@every 5m",
            "* * * foo *",
            "5-1 * * * *",
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.to_string().contains("unparseable schedule"), "{bad}: {e}");
        }
        assert_eq!(
            Schedule::parse("0 0 31 2 *")
                .unwrap()
                .next_after(ts("2025-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
    }
}
