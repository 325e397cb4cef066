//! The records tierwise imports: owners, customers, orders, invoices and activities.
//!
//! Each record is built through a constructor that checks its invariants, so a value of these
//! types is always consistent (an invoice is never paid before it was issued, an order's cost is
//! in the order's currency, a quantity is never negative).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::{Currency, EmailAddress, ExternalId, FieldError, Money};

/// Longest free-text value kept (names, notes); longer input is refused rather than cut.
pub const MAX_TEXT_LEN: usize = 2_000;

/// Trims `raw`; `None` when empty. Refuses more than [`MAX_TEXT_LEN`] bytes.
pub fn optional_text(field: &'static str, raw: &str) -> Result<Option<String>, FieldError> {
    let value = raw.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_TEXT_LEN {
        return Err(FieldError::new(
            field,
            format!(
                "is {} bytes long; at most {MAX_TEXT_LEN} are allowed",
                value.len()
            ),
        ));
    }
    Ok(Some(value.to_string()))
}

/// Like [`optional_text`] but the value must be present.
pub fn required_text(field: &'static str, raw: &str) -> Result<String, FieldError> {
    optional_text(field, raw)?.ok_or_else(|| FieldError::new(field, "is empty"))
}

/// The language and formatting conventions an owner reads email in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Locale {
    /// Simplified Chinese (`zh-CN`).
    #[serde(rename = "zh-CN")]
    ZhCn,
    /// English (`en`).
    #[default]
    #[serde(rename = "en")]
    En,
}

impl Locale {
    /// Accepts `zh-CN`, `zh_CN`, `zh`, `zh-Hans`, `中文` and `en`, `en-US`, `en_GB`, `English`.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let lower = raw.trim().to_lowercase().replace('_', "-");
        match lower.as_str() {
            "zh" | "zh-cn" | "zh-hans" | "zh-hans-cn" | "中文" | "chinese" => Ok(Self::ZhCn),
            "en" | "english" => Ok(Self::En),
            other if other.starts_with("en-") => Ok(Self::En),
            _ => Err(FieldError::new(
                "locale",
                format!("'{raw}' is not a supported locale; use zh-CN or en"),
            )),
        }
    }

    /// The BCP 47 tag.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ZhCn => "zh-CN",
            Self::En => "en",
        }
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account manager who owns customers and receives digests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    email: EmailAddress,
    name: String,
    locale: Locale,
    external_id: Option<ExternalId>,
}

impl Owner {
    /// An owner is identified by email; `name` must not be empty.
    pub fn new(
        email: EmailAddress,
        name: &str,
        locale: Locale,
        external_id: Option<ExternalId>,
    ) -> Result<Self, FieldError> {
        Ok(Self {
            email,
            name: required_text("name", name)?,
            locale,
            external_id,
        })
    }

    /// The owner's email, the key owners are matched by.
    pub fn email(&self) -> &EmailAddress {
        &self.email
    }
    /// Display name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Language of their email.
    pub fn locale(&self) -> Locale {
        self.locale
    }
    /// Their id in the source system, when known.
    pub fn external_id(&self) -> Option<&ExternalId> {
        self.external_id.as_ref()
    }
}

/// Contact details of a customer, all optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// The person to talk to.
    pub name: Option<String>,
    /// Their email.
    pub email: Option<EmailAddress>,
    /// Their phone number, as written.
    pub phone: Option<String>,
}

/// A customer (an account) as known to its source system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    external_id: ExternalId,
    name: String,
    contact: Contact,
    owner_email: Option<EmailAddress>,
    created_on: Option<NaiveDate>,
    prospect_rating: Option<u8>,
    attributes: BTreeMap<String, f64>,
}

impl Customer {
    /// A customer with an id and a non-empty name; optional details are added with the `with_`
    /// methods.
    pub fn new(external_id: ExternalId, name: &str) -> Result<Self, FieldError> {
        Ok(Self {
            external_id,
            name: required_text("name", name)?,
            contact: Contact::default(),
            owner_email: None,
            created_on: None,
            prospect_rating: None,
            attributes: BTreeMap::new(),
        })
    }

    /// Sets the contact details.
    pub fn with_contact(mut self, contact: Contact) -> Self {
        self.contact = contact;
        self
    }

    /// Sets the owner (account manager), by email.
    pub fn with_owner(mut self, owner_email: Option<EmailAddress>) -> Self {
        self.owner_email = owner_email;
        self
    }

    /// Sets the date the customer became a customer (or was created in the CRM).
    pub fn with_created_on(mut self, created_on: Option<NaiveDate>) -> Self {
        self.created_on = created_on;
        self
    }

    /// Sets the manual prospect rating, 1 (cold) to 5 (hot).
    pub fn with_prospect_rating(mut self, rating: Option<i64>) -> Result<Self, FieldError> {
        self.prospect_rating = match rating {
            None => None,
            Some(r @ 1..=5) => Some(r as u8),
            Some(r) => {
                return Err(FieldError::new(
                    "prospect_rating",
                    format!("{r} is outside 1-5"),
                ));
            }
        };
        Ok(self)
    }

    /// Adds a named numeric attribute (an NPS score, a credit limit); it must be finite.
    pub fn with_attribute(mut self, name: &str, value: f64) -> Result<Self, FieldError> {
        if !value.is_finite() {
            return Err(FieldError::new(
                "attribute",
                format!("{name} = {value} is not a finite number"),
            ));
        }
        self.attributes.insert(name.to_string(), value);
        Ok(self)
    }

    /// The customer's key in its source.
    pub fn external_id(&self) -> &ExternalId {
        &self.external_id
    }
    /// Company or person name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Contact details.
    pub fn contact(&self) -> &Contact {
        &self.contact
    }
    /// Owner's email, if assigned.
    pub fn owner_email(&self) -> Option<&EmailAddress> {
        self.owner_email.as_ref()
    }
    /// When the customer relationship began.
    pub fn created_on(&self) -> Option<NaiveDate> {
        self.created_on
    }
    /// Manual prospect rating 1–5.
    pub fn prospect_rating(&self) -> Option<u8> {
        self.prospect_rating
    }
    /// Named numeric attributes, ordered by name.
    pub fn attributes(&self) -> &BTreeMap<String, f64> {
        &self.attributes
    }
}

/// One order (or won deal). A refund is an order with a negative amount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    external_id: ExternalId,
    customer: ExternalId,
    order_date: NaiveDate,
    amount: Money,
    cost: Option<Money>,
    quantity: Option<i64>,
}

impl Order {
    /// Checks that `cost` is in the order's currency and `quantity` is not negative.
    pub fn new(
        external_id: ExternalId,
        customer: ExternalId,
        order_date: NaiveDate,
        amount: Money,
        cost: Option<Money>,
        quantity: Option<i64>,
    ) -> Result<Self, FieldError> {
        if let Some(cost) = cost
            && cost.currency != amount.currency
        {
            return Err(FieldError::new(
                "cost",
                format!(
                    "is in {} but the amount is in {}; both must use one currency",
                    cost.currency, amount.currency
                ),
            ));
        }
        if let Some(q) = quantity
            && q < 0
        {
            return Err(FieldError::new(
                "quantity",
                format!("{q} is negative; record a return as an order with a negative amount"),
            ));
        }
        Ok(Self {
            external_id,
            customer,
            order_date,
            amount,
            cost,
            quantity,
        })
    }

    /// The order's key in its source.
    pub fn external_id(&self) -> &ExternalId {
        &self.external_id
    }
    /// The customer's key in the same source.
    pub fn customer(&self) -> &ExternalId {
        &self.customer
    }
    /// The date the order was placed.
    pub fn order_date(&self) -> NaiveDate {
        self.order_date
    }
    /// Revenue (negative for a refund).
    pub fn amount(&self) -> Money {
        self.amount
    }
    /// The currency of amount and cost.
    pub fn currency(&self) -> &Currency {
        &self.amount.currency
    }
    /// Cost of goods, when known.
    pub fn cost(&self) -> Option<Money> {
        self.cost
    }
    /// Units, when known.
    pub fn quantity(&self) -> Option<i64> {
        self.quantity
    }
}

/// An invoice and, once paid, its payment date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    external_id: ExternalId,
    customer: ExternalId,
    order: Option<ExternalId>,
    issued_on: NaiveDate,
    due_on: NaiveDate,
    amount: Money,
    paid_on: Option<NaiveDate>,
}

impl Invoice {
    /// Checks `issued_on ≤ due_on`, `issued_on ≤ paid_on` and `amount ≥ 0`.
    pub fn new(
        external_id: ExternalId,
        customer: ExternalId,
        order: Option<ExternalId>,
        issued_on: NaiveDate,
        due_on: NaiveDate,
        amount: Money,
        paid_on: Option<NaiveDate>,
    ) -> Result<Self, FieldError> {
        if due_on < issued_on {
            return Err(FieldError::new(
                "due_date",
                format!("{due_on} is before the issue date {issued_on}"),
            ));
        }
        if let Some(paid) = paid_on
            && paid < issued_on
        {
            return Err(FieldError::new(
                "paid_date",
                format!(
                    "{paid} is before the issue date {issued_on}; an invoice cannot be paid before it exists"
                ),
            ));
        }
        if amount.minor < 0 {
            return Err(FieldError::new(
                "amount",
                "is negative; import credit notes as orders with a negative amount",
            ));
        }
        Ok(Self {
            external_id,
            customer,
            order,
            issued_on,
            due_on,
            amount,
            paid_on,
        })
    }

    /// The invoice's key in its source.
    pub fn external_id(&self) -> &ExternalId {
        &self.external_id
    }
    /// The customer's key in the same source.
    pub fn customer(&self) -> &ExternalId {
        &self.customer
    }
    /// The order it bills, if known.
    pub fn order(&self) -> Option<&ExternalId> {
        self.order.as_ref()
    }
    /// Issue date.
    pub fn issued_on(&self) -> NaiveDate {
        self.issued_on
    }
    /// Due date.
    pub fn due_on(&self) -> NaiveDate {
        self.due_on
    }
    /// Amount due.
    pub fn amount(&self) -> Money {
        self.amount
    }
    /// The currency of the amount.
    pub fn currency(&self) -> &Currency {
        &self.amount.currency
    }
    /// Date paid in full, if paid.
    pub fn paid_on(&self) -> Option<NaiveDate> {
        self.paid_on
    }
}

/// What kind of contact an activity was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    /// A phone call.
    Call,
    /// An on-site visit.
    Visit,
    /// An email exchange.
    Email,
    /// A meeting (video or in person, not at the customer's site).
    Meeting,
}

impl ActivityKind {
    /// Accepts the English names (any case) and common Chinese CRM labels
    /// (电话, 拜访, 邮件, 会议).
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        match raw.trim().to_lowercase().as_str() {
            "call" | "phone" | "phone call" | "电话" | "通话" => Ok(Self::Call),
            "visit" | "site visit" | "拜访" | "上门拜访" => Ok(Self::Visit),
            "email" | "e-mail" | "mail" | "邮件" => Ok(Self::Email),
            "meeting" | "会议" | "会面" => Ok(Self::Meeting),
            _ => Err(FieldError::new(
                "kind",
                format!("'{raw}' is not one of call, visit, email, meeting"),
            )),
        }
    }

    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Visit => "visit",
            Self::Email => "email",
            Self::Meeting => "meeting",
        }
    }
}

impl fmt::Display for ActivityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A contact with a customer: a call, visit, email or meeting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// The activity's key in its source.
    pub external_id: ExternalId,
    /// The customer's key in the same source.
    pub customer: ExternalId,
    /// Who made the contact, if known.
    pub owner_email: Option<EmailAddress>,
    /// What kind of contact.
    pub kind: ActivityKind,
    /// When it happened (UTC).
    pub occurred_at: DateTime<Utc>,
    /// Free-text note.
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ExternalId {
        ExternalId::parse("id", s).unwrap()
    }
    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }
    fn cny(minor: i64) -> Money {
        Money::from_minor(minor, Currency::parse("CNY").unwrap())
    }

    #[test]
    fn invoice_paid_before_issue_is_refused() {
        let err = Invoice::new(
            id("I1"),
            id("C1"),
            None,
            d("2026-05-10"),
            d("2026-06-09"),
            cny(100),
            Some(d("2026-05-01")),
        )
        .unwrap_err();
        assert_eq!(err.field, "paid_date");
        assert!(err.reason.contains("before the issue date"));
    }

    #[test]
    fn invoice_due_before_issue_and_negative_are_refused() {
        let due = Invoice::new(
            id("I1"),
            id("C1"),
            None,
            d("2026-05-10"),
            d("2026-05-09"),
            cny(1),
            None,
        );
        assert_eq!(due.unwrap_err().field, "due_date");
        let neg = Invoice::new(
            id("I1"),
            id("C1"),
            None,
            d("2026-05-10"),
            d("2026-05-10"),
            cny(-1),
            None,
        );
        assert_eq!(neg.unwrap_err().field, "amount");
        let ok = Invoice::new(
            id("I1"),
            id("C1"),
            Some(id("O1")),
            d("2026-05-10"),
            d("2026-06-09"),
            cny(5),
            Some(d("2026-05-10")),
        );
        assert_eq!(ok.unwrap().paid_on(), Some(d("2026-05-10")));
    }

    #[test]
    fn order_checks_quantity_and_cost_currency() {
        let err = Order::new(
            id("O1"),
            id("C1"),
            d("2026-01-02"),
            cny(100),
            None,
            Some(-2),
        )
        .unwrap_err();
        assert_eq!(err.field, "quantity");
        let usd = Money::from_minor(50, Currency::parse("USD").unwrap());
        let err = Order::new(
            id("O1"),
            id("C1"),
            d("2026-01-02"),
            cny(100),
            Some(usd),
            None,
        )
        .unwrap_err();
        assert_eq!(err.field, "cost");
        let refund = Order::new(
            id("O2"),
            id("C1"),
            d("2026-01-02"),
            cny(-100),
            Some(cny(-60)),
            Some(0),
        )
        .unwrap();
        assert_eq!(refund.amount().minor, -100);
    }

    #[test]
    fn customer_validation() {
        assert_eq!(Customer::new(id("C1"), "  ").unwrap_err().field, "name");
        let c = Customer::new(id("C1"), " 华为 ").unwrap();
        assert_eq!(c.name(), "华为");
        assert_eq!(
            c.clone().with_prospect_rating(Some(6)).unwrap_err().field,
            "prospect_rating"
        );
        assert!(c.clone().with_attribute("nps", f64::NAN).is_err());
        let c = c.with_attribute("nps", 42.0).unwrap();
        assert_eq!(c.attributes().get("nps"), Some(&42.0));
    }

    #[test]
    fn locale_and_activity_kind_parse() {
        assert_eq!(Locale::parse("zh_CN").unwrap(), Locale::ZhCn);
        assert_eq!(Locale::parse("en-GB").unwrap(), Locale::En);
        assert_eq!(Locale::parse("fr").unwrap_err().field, "locale");
        assert_eq!(ActivityKind::parse("拜访").unwrap(), ActivityKind::Visit);
        assert_eq!(ActivityKind::parse("CALL").unwrap(), ActivityKind::Call);
        assert!(ActivityKind::parse("fax").is_err());
    }

    #[test]
    fn owner_needs_a_name() {
        let email = EmailAddress::parse("a@example.com").unwrap();
        assert_eq!(
            Owner::new(email, "", Locale::En, None).unwrap_err().field,
            "name"
        );
    }
}
