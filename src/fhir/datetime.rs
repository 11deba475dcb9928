//! FHIR date, dateTime and instant values as ranges of microseconds since the Unix epoch, following
//! the spec's implicit-precision rule: `2024-03` stands for the whole of March 2024.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// A half-open range `[start, end)` in microseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub start: i64,
    pub end: i64,
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

/// Parses a FHIR date, dateTime or instant (any precision from year to fractions of a second).
/// Values without a time zone are taken as UTC.
pub fn parse_instant_range(s: &str) -> Option<DateRange> {
    let start_of = |d: Date| micros(PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc());
    match s.len() {
        4 => {
            let y: i32 = s.parse().ok()?;
            let a = Date::from_calendar_date(y, Month::January, 1).ok()?;
            let b = Date::from_calendar_date(y + 1, Month::January, 1).ok()?;
            Some(DateRange {
                start: start_of(a),
                end: start_of(b),
            })
        }
        7 => {
            let y: i32 = s.get(0..4)?.parse().ok()?;
            let m: u8 = s.get(5..7)?.parse().ok()?;
            if s.as_bytes()[4] != b'-' {
                return None;
            }
            let month = Month::try_from(m).ok()?;
            let a = Date::from_calendar_date(y, month, 1).ok()?;
            let b = if month == Month::December {
                Date::from_calendar_date(y + 1, Month::January, 1).ok()?
            } else {
                Date::from_calendar_date(y, month.next(), 1).ok()?
            };
            Some(DateRange {
                start: start_of(a),
                end: start_of(b),
            })
        }
        10 => {
            let d = Date::parse(s, format_description!("[year]-[month]-[day]")).ok()?;
            Some(DateRange {
                start: start_of(d),
                end: start_of(d.next_day()?),
            })
        }
        _ => {
            let t = OffsetDateTime::parse(s, &Rfc3339)
                .or_else(|_| {
                    PrimitiveDateTime::parse(
                        s,
                        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
                    )
                    .map(PrimitiveDateTime::assume_utc)
                })
                .ok()?;
            let start = micros(t);
            // The precision is that of the text: whole seconds unless fractions are given.
            let frac = s
                .split_once('.')
                .map(|(_, f)| f.bytes().take_while(u8::is_ascii_digit).count())
                .unwrap_or(0);
            let step = 10i64.pow(6u32.saturating_sub(frac.min(6) as u32));
            Some(DateRange {
                start,
                end: start + step,
            })
        }
    }
}

/// A FHIR instant in UTC with microsecond precision, as `format_instant` writes it.
const INSTANT: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// Renders microseconds since the epoch as a FHIR instant in UTC, with microsecond precision.
/// Written digit by digit: it stamps every AuditEvent and every version, and `time`'s formatter
/// interprets a format description on each call.
pub fn format_instant(us: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .to_offset(UtcOffset::UTC);
    let year = match u32::try_from(t.year()) {
        Ok(y) if y <= 9999 => y,
        // Not a server time; the general formatter handles the sign and width.
        _ => return t.format(INSTANT).unwrap_or_default(),
    };
    fn push(out: &mut String, value: u32, width: u32) {
        for k in (0..width).rev() {
            out.push(char::from(b'0' + (value / 10u32.pow(k) % 10) as u8));
        }
    }
    let mut out = String::with_capacity(27);
    push(&mut out, year, 4);
    for (sep, value, width) in [
        ('-', u32::from(u8::from(t.month())), 2),
        ('-', u32::from(t.day()), 2),
        ('T', u32::from(t.hour()), 2),
        (':', u32::from(t.minute()), 2),
        (':', u32::from(t.second()), 2),
        ('.', t.microsecond(), 6),
    ] {
        out.push(sep);
        push(&mut out, value, width);
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dates_cover_their_whole_period() {
        let march = parse_instant_range("2024-03").unwrap();
        let first = parse_instant_range("2024-03-01").unwrap();
        let april = parse_instant_range("2024-04-01").unwrap();
        assert_eq!(march.start, first.start);
        assert_eq!(march.end, april.start);
        let year = parse_instant_range("2024").unwrap();
        assert_eq!(year.start, march.start - 60 * 86_400_000_000);
    }

    #[test]
    fn instants_keep_their_precision_and_zone() {
        let a = parse_instant_range("2024-03-01T10:00:00+02:00").unwrap();
        let b = parse_instant_range("2024-03-01T08:00:00Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(b.end - b.start, 1_000_000);
        let c = parse_instant_range("2024-03-01T08:00:00.123Z").unwrap();
        assert_eq!(c.end - c.start, 1_000);
        assert_eq!(format_instant(c.start), "2024-03-01T08:00:00.123000Z");
    }

    #[test]
    fn instants_are_formatted_as_time_formats_them() {
        let general = |us: i64| {
            OffsetDateTime::from_unix_timestamp_nanos(us as i128 * 1000)
                .unwrap()
                .format(INSTANT)
                .unwrap()
        };
        let mut us: i64 = -62_135_596_800_000_000; // 0001-01-01
        while us < 253_402_300_799_999_999 {
            assert_eq!(format_instant(us), general(us), "{us}");
            us += 987_654_321_012_345;
        }
        for us in [
            0,
            1,
            999_999,
            1_709_280_000_123_000,
            253_402_300_799_999_999,
        ] {
            assert_eq!(format_instant(us), general(us), "{us}");
        }
        assert_eq!(format_instant(0), "1970-01-01T00:00:00.000000Z");
    }

    #[test]
    fn nonsense_is_refused() {
        for s in [
            "2024-13",
            "2024-02-30",
            "yesterday",
            "2024-03-01T25:00:00Z",
            "",
        ] {
            assert!(parse_instant_range(s).is_none(), "{s}");
        }
    }
}
