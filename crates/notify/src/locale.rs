//! Locale-aware formatting of numbers, money and dates, and the message catalogs the templates
//! read their words from (`templates/locales/<locale>.toml`).

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use tierwise_domain::{Locale, Period};

use crate::NotifyError;

const CATALOG_EN: &str = include_str!("../templates/locales/en.toml");
const CATALOG_ZH_CN: &str = include_str!("../templates/locales/zh-CN.toml");

/// The words of one locale, by key (`digest.tier_changes`, `lifecycle.at_risk`).
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    words: BTreeMap<String, String>,
    tree: toml::Table,
}

impl Catalog {
    /// The built-in catalog of `locale`.
    pub fn builtin(locale: Locale) -> Result<Self, NotifyError> {
        let (name, text) = match locale {
            Locale::En => ("en", CATALOG_EN),
            Locale::ZhCn => ("zh-CN", CATALOG_ZH_CN),
        };
        Self::parse(name, text)
    }

    /// Parses a catalog file's text: TOML tables of strings, flattened to dotted keys.
    pub fn parse(name: &str, text: &str) -> Result<Self, NotifyError> {
        let table: toml::Table = toml::from_str(text).map_err(|e| NotifyError::Catalog {
            locale: name.to_owned(),
            reason: e.to_string(),
        })?;
        let mut words = BTreeMap::new();
        flatten("", &table, &mut words).map_err(|reason| NotifyError::Catalog {
            locale: name.to_owned(),
            reason,
        })?;
        Ok(Self { words, tree: table })
    }

    /// The word for `key`, or the key itself when the catalog lacks it (visible, never empty).
    pub fn get<'a>(&'a self, key: &'a str) -> &'a str {
        self.words.get(key).map_or(key, String::as_str)
    }

    /// The words as nested tables, as templates read them (`t.digest.title`).
    pub fn tree(&self) -> &toml::Table {
        &self.tree
    }

    /// Every key and word.
    pub fn words(&self) -> &BTreeMap<String, String> {
        &self.words
    }
}

fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    for (key, value) in table {
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::String(s) => {
                out.insert(full, s.clone());
            }
            toml::Value::Table(t) => flatten(&full, t, out)?,
            _ => return Err(format!("{full}: only strings and tables are allowed")),
        }
    }
    Ok(())
}

/// Formats figures for one locale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formatter {
    locale: Locale,
}

impl Formatter {
    /// A formatter for `locale`.
    pub fn new(locale: Locale) -> Self {
        Self { locale }
    }

    /// The locale.
    pub fn locale(&self) -> Locale {
        self.locale
    }

    /// An integer with thousands separators: `1,234,567` (both locales group by three).
    pub fn integer(&self, n: i64) -> String {
        let digits = n.unsigned_abs().to_string();
        let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
        if n < 0 {
            out.push('-');
        }
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    }

    /// An amount in minor units of `currency`, with the locale's symbol:
    /// en `CN¥1,234.50`, zh-CN `¥1,234.50`; unknown currencies get their code (`CHF 12.00`).
    pub fn money(&self, minor: i64, currency: &str) -> String {
        let exponent = minor_unit_exponent(currency);
        let scale = 10i64.pow(exponent);
        let major = self.integer((minor / scale).abs());
        let sign = if minor < 0 { "-" } else { "" };
        let symbol = currency_symbol(currency, self.locale);
        let fraction = if exponent == 0 {
            String::new()
        } else {
            format!(
                ".{:0width$}",
                (minor % scale).unsigned_abs(),
                width = exponent as usize
            )
        };
        format!("{sign}{symbol}{major}{fraction}")
    }

    /// A day: en `Nov 30, 2026`, zh-CN `2026年11月30日`.
    pub fn date(&self, day: NaiveDate) -> String {
        match self.locale {
            Locale::En => day.format("%b %-d, %Y").to_string(),
            Locale::ZhCn => format!("{}年{}月{}日", day.year(), day.month(), day.day()),
        }
    }

    /// A month: en `November 2026`, zh-CN `2026年11月`.
    pub fn period(&self, period: Period) -> String {
        match self.locale {
            Locale::En => period.first_day().format("%B %Y").to_string(),
            Locale::ZhCn => format!("{}年{}月", period.year(), period.month()),
        }
    }

    /// A share as a percentage with one decimal: `12.5%`.
    pub fn percent(&self, share: f64) -> String {
        format!("{:.1}%", share * 100.0)
    }

    /// A score with one decimal.
    pub fn score(&self, x: f64) -> String {
        format!("{x:.1}")
    }

    /// A signed change with one decimal: `+3.2`, `−4.1` (a true minus sign).
    pub fn delta(&self, x: f64) -> String {
        if x < 0.0 {
            format!("\u{2212}{:.1}", -x)
        } else {
            format!("+{x:.1}")
        }
    }
}

/// Digits after the decimal point of a currency's minor unit (ISO 4217).
pub fn minor_unit_exponent(currency: &str) -> u32 {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "TWD" | "HUF" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" => 3,
        _ => 2,
    }
}

fn currency_symbol(currency: &str, locale: Locale) -> String {
    let symbol = match (currency, locale) {
        ("CNY", Locale::ZhCn) => "¥",
        ("CNY", Locale::En) => "CN¥",
        ("USD", Locale::En) => "$",
        ("USD", Locale::ZhCn) => "US$",
        ("EUR", _) => "€",
        ("GBP", _) => "£",
        ("HKD", _) => "HK$",
        ("JPY", Locale::En) => "¥",
        ("JPY", Locale::ZhCn) => "JP¥",
        _ => return format!("{currency} "),
    };
    symbol.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_group_by_three() {
        let f = Formatter::new(Locale::En);
        assert_eq!(f.integer(0), "0");
        assert_eq!(f.integer(999), "999");
        assert_eq!(f.integer(1000), "1,000");
        assert_eq!(f.integer(-1234567), "-1,234,567");
        assert_eq!(f.integer(i64::MIN), "-9,223,372,036,854,775,808");
    }

    #[test]
    fn money_by_locale_and_currency() {
        let en = Formatter::new(Locale::En);
        let zh = Formatter::new(Locale::ZhCn);
        assert_eq!(en.money(123_450, "CNY"), "CN¥1,234.50");
        assert_eq!(zh.money(123_450, "CNY"), "¥1,234.50");
        assert_eq!(en.money(-5, "USD"), "-$0.05");
        assert_eq!(zh.money(1200, "JPY"), "JP¥1,200");
        assert_eq!(en.money(1_000, "CHF"), "CHF 10.00");
        assert_eq!(en.money(1_234, "KWD"), "KWD 1.234");
    }

    #[test]
    fn dates_and_periods_by_locale() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 3).unwrap();
        assert_eq!(Formatter::new(Locale::En).date(day), "Nov 3, 2026");
        assert_eq!(Formatter::new(Locale::ZhCn).date(day), "2026年11月3日");
        let p = Period::new(2026, 2).unwrap();
        assert_eq!(Formatter::new(Locale::En).period(p), "February 2026");
        assert_eq!(Formatter::new(Locale::ZhCn).period(p), "2026年2月");
    }

    #[test]
    fn deltas_carry_their_sign() {
        let f = Formatter::new(Locale::En);
        assert_eq!(f.delta(3.24), "+3.2");
        assert_eq!(f.delta(-4.06), "\u{2212}4.1");
        assert_eq!(f.percent(0.125), "12.5%");
    }

    #[test]
    fn both_catalogs_have_the_same_keys() {
        let en = Catalog::builtin(Locale::En).unwrap();
        let zh = Catalog::builtin(Locale::ZhCn).unwrap();
        let missing_in_zh: Vec<_> = en
            .words()
            .keys()
            .filter(|k| !zh.words().contains_key(*k))
            .collect();
        let missing_in_en: Vec<_> = zh
            .words()
            .keys()
            .filter(|k| !en.words().contains_key(*k))
            .collect();
        assert!(missing_in_zh.is_empty(), "zh-CN lacks {missing_in_zh:?}");
        assert!(missing_in_en.is_empty(), "en lacks {missing_in_en:?}");
        assert_ne!(en.get("digest.title"), zh.get("digest.title"));
    }
}
