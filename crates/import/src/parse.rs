//! Turning one input row into a domain record. Every failure names the column (as the file
//! calls it) and says what was expected.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use csv::StringRecord;
use tierwise_domain::records::optional_text;
use tierwise_domain::{
    Activity, ActivityKind, Contact, Currency, Customer, EmailAddress, ExternalId, FieldError,
    Invoice, Locale, Money, Order, Owner,
};
use tierwise_store::load::CustomerRef;

use crate::mapping::Columns;

/// Why a row was refused: the column at fault (its header in the file) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowReject {
    pub field: Option<String>,
    pub reason: String,
}

/// Defaults a row falls back on.
#[derive(Debug, Clone)]
pub(crate) struct RowDefaults {
    pub currency: Currency,
    pub locale: Locale,
    pub date_formats: Vec<String>,
}

struct Row<'a> {
    cols: &'a Columns,
    record: &'a StringRecord,
    defaults: &'a RowDefaults,
}

impl<'a> Row<'a> {
    fn reject(&self, field: &str, reason: impl std::fmt::Display) -> RowReject {
        RowReject {
            field: Some(self.cols.header_of(field)),
            reason: format!("{field}: {reason}"),
        }
    }

    /// Maps a domain validation error to the column it concerns.
    fn invalid(&self, err: FieldError) -> RowReject {
        self.reject(err.field, err.reason)
    }

    fn get(&self, field: &str) -> Option<&'a str> {
        self.cols.get(self.record, field)
    }

    fn required(&self, field: &str) -> Result<&'a str, RowReject> {
        self.get(field)
            .ok_or_else(|| self.reject(field, "is empty; this field is required"))
    }

    fn id(&self, field: &'static str) -> Result<ExternalId, RowReject> {
        ExternalId::parse(field, self.required(field)?).map_err(|e| self.invalid(e))
    }

    fn optional_id(&self, field: &'static str) -> Result<Option<ExternalId>, RowReject> {
        self.get(field)
            .map(|v| ExternalId::parse(field, v).map_err(|e| self.invalid(e)))
            .transpose()
    }

    fn text(&self, field: &'static str) -> Result<Option<String>, RowReject> {
        optional_text(field, self.get(field).unwrap_or("")).map_err(|e| self.invalid(e))
    }

    fn email(&self, field: &str) -> Result<Option<EmailAddress>, RowReject> {
        self.get(field)
            .map(|v| EmailAddress::parse(v).map_err(|e| self.reject(field, e.reason)))
            .transpose()
    }

    fn currency(&self) -> Result<Currency, RowReject> {
        match self.get("currency") {
            Some(code) => Currency::parse(code).map_err(|e| self.invalid(e)),
            None => Ok(self.defaults.currency),
        }
    }

    fn money(&self, field: &'static str, currency: Currency) -> Result<Option<Money>, RowReject> {
        self.get(field)
            .map(|v| Money::parse_decimal(field, v, currency).map_err(|e| self.invalid(e)))
            .transpose()
    }

    fn date(&self, field: &str) -> Result<Option<NaiveDate>, RowReject> {
        self.get(field)
            .map(|v| {
                parse_date(v, &self.defaults.date_formats).ok_or_else(|| {
                    self.reject(
                        field,
                        format!(
                            "'{v}' is not a date such as 2026-10-31 (formats tried: {})",
                            self.defaults.date_formats.join(", ")
                        ),
                    )
                })
            })
            .transpose()
    }

    fn required_money(&self, field: &'static str, currency: Currency) -> Result<Money, RowReject> {
        self.money(field, currency)?
            .ok_or_else(|| self.reject(field, "is empty; this field is required"))
    }

    fn required_date(&self, field: &str) -> Result<NaiveDate, RowReject> {
        self.required(field)?;
        self.date(field)?
            .ok_or_else(|| self.reject(field, "is empty"))
    }

    fn integer(&self, field: &str) -> Result<Option<i64>, RowReject> {
        self.get(field)
            .map(|v| {
                v.replace(',', "")
                    .parse::<i64>()
                    .map_err(|_| self.reject(field, format!("'{v}' is not a whole number")))
            })
            .transpose()
    }
}

/// Parses a date with the configured formats; a date-time keeps its date part as written (the
/// business date in the writer's time zone).
pub(crate) fn parse_date(raw: &str, formats: &[String]) -> Option<NaiveDate> {
    let raw = raw.trim();
    // ISO dates are by far the most common; reading them without chrono's format interpreter
    // is several times faster on multi-million-row files.
    if formats.first().is_some_and(|f| f == "%Y-%m-%d")
        && let Some(date) = iso_date(raw)
    {
        return Some(date);
    }
    let try_formats = |s: &str| {
        formats
            .iter()
            .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
    };
    try_formats(raw).or_else(|| {
        let date_part = raw.split(['T', ' ']).next()?;
        (date_part.len() < raw.len())
            .then(|| try_formats(date_part))
            .flatten()
    })
}

/// `YYYY-MM-DD` exactly, or `None`.
fn iso_date(raw: &str) -> Option<NaiveDate> {
    let b = raw.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)
}

/// Parses an instant: RFC 3339 with offset or `Z`; `YYYY-MM-DD HH:MM[:SS]` (taken as UTC); a
/// date alone (midnight UTC); or epoch milliseconds (13 digits, as Fxiaoke and HubSpot send).
pub(crate) fn parse_instant(raw: &str, formats: &[String]) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Some(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y/%m/%d %H:%M:%S",
        "%Y/%m/%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(raw, f) {
            return Some(t.and_utc());
        }
    }
    if raw.len() == 13 && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_millis);
    }
    formats
        .iter()
        .find_map(|f| NaiveDate::parse_from_str(raw, f).ok())
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn customer_ref(row: &Row<'_>) -> Result<CustomerRef, RowReject> {
    Ok(CustomerRef {
        name: row.text("customer_name")?,
        owner_email: row.email("owner_email")?,
    })
}

/// An owners row.
pub(crate) fn owner(
    cols: &Columns,
    record: &StringRecord,
    defaults: &RowDefaults,
) -> Result<Owner, RowReject> {
    let row = Row {
        cols,
        record,
        defaults,
    };
    let email = row
        .email("email")?
        .ok_or_else(|| row.reject("email", "is empty; this field is required"))?;
    let locale = match row.get("locale") {
        Some(l) => Locale::parse(l).map_err(|e| row.invalid(e))?,
        None => defaults.locale,
    };
    Owner::new(
        email,
        row.required("name")?,
        locale,
        row.optional_id("owner_id")?,
    )
    .map_err(|e| row.invalid(e))
}

/// A customers row, with attributes from the mapped numeric columns.
pub(crate) fn customer(
    cols: &Columns,
    record: &StringRecord,
    defaults: &RowDefaults,
) -> Result<Customer, RowReject> {
    let row = Row {
        cols,
        record,
        defaults,
    };
    let mut customer = Customer::new(row.id("customer_id")?, row.required("name")?)
        .map_err(|e| row.invalid(e))?
        .with_contact(Contact {
            name: row.text("contact_name")?,
            email: row.email("contact_email")?,
            phone: row.text("contact_phone")?,
        })
        .with_owner(row.email("owner_email")?)
        .with_created_on(row.date("created_date")?)
        .with_prospect_rating(row.integer("prospect_rating")?)
        .map_err(|e| row.invalid(e))?;
    for (name, position) in &cols.attributes {
        let raw = record.get(*position).map(str::trim).unwrap_or("");
        if raw.is_empty() {
            continue;
        }
        let header = cols.header_at(*position);
        let value: f64 = raw.replace(',', "").parse().map_err(|_| RowReject {
            field: Some(header.to_string()),
            reason: format!("attribute {name}: '{raw}' is not a number"),
        })?;
        customer = customer
            .with_attribute(name, value)
            .map_err(|e| RowReject {
                field: Some(header.to_string()),
                reason: e.reason,
            })?;
    }
    Ok(customer)
}

/// An orders row and the customer columns it carries.
pub(crate) fn order(
    cols: &Columns,
    record: &StringRecord,
    defaults: &RowDefaults,
) -> Result<(Order, CustomerRef), RowReject> {
    let row = Row {
        cols,
        record,
        defaults,
    };
    let currency = row.currency()?;
    let amount = row.required_money("amount", currency)?;
    let order = Order::new(
        row.id("order_id")?,
        row.id("customer_id")?,
        row.required_date("order_date")?,
        amount,
        row.money("cost", currency)?,
        row.integer("quantity")?,
    )
    .map_err(|e| row.invalid(e))?;
    Ok((order, customer_ref(&row)?))
}

/// An invoices row and the customer columns it carries.
pub(crate) fn invoice(
    cols: &Columns,
    record: &StringRecord,
    defaults: &RowDefaults,
) -> Result<(Invoice, CustomerRef), RowReject> {
    let row = Row {
        cols,
        record,
        defaults,
    };
    let currency = row.currency()?;
    let amount = row.required_money("amount", currency)?;
    let invoice = Invoice::new(
        row.id("invoice_id")?,
        row.id("customer_id")?,
        row.optional_id("order_id")?,
        row.required_date("issued_date")?,
        row.required_date("due_date")?,
        amount,
        row.date("paid_date")?,
    )
    .map_err(|e| row.invalid(e))?;
    Ok((invoice, customer_ref(&row)?))
}

/// An activities row.
pub(crate) fn activity(
    cols: &Columns,
    record: &StringRecord,
    defaults: &RowDefaults,
) -> Result<Activity, RowReject> {
    let row = Row {
        cols,
        record,
        defaults,
    };
    let raw_at = row.required("occurred_at")?;
    let occurred_at = parse_instant(raw_at, &defaults.date_formats).ok_or_else(|| {
        row.reject(
            "occurred_at",
            format!("'{raw_at}' is not a date or time such as 2026-10-31 or 2026-10-31T09:30:00Z"),
        )
    })?;
    Ok(Activity {
        external_id: row.id("activity_id")?,
        customer: row.id("customer_id")?,
        owner_email: row.email("owner_email")?,
        kind: ActivityKind::parse(row.required("kind")?).map_err(|e| row.invalid(e))?,
        occurred_at,
        note: row.text("note")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{Headers, KindMapping, RecordKind};
    use std::path::Path;

    fn defaults() -> RowDefaults {
        RowDefaults {
            currency: Currency::parse("CNY").unwrap(),
            locale: Locale::ZhCn,
            date_formats: vec!["%Y-%m-%d".into(), "%Y/%m/%d".into(), "%Y年%m月%d日".into()],
        }
    }

    #[test]
    fn dates_in_several_formats() {
        let f = defaults().date_formats;
        let d = NaiveDate::from_ymd_opt(2026, 3, 4).unwrap();
        for raw in [
            "2026-03-04",
            "2026/03/04",
            "2026年03月04日",
            "2026-03-04 10:11:12",
            "2026-03-04T10:11:12+08:00",
        ] {
            assert_eq!(parse_date(raw, &f), Some(d), "{raw}");
        }
        assert_eq!(parse_date("04.03.2026", &f), None);
        assert_eq!(parse_date("2026-02-30", &f), None);
    }

    #[test]
    fn instants() {
        let f = defaults().date_formats;
        let utc = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            parse_instant("2026-03-04T10:00:00+08:00", &f),
            Some(utc("2026-03-04T02:00:00Z"))
        );
        assert_eq!(
            parse_instant("2026-03-04 10:00", &f),
            Some(utc("2026-03-04T10:00:00Z"))
        );
        assert_eq!(
            parse_instant("1772582400000", &f),
            Some(utc("2026-03-04T00:00:00Z"))
        );
        assert_eq!(
            parse_instant("2026/03/04", &f),
            Some(utc("2026-03-04T00:00:00Z"))
        );
        assert_eq!(parse_instant("yesterday", &f), None);
    }

    #[test]
    fn order_rejects_name_the_file_header() {
        let mut mapping = KindMapping::default();
        mapping
            .columns
            .insert("amount".into(), Headers::One("金额".into()));
        let headers = StringRecord::from(vec![
            "order_id",
            "customer_id",
            "order_date",
            "金额",
            "quantity",
        ]);
        let cols =
            Columns::resolve(RecordKind::Orders, &mapping, &headers, Path::new("o.csv")).unwrap();
        let rec = |v: Vec<&str>| StringRecord::from(v);
        let ok = order(
            &cols,
            &rec(vec!["O1", "C1", "2026-01-02", "1,234.5", ""]),
            &defaults(),
        )
        .unwrap();
        assert_eq!(ok.0.amount().minor, 123_450);
        let err = order(
            &cols,
            &rec(vec!["O1", "C1", "2026-01-02", "12x", ""]),
            &defaults(),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("金额"));
        assert!(
            err.reason.starts_with("amount: '12x' is not a number"),
            "{}",
            err.reason
        );
        let err = order(
            &cols,
            &rec(vec!["O1", "C1", "2026-01-02", "5", "-3"]),
            &defaults(),
        )
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("quantity"));
        let err = order(
            &cols,
            &rec(vec!["O1", "", "2026-01-02", "5", ""]),
            &defaults(),
        )
        .unwrap_err();
        assert_eq!(err.reason, "customer_id: is empty; this field is required");
    }
}
