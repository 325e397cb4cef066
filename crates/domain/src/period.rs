//! Grading periods: calendar months.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, Months, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::FieldError;

/// A calendar month such as `2026-10`. A grading run for a period sees the data as of its last day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Period {
    // Field order makes the derived ordering chronological.
    year: i32,
    month: u32,
}

impl Period {
    /// Builds a period from a year (1900–9999) and a month (1–12).
    pub fn new(year: i32, month: u32) -> Result<Self, FieldError> {
        if !(1900..=9999).contains(&year) {
            return Err(FieldError::new(
                "period",
                format!("year {year} is out of range 1900-9999"),
            ));
        }
        if !(1..=12).contains(&month) {
            return Err(FieldError::new(
                "period",
                format!("month {month} is not 1-12"),
            ));
        }
        Ok(Self { year, month })
    }

    /// Parses `YYYY-MM` (e.g. `2026-10`).
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let bad = || FieldError::new("period", format!("'{raw}' is not a month like 2026-10"));
        let (year, month) = raw.trim().split_once('-').ok_or_else(bad)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(bad());
        }
        let year: i32 = year.parse().map_err(|_| bad())?;
        let month: u32 = month.parse().map_err(|_| bad())?;
        Self::new(year, month)
    }

    /// The period containing `date`.
    pub fn containing(date: NaiveDate) -> Self {
        Self {
            year: date.year(),
            month: date.month(),
        }
    }

    /// The year.
    pub fn year(&self) -> i32 {
        self.year
    }

    /// The month, 1–12.
    pub fn month(&self) -> u32 {
        self.month
    }

    /// The first day of the month.
    pub fn first_day(&self) -> NaiveDate {
        // Valid by construction: year and month were range-checked.
        NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or(NaiveDate::MIN)
    }

    /// The as-of date D: the last day of the month (`first day of next month − 1 day`).
    pub fn as_of(&self) -> NaiveDate {
        self.next().first_day().pred_opt().unwrap_or(NaiveDate::MAX)
    }

    /// The month after this one.
    pub fn next(&self) -> Self {
        self.shift(1)
    }

    /// The month before this one.
    pub fn prev(&self) -> Self {
        self.shift(-1)
    }

    /// This period moved by `months` (negative moves back).
    pub fn shift(&self, months: i32) -> Self {
        let index = self.year * 12 + (self.month as i32 - 1) + months;
        Self {
            year: index.div_euclid(12),
            month: index.rem_euclid(12) as u32 + 1,
        }
    }

    /// True when `date` falls inside this month.
    pub fn contains(&self, date: NaiveDate) -> bool {
        Self::containing(date) == *self
    }

    /// The date `months` calendar months before the as-of date, clamped to month ends
    /// (`2026-03-31` minus one month is `2026-02-28`).
    pub fn as_of_minus_months(&self, months: u32) -> NaiveDate {
        self.as_of()
            .checked_sub_months(Months::new(months))
            .unwrap_or(NaiveDate::MIN)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Period {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Period {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Period> for String {
    fn from(value: Period) -> Self {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn parses_and_displays() {
        let p = Period::parse("2026-10").unwrap();
        assert_eq!((p.year(), p.month()), (2026, 10));
        assert_eq!(p.to_string(), "2026-10");
        for bad in [
            "2026-13", "2026-00", "26-10", "2026/10", "2026-1", "october",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn as_of_is_the_last_day() {
        assert_eq!(
            Period::parse("2026-10").unwrap().as_of(),
            date(2026, 10, 31)
        );
        assert_eq!(Period::parse("2024-02").unwrap().as_of(), date(2024, 2, 29));
        assert_eq!(Period::parse("2025-02").unwrap().as_of(), date(2025, 2, 28));
        assert_eq!(
            Period::parse("2026-12").unwrap().as_of(),
            date(2026, 12, 31)
        );
    }

    #[test]
    fn navigation_and_order() {
        let jan = Period::parse("2026-01").unwrap();
        assert_eq!(jan.prev().to_string(), "2025-12");
        assert_eq!(jan.prev().next(), jan);
        assert_eq!(jan.shift(-13).to_string(), "2024-12");
        assert!(jan.prev() < jan);
        assert!(jan.contains(date(2026, 1, 31)));
        assert!(!jan.contains(date(2026, 2, 1)));
        let mar = Period::parse("2026-03").unwrap();
        assert_eq!(mar.as_of_minus_months(1), date(2026, 2, 28));
        assert_eq!(mar.as_of_minus_months(24), date(2024, 3, 31));
    }
}
