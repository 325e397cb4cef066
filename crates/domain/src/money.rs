//! Money as integer minor units with an ISO 4217 currency. Amounts are never floats: a decimal
//! string is parsed digit by digit into minor units, and too many decimals are an error, not a
//! rounding.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// An ISO 4217 alphabetic currency code (`CNY`, `USD`, `EUR`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

/// Currencies whose minor unit is not 1/100 (ISO 4217 exponent 0 or 3).
const ZERO_DECIMALS: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
const THREE_DECIMALS: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];

impl Currency {
    /// Parses three ASCII letters, case-insensitively (`cny` becomes `CNY`).
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        let bytes = trimmed.as_bytes();
        if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_alphabetic) {
            Ok(Self([
                bytes[0].to_ascii_uppercase(),
                bytes[1].to_ascii_uppercase(),
                bytes[2].to_ascii_uppercase(),
            ]))
        } else {
            Err(FieldError::new(
                "currency",
                format!("'{raw}' is not an ISO 4217 code such as CNY, USD or EUR"),
            ))
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Number of decimal digits of the minor unit: 0 (JPY), 3 (KWD) or 2 (all others).
    pub fn exponent(&self) -> u32 {
        let code = self.as_str();
        if ZERO_DECIMALS.contains(&code) {
            0
        } else if THREE_DECIMALS.contains(&code) {
            3
        } else {
            2
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Currency {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_string()
    }
}

/// An amount in minor units (fen, cents) of a currency. Negative amounts are refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Amount in minor units: `value · 10^exponent`.
    pub minor: i64,
    /// The currency the amount is in.
    pub currency: Currency,
}

impl Money {
    /// Wraps an amount already in minor units.
    pub fn from_minor(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// Parses a decimal amount such as `1234.5`, `-20`, `1,234.56` or `¥ 1 234.56` into minor
    /// units: `minor = integer_part · 10^e + fraction · 10^(e − digits)` with `e` the currency's
    /// exponent. Thousands separators (`,`, spaces, `_`) and a leading currency symbol are
    /// ignored; more fraction digits than `e`, exponents and overflow are errors naming `field`.
    pub fn parse_decimal(
        field: &'static str,
        raw: &str,
        currency: Currency,
    ) -> Result<Self, FieldError> {
        let text = raw.trim();
        let text = text
            .strip_prefix(['¥', '￥', '$', '€', '£'])
            .unwrap_or(text)
            .trim_start();
        let (negative, digits) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let exponent = currency.exponent();
        let bad = |why: String| FieldError::new(field, format!("'{raw}' {why}"));
        let mut minor: i64 = 0;
        let mut seen_digit = false;
        let mut fraction_digits: Option<u32> = None;
        for ch in digits.chars() {
            match ch {
                '0'..='9' => {
                    if let Some(n) = fraction_digits.as_mut() {
                        *n += 1;
                        if *n > exponent {
                            return Err(bad(format!(
                                "has more decimals than {currency} allows ({exponent})"
                            )));
                        }
                    }
                    seen_digit = true;
                    minor = minor
                        .checked_mul(10)
                        .and_then(|m| m.checked_add(i64::from(ch as u8 - b'0')))
                        .ok_or_else(|| bad("is too large".to_string()))?;
                }
                '.' if fraction_digits.is_none() => fraction_digits = Some(0),
                ',' | ' ' | '_' | '\u{a0}' if fraction_digits.is_none() => {}
                _ => return Err(bad("is not a number such as 1234.56".to_string())),
            }
        }
        if !seen_digit {
            return Err(bad(if raw.trim().is_empty() {
                "is empty".to_string()
            } else {
                "is not a number such as 1234.56".to_string()
            }));
        }
        let scale = 10_i64.pow(exponent - fraction_digits.unwrap_or(0));
        let minor = minor
            .checked_mul(scale)
            .ok_or_else(|| bad("is too large".to_string()))?;
        Ok(Self {
            minor: if negative { -minor } else { minor },
            currency,
        })
    }
}

impl fmt::Display for Money {
    /// `1234.56 CNY`: minor units shown with the currency's decimals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exponent = self.currency.exponent();
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        if exponent == 0 {
            write!(f, "{sign}{abs} {}", self.currency)
        } else {
            let scale = 10_u64.pow(exponent);
            write!(
                f,
                "{sign}{}.{:0width$} {}",
                abs / scale,
                abs % scale,
                self.currency,
                width = exponent as usize
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cny() -> Currency {
        Currency::parse("cny").unwrap()
    }

    #[test]
    fn currency_codes_and_exponents() {
        assert_eq!(cny().as_str(), "CNY");
        assert_eq!(cny().exponent(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().exponent(), 3);
        assert!(Currency::parse("RMB1").is_err());
        assert!(Currency::parse("元").is_err());
    }

    #[test]
    fn parses_decimals_into_minor_units() {
        let cases = [
            ("1234.56", 123_456),
            ("1234.5", 123_450),
            ("1234", 123_400),
            ("-20", -2_000),
            ("+0.07", 7),
            ("1,234.56", 123_456),
            ("¥ 1 234.56", 123_456),
            ("￥99", 9_900),
            (".5", 50),
        ];
        for (raw, minor) in cases {
            assert_eq!(
                Money::parse_decimal("amount", raw, cny()).unwrap().minor,
                minor,
                "{raw}"
            );
        }
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(
            Money::parse_decimal("amount", "1500", jpy).unwrap().minor,
            1500
        );
    }

    #[test]
    fn refuses_what_it_cannot_represent_exactly() {
        for (raw, needle) in [
            ("12.345", "more decimals"),
            ("1e5", "not a number"),
            ("abc", "not a number"),
            ("", "empty"),
            ("1.2.3", "not a number"),
            ("99999999999999999999", "too large"),
            ("92233720368547758.08", "too large"),
        ] {
            let err = Money::parse_decimal("amount", raw, cny()).unwrap_err();
            assert_eq!(err.field, "amount");
            assert!(err.reason.contains(needle), "{raw}: {}", err.reason);
        }
        let jpy = Currency::parse("JPY").unwrap();
        assert!(Money::parse_decimal("amount", "10.5", jpy).is_err());
    }

    #[test]
    fn displays_with_currency_decimals() {
        assert_eq!(
            Money::from_minor(-123_456, cny()).to_string(),
            "-1234.56 CNY"
        );
        assert_eq!(Money::from_minor(5, cny()).to_string(), "0.05 CNY");
        let kwd = Currency::parse("KWD").unwrap();
        assert_eq!(Money::from_minor(1_005, kwd).to_string(), "1.005 KWD");
    }
}
