//! Pipedrive: users are owners (`GET /v1/users`), organisations are customers and won deals
//! are orders (`GET /api/v2/organizations|deals`, cursor paging, `updated_since`); deals listed
//! with `status=deleted` mark their orders deleted; done activities of the configured types
//! (`/api/v2/activities`) are calls, visits, emails and meetings. The API
//! token travels in the `x-api-token` header, never in a URL. Throttling (429) waits for
//! `Retry-After` or `x-ratelimit-reset`; a spent daily token budget
//! (`x-daily-ratelimit-token-remaining: 0`) stops the run cleanly; a 403 after 429s is a hard
//! stop, never retried into.

use std::cell::Cell;
use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tierwise_domain::{
    Activity, ActivityKind, Contact, Currency, Customer, EmailAddress, ExternalId, Locale, Money,
    Order, Owner, SourceName,
};

use super::http::{Attempt, Http, HttpSettings, header_number, retry_after, transport_error};
use super::{
    Connector, CrmError, CustomerFields, Deleted, Entity, Lookups, Mapped, RawPage, Unmappable,
    decimal_text, masked, text,
};

/// `[crm.pipedrive]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipedriveSettings {
    /// Import from Pipedrive when the import job runs.
    pub enabled: bool,
    /// The company's API address, e.g. `https://acme.pipedrive.com`.
    pub base_url: String,
    /// API token (Settings → Personal preferences → API); from
    /// `TIERWISE__CRM__PIPEDRIVE__API_TOKEN`, never from a file in the repository.
    #[serde(serialize_with = "masked")]
    pub api_token: SecretString,
    /// Records per page (Pipedrive allows up to 500).
    pub page_size: u32,
    /// Code of a monetary custom deal field holding the deal's cost (for profit), if any.
    pub cost_field: Option<String>,
    /// Custom organization fields to import, by field key (`[crm.pipedrive.customer_fields]`).
    pub customer_fields: CustomerFields,
    /// Which activity types (their `key_string`, Settings → Activities) count as which contact:
    /// call, visit, email or meeting. Done activities of other types are not contacts.
    pub activity_kinds: BTreeMap<String, String>,
    /// Timeouts and retries.
    pub http: HttpSettings,
}

impl Default for PipedriveSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://api.pipedrive.com".into(),
            api_token: SecretString::from(String::new()),
            page_size: 500,
            cost_field: None,
            customer_fields: CustomerFields::default(),
            activity_kinds: [
                ("call", "call"),
                ("meeting", "meeting"),
                ("email", "email"),
                ("visit", "visit"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            http: HttpSettings::default(),
        }
    }
}

/// The Pipedrive connector.
#[derive(Debug)]
pub struct Pipedrive {
    settings: PipedriveSettings,
    http: Http,
    source: SourceName,
    /// A 429 came before: a 403 now means Pipedrive escalated the throttling.
    throttled: Cell<bool>,
}

const SOURCE: &str = "pipedrive";

impl Pipedrive {
    /// A connector for `settings`; fails on a missing token or a bad page size.
    pub fn new(settings: PipedriveSettings) -> Result<Self, CrmError> {
        if settings.api_token.expose_secret().trim().is_empty() {
            return Err(CrmError::Setup(
                "pipedrive: no API token; set TIERWISE__CRM__PIPEDRIVE__API_TOKEN".into(),
            ));
        }
        for (key, kind) in &settings.activity_kinds {
            ActivityKind::parse(kind).map_err(|e| {
                CrmError::Setup(format!("crm.pipedrive.activity_kinds.{key}: {}", e.reason))
            })?;
        }
        if !(1..=500).contains(&settings.page_size) {
            return Err(CrmError::Setup(format!(
                "crm.pipedrive.page_size: {} is outside 1..=500",
                settings.page_size
            )));
        }
        let http = Http::new(SOURCE, settings.http.clone())?;
        let source = SourceName::parse(SOURCE).map_err(|e| CrmError::Setup(e.to_string()))?;
        Ok(Self {
            settings,
            http,
            source,
            throttled: Cell::new(false),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url.trim_end_matches('/'))
    }

    /// GETs `path` with `query`, retrying what is transient; the parsed JSON body.
    async fn get(
        &self,
        what: &str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, CrmError> {
        let url = self.url(path);
        self.http
            .retrying(what, || async {
                let response = self
                    .http
                    .client
                    .get(&url)
                    .header("x-api-token", self.settings.api_token.expose_secret())
                    .query(query)
                    .send()
                    .await
                    .map_err(transport_error)?;
                let status = response.status();
                let headers = response.headers().clone();
                let body = response.text().await.map_err(transport_error)?;
                self.judge(what, status.as_u16(), &headers, &body)
            })
            .await
    }

    /// Sorts an answer into a body, a wait-and-retry, or a stop.
    fn judge(
        &self,
        what: &str,
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &str,
    ) -> Result<Value, Attempt> {
        let message = || {
            serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| body.chars().take(200).collect())
        };
        let fatal = |status: u16, message: String| {
            Attempt::Fatal(CrmError::Http {
                source_name: SOURCE.into(),
                what: what.to_owned(),
                status,
                message,
            })
        };
        match status {
            200..=299 => match serde_json::from_str::<Value>(body) {
                Ok(v) if v.get("success").and_then(Value::as_bool) == Some(false) => {
                    Err(fatal(status, message()))
                }
                Ok(v) => Ok(v),
                // A cut-off or garbled body is usually a transient fault: fetch it again.
                Err(e) => Err(Attempt::Transient {
                    what: format!("the body is not JSON ({e})"),
                    retry_after: None,
                }),
            },
            401 => Err(Attempt::Fatal(CrmError::Auth {
                source_name: SOURCE.into(),
                status,
                message: message(),
                hint: "the API token (TIERWISE__CRM__PIPEDRIVE__API_TOKEN)".into(),
            })),
            429 => {
                if header_number(headers, "x-daily-ratelimit-token-remaining") == Some(0.0) {
                    return Err(Attempt::Fatal(CrmError::QuotaExhausted(SOURCE.into())));
                }
                self.throttled.set(true);
                let wait = retry_after(headers).or_else(|| {
                    header_number(headers, "x-ratelimit-reset")
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(std::time::Duration::from_secs_f64)
                });
                Err(Attempt::Transient {
                    what: "throttled (HTTP 429)".into(),
                    retry_after: wait,
                })
            }
            403 if self.throttled.get() => Err(fatal(
                status,
                format!(
                    "refused after throttling ({}); Pipedrive blocks clients that keep calling \
                     through 429s: wait before the next run",
                    message()
                ),
            )),
            500..=599 => Err(Attempt::Transient {
                what: format!("HTTP {status}: {}", message()),
                retry_after: retry_after(headers),
            }),
            _ => Err(fatal(status, message())),
        }
    }
}

/// `additional_data.next_cursor`, when there is a next page.
fn next_cursor(body: &Value) -> Option<String> {
    body.pointer("/additional_data/next_cursor")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
}

fn records(body: &Value) -> Vec<Value> {
    match body.get("data") {
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    }
}

impl Connector for Pipedrive {
    fn source(&self) -> &SourceName {
        &self.source
    }

    async fn page(
        &self,
        entity: Entity,
        since: Option<DateTime<Utc>>,
        cursor: Option<&str>,
    ) -> Result<RawPage, CrmError> {
        if matches!(entity, Entity::Invoices | Entity::DeletedInvoices) {
            return Err(super::not_read(entity));
        }
        if entity == Entity::Owners {
            // A company has tens of users: all of them, every run.
            let body = self.get("users", "/v1/users", &[]).await?;
            return Ok(RawPage {
                records: records(&body),
                next: None,
            });
        }
        let (what, path) = match entity {
            Entity::Customers => ("organizations", "/api/v2/organizations"),
            Entity::DeletedOrders => ("deleted deals", "/api/v2/deals"),
            Entity::Activities => ("activities", "/api/v2/activities"),
            _ => ("deals", "/api/v2/deals"),
        };
        // Ordered by id (stable while records change); changed ones by `updated_since`.
        let mut query = vec![("limit", self.settings.page_size.to_string())];
        if let Some(since) = since {
            query.push((
                "updated_since",
                since.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            ));
        }
        match entity {
            Entity::Orders => query.push(("status", "won".into())),
            // Deleted deals are listed only when asked for by status.
            Entity::DeletedOrders => query.push(("status", "deleted".into())),
            _ => {}
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_owned()));
        }
        let body = self.get(what, path, &query).await?;
        Ok(RawPage {
            records: records(&body),
            next: next_cursor(&body),
        })
    }

    fn map(
        &self,
        entity: Entity,
        record: &Value,
        lookups: &Lookups,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        match entity {
            Entity::Owners => map_user(record, lookups),
            Entity::Customers => map_organization(record, lookups, &self.settings.customer_fields),
            Entity::Orders => map_deal(record, self.settings.cost_field.as_deref()),
            Entity::DeletedOrders => {
                let changed = time(record, "update_time")?;
                let deleted = Deleted {
                    external_id: id_of(record, "id")?,
                    at: changed,
                    reason: "deleted in pipedrive".into(),
                };
                Ok((Mapped::Deleted(deleted), changed))
            }
            Entity::Activities => self.map_activity(record, lookups),
            // Pipedrive does not list deleted organisations; invoices are not read.
            Entity::DeletedCustomers
            | Entity::Invoices
            | Entity::DeletedInvoices
            | Entity::DeletedActivities => Ok((Mapped::Ignored, None)),
        }
    }

    fn entities(&self) -> Vec<Entity> {
        vec![
            Entity::Owners,
            Entity::Customers,
            Entity::Orders,
            Entity::Activities,
            Entity::DeletedOrders,
        ]
    }
}

impl Pipedrive {
    /// A done activity of a configured type with an organisation is a contact; planned ones,
    /// other types and activities with a person alone are not.
    fn map_activity(
        &self,
        record: &Value,
        lookups: &Lookups,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        let changed = time(record, "update_time")?;
        // A deleted activity stays listed with `is_deleted`: a contact held is marked deleted.
        if record.get("is_deleted").and_then(Value::as_bool) == Some(true) {
            let deleted = Deleted {
                external_id: id_of(record, "id")?,
                at: changed,
                reason: "deleted in pipedrive".into(),
            };
            return Ok((Mapped::Deleted(deleted), changed));
        }
        let kind = text(record, "type").and_then(|t| self.settings.activity_kinds.get(t));
        let done = record.get("done").and_then(Value::as_bool) == Some(true);
        let (Some(kind), true) = (kind, done) else {
            return Ok((Mapped::Ignored, changed));
        };
        let customer = match record.get("org_id") {
            Some(Value::Null) | None => return Ok((Mapped::Ignored, changed)),
            Some(_) => id_of(record, "org_id")?,
        };
        let kind = ActivityKind::parse(kind)?;
        // When it was marked done; else when it was due (a day, perhaps with a time).
        let occurred_at = match time(record, "marked_as_done_time")? {
            Some(t) => t,
            None => {
                let day = text(record, "due_date").ok_or_else(|| {
                    Unmappable::field("due_date", "is missing on a done activity")
                })?;
                let day = super::iso_date("due_date", day)?;
                // v2 writes `15:00:00`, v1 wrote `15:00`; an activity may have no time.
                let at = text(record, "due_time")
                    .and_then(|t| {
                        chrono::NaiveTime::parse_from_str(t, "%H:%M:%S")
                            .or_else(|_| chrono::NaiveTime::parse_from_str(t, "%H:%M"))
                            .ok()
                    })
                    .unwrap_or_default();
                day.and_time(at).and_utc()
            }
        };
        // A user who is not among the imported ones leaves the contact without an owner.
        let owner_email = match record.get("owner_id") {
            Some(Value::Null) | None => None,
            Some(_) => lookups
                .owner_email("owner_id", &id_of(record, "owner_id")?)
                .ok(),
        };
        let note = text(record, "subject")
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned);
        let activity = Activity {
            external_id: id_of(record, "id")?,
            customer,
            owner_email,
            kind,
            occurred_at,
            note,
        };
        Ok((Mapped::Activity(activity), changed))
    }
}

/// An id field (Pipedrive ids are numbers; stored as text).
fn id_of(record: &Value, field: &'static str) -> Result<ExternalId, Unmappable> {
    let raw = match record.get(field) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => return Err(Unmappable::field(field, "is missing")),
        Some(other) => {
            return Err(Unmappable::field(field, format!("is {other}, not an id")));
        }
    };
    Ok(ExternalId::parse(field, &raw)?)
}

/// An RFC 3339 time (v2), or `YYYY-MM-DD HH:MM:SS` in UTC (v1).
fn time(record: &Value, field: &str) -> Result<Option<DateTime<Utc>>, Unmappable> {
    let Some(raw) = text(record, field).filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S")
        .map(|t| Some(t.and_utc()))
        .map_err(|_| {
            Unmappable::field(
                field,
                format!("'{raw}' is not a time like 2024-05-02T09:41:12Z"),
            )
        })
}

fn map_user(
    record: &Value,
    lookups: &Lookups,
) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
    let id = id_of(record, "id")?;
    let email = EmailAddress::parse(text(record, "email").unwrap_or_default())?;
    let name = text(record, "name").unwrap_or_default();
    let locale = text(record, "locale")
        .and_then(|l| Locale::parse(l).ok())
        .unwrap_or(lookups.default_locale);
    let owner = Owner::new(email, name, locale, Some(id))?;
    Ok((Mapped::Owner(owner), time(record, "modified")?))
}

fn map_organization(
    record: &Value,
    lookups: &Lookups,
    customer_fields: &CustomerFields,
) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
    let id = id_of(record, "id")?;
    let name = text(record, "name").unwrap_or_default();
    let owner = match record.get("owner_id") {
        Some(Value::Null) | None => None,
        Some(_) => {
            let owner_id = id_of(record, "owner_id")?;
            Some(lookups.owner_email("owner_id", &owner_id)?)
        }
    };
    let created_on = time(record, "add_time")?.map(|t| t.date_naive());
    let customer = Customer::new(id, name)?
        .with_owner(owner)
        .with_created_on(created_on)
        .with_contact(Contact::default());
    // v2 returns custom fields under `custom_fields`, by field key.
    let customer = customer_fields.apply(customer, |key| {
        record.get("custom_fields").and_then(|c| c.get(key))
    })?;
    Ok((Mapped::Customer(customer), time(record, "update_time")?))
}

fn map_deal(
    record: &Value,
    cost_field: Option<&str>,
) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
    let id = id_of(record, "id")?;
    let customer = match record.get("org_id") {
        Some(Value::Null) | None => {
            return Err(Unmappable::field(
                "org_id",
                "the won deal has no organization; link it to one in Pipedrive",
            ));
        }
        Some(_) => id_of(record, "org_id")?,
    };
    let currency = Currency::parse(text(record, "currency").unwrap_or_default())?;
    let value = record
        .get("value")
        .and_then(decimal_text)
        .ok_or_else(|| Unmappable::field("value", "is missing"))?;
    let amount = Money::parse_decimal("value", &value, currency)?;
    let day = time(record, "won_time")?
        .or(time(record, "close_time")?)
        .map(|t| t.date_naive());
    let order_date: NaiveDate =
        day.ok_or_else(|| Unmappable::field("won_time", "is missing on a won deal"))?;
    let cost = match cost_field.and_then(|code| record.pointer(&format!("/custom_fields/{code}"))) {
        None | Some(Value::Null) => None,
        Some(field) => {
            let raw = field
                .get("value")
                .and_then(decimal_text)
                .or_else(|| decimal_text(field))
                .ok_or_else(|| Unmappable::field("cost", "is not an amount"))?;
            Some(Money::parse_decimal("cost", &raw, currency)?)
        }
    };
    let order = Order::new(id, customer, order_date, amount, cost, None)?;
    Ok((Mapped::Order(order), time(record, "update_time")?))
}
