//! Zoho CRM: users are owners, Accounts are customers and won Deals are orders, through the
//! REST API (`{api_domain}/crm/v8/...`) with an OAuth refresh token. Access tokens are minted at
//! the data centre's accounts server, cached for their lifetime (a refresh token may mint only
//! 10 per 10 minutes), refreshed a minute early, and refreshed once more when the API answers
//! `INVALID_TOKEN`. Paging follows `page_token` (pages past 2,000 records need it), changes come
//! from `If-Modified-Since`, and 204/304 mean an empty page. Zoho sends no `Retry-After` on 429,
//! so throttling waits by back-off. Calls and meetings (Events) on an account are contacts.
//! Deleted Accounts, Deals, Invoices, Calls and Events are read from `/{module}/deleted`
//! (recycle bin and purged, since the watermark) and marked deleted.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tierwise_domain::{
    Activity, ActivityKind, Currency, Customer, EmailAddress, ExternalId, Invoice, Locale, Money,
    Order, Owner, SourceName,
};

use super::http::{Attempt, Http, HttpSettings, retry_after, transport_error};
use super::{
    Connector, CrmError, CustomerFields, Deleted, Entity, Lookups, Mapped, RawPage, TwoObjects,
    Unmappable, configured_cost, decimal_text, iso_date, masked, text, text_or_number_id,
};

/// `[crm.zoho]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZohoSettings {
    /// Import from Zoho CRM when the import job runs.
    pub enabled: bool,
    /// The data centre's accounts server, e.g. `https://accounts.zoho.com.cn`.
    pub accounts_url: String,
    /// API version path segment.
    pub api_version: String,
    /// OAuth client id (from the Zoho API console).
    pub client_id: String,
    /// OAuth client secret; from `TIERWISE__CRM__ZOHO__CLIENT_SECRET`.
    #[serde(serialize_with = "masked")]
    pub client_secret: SecretString,
    /// Refresh token; from `TIERWISE__CRM__ZOHO__REFRESH_TOKEN`.
    #[serde(serialize_with = "masked")]
    pub refresh_token: SecretString,
    /// Records per page (Zoho allows up to 200).
    pub page_size: u32,
    /// The Deals stage that means won.
    pub won_stage: String,
    /// Currency of amounts (Zoho returns plain numbers in the org's currency).
    pub currency: String,
    /// API name of a currency field on Deals holding the deal's cost, if any.
    pub cost_field: Option<String>,
    /// Import the Invoices module (needs the `ZohoCRM.modules.invoices.READ` scope).
    pub invoices: bool,
    /// Invoice statuses that mean paid.
    pub paid_statuses: Vec<String>,
    /// API name of a date field on Invoices holding the day it was paid, if the org keeps one;
    /// without it a paid invoice counts as paid on the day of its last change.
    pub paid_date_field: Option<String>,
    /// Custom Accounts fields to import (`[crm.zoho.customer_fields]`).
    pub customer_fields: CustomerFields,
    /// Import meetings (the Events module) on accounts as contacts, after the calls (needs the
    /// `ZohoCRM.modules.events.READ` scope).
    pub meetings: bool,
    /// What a meeting counts as: `meeting`, or `visit` where the team logs its customer visits
    /// as meetings.
    pub meeting_kind: String,
    /// Timeouts and retries.
    pub http: HttpSettings,
}

impl Default for ZohoSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            accounts_url: "https://accounts.zoho.com".into(),
            api_version: "v8".into(),
            client_id: String::new(),
            client_secret: SecretString::from(String::new()),
            refresh_token: SecretString::from(String::new()),
            page_size: 200,
            won_stage: "Closed Won".into(),
            currency: "CNY".into(),
            cost_field: None,
            invoices: true,
            paid_statuses: vec!["Paid".into()],
            paid_date_field: None,
            customer_fields: CustomerFields::default(),
            meetings: true,
            meeting_kind: "meeting".into(),
            // Zoho sends no Retry-After; its own guidance is to back off 30 s → 60 s → 120 s.
            http: HttpSettings {
                backoff_ms: 2_000,
                max_backoff_secs: 120,
                ..HttpSettings::default()
            },
        }
    }
}

/// A minted access token.
struct AccessToken {
    token: SecretString,
    api_domain: String,
    renew_at: Instant,
}

/// The Zoho CRM connector.
pub struct Zoho {
    settings: ZohoSettings,
    http: Http,
    source: SourceName,
    currency: Currency,
    /// What a meeting counts as (`meeting_kind`).
    meeting_kind: ActivityKind,
    token: RefCell<Option<AccessToken>>,
}

impl std::fmt::Debug for Zoho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zoho")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const SOURCE: &str = "zoho";
/// Activities are the Calls, then the Events (meetings); a position among the Events is marked.
const CALLS_THEN_EVENTS: TwoObjects = TwoObjects { marker: "events:" };
const CREDENTIALS: &str = "[crm.zoho] client_id, TIERWISE__CRM__ZOHO__CLIENT_SECRET and \
     TIERWISE__CRM__ZOHO__REFRESH_TOKEN, and that accounts_url is your data centre's";

impl Zoho {
    /// A connector for `settings`; fails on missing credentials or bad settings.
    pub fn new(settings: ZohoSettings) -> Result<Self, CrmError> {
        if settings.client_id.trim().is_empty()
            || settings.client_secret.expose_secret().trim().is_empty()
            || settings.refresh_token.expose_secret().trim().is_empty()
        {
            return Err(CrmError::Setup(format!(
                "zoho: credentials missing; set {CREDENTIALS}"
            )));
        }
        if !(1..=200).contains(&settings.page_size) {
            return Err(CrmError::Setup(format!(
                "crm.zoho.page_size: {} is outside 1..=200",
                settings.page_size
            )));
        }
        let currency = Currency::parse(&settings.currency)
            .map_err(|e| CrmError::Setup(format!("crm.zoho.currency: {}", e.reason)))?;
        let meeting_kind = ActivityKind::parse(&settings.meeting_kind)
            .map_err(|e| CrmError::Setup(format!("crm.zoho.meeting_kind: {}", e.reason)))?;
        let http = Http::new(SOURCE, settings.http.clone())?;
        let source = SourceName::parse(SOURCE).map_err(|e| CrmError::Setup(e.to_string()))?;
        Ok(Self {
            settings,
            http,
            source,
            currency,
            meeting_kind,
            token: RefCell::new(None),
        })
    }

    /// A valid access token and its API domain, minting one when none is cached or it is
    /// about to expire.
    async fn access(&self) -> Result<(SecretString, String), CrmError> {
        if let Some(t) = self.token.borrow().as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok((t.token.clone(), t.api_domain.clone()));
        }
        let url = format!(
            "{}/oauth/v2/token",
            self.settings.accounts_url.trim_end_matches('/')
        );
        let form = [
            ("grant_type", "refresh_token"),
            ("client_id", self.settings.client_id.as_str()),
            ("client_secret", self.settings.client_secret.expose_secret()),
            ("refresh_token", self.settings.refresh_token.expose_secret()),
        ];
        let body: Value = self
            .http
            .retrying("token", || async {
                let response = self
                    .http
                    .client
                    .post(&url)
                    .form(&form)
                    .send()
                    .await
                    .map_err(transport_error)?;
                let status = response.status().as_u16();
                let text = response.text().await.map_err(transport_error)?;
                match (status, serde_json::from_str::<Value>(&text)) {
                    (500..=599, _) | (429, _) => Err(Attempt::Transient {
                        what: format!("token endpoint: HTTP {status}"),
                        retry_after: None,
                    }),
                    (_, Ok(v)) => Ok(v),
                    (_, Err(_)) => Err(Attempt::Transient {
                        what: format!("token endpoint: HTTP {status}, not JSON"),
                        retry_after: None,
                    }),
                }
            })
            .await?;
        // The token endpoint reports refusals in a 200 body.
        if let Some(error) = body.get("error").and_then(Value::as_str) {
            return Err(CrmError::Auth {
                source_name: SOURCE.into(),
                status: 200,
                message: error.to_owned(),
                hint: CREDENTIALS.into(),
            });
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| CrmError::Auth {
                source_name: SOURCE.into(),
                status: 200,
                message: "the token endpoint returned no access_token".into(),
                hint: CREDENTIALS.into(),
            })?;
        let api_domain = body
            .get("api_domain")
            .and_then(Value::as_str)
            .unwrap_or("https://www.zohoapis.com")
            .trim_end_matches('/')
            .to_owned();
        let lifetime = body
            .get("expires_in")
            .and_then(Value::as_u64)
            .unwrap_or(3600);
        // Renewed a minute early so a page never starts on a token about to lapse.
        let renew_at = Instant::now() + Duration::from_secs(lifetime.saturating_sub(60).max(1));
        let token = SecretString::from(token.to_owned());
        *self.token.borrow_mut() = Some(AccessToken {
            token: token.clone(),
            api_domain: api_domain.clone(),
            renew_at,
        });
        Ok((token, api_domain))
    }

    /// GETs `path` (under `/crm/<version>`); None for 204/304 (nothing there). An expired token
    /// is renewed once.
    async fn get(
        &self,
        what: &str,
        path: &str,
        query: &[(&str, String)],
        modified_since: Option<DateTime<Utc>>,
    ) -> Result<Option<Value>, CrmError> {
        for renewed in [false, true] {
            let (token, domain) = self.access().await?;
            let url = format!("{domain}/crm/{}{path}", self.settings.api_version);
            let answer = self
                .http
                .retrying(what, || async {
                    let mut request = self
                        .http
                        .client
                        .get(&url)
                        .header(
                            "Authorization",
                            format!("Zoho-oauthtoken {}", token.expose_secret()),
                        )
                        .query(query);
                    if let Some(since) = modified_since {
                        request = request.header(
                            "If-Modified-Since",
                            since.format("%Y-%m-%dT%H:%M:%S+00:00").to_string(),
                        );
                    }
                    let response = request.send().await.map_err(transport_error)?;
                    let status = response.status().as_u16();
                    let headers = response.headers().clone();
                    let body = response.text().await.map_err(transport_error)?;
                    judge(what, status, &headers, &body)
                })
                .await;
            match answer {
                Err(CrmError::Auth { .. }) if !renewed => {
                    // Expired or revoked early: mint a new token and try once more.
                    *self.token.borrow_mut() = None;
                }
                other => return other,
            }
        }
        unreachable_auth()
    }
}

fn unreachable_auth() -> Result<Option<Value>, CrmError> {
    Err(CrmError::Setup(
        "zoho: authentication loop ended without an answer".into(),
    ))
}

/// Sorts an answer into a body, nothing, a wait-and-retry, or a stop.
fn judge(
    what: &str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> Result<Option<Value>, Attempt> {
    let parsed = serde_json::from_str::<Value>(body);
    let code = || {
        parsed
            .as_ref()
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_str))
            .unwrap_or("")
            .to_owned()
    };
    let message = || {
        parsed
            .as_ref()
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect())
    };
    match status {
        204 | 304 => Ok(None),
        200..=299 => match parsed {
            Ok(v) => Ok(Some(v)),
            Err(e) => Err(Attempt::Transient {
                what: format!("the body is not JSON ({e})"),
                retry_after: None,
            }),
        },
        401 => Err(Attempt::Fatal(CrmError::Auth {
            source_name: SOURCE.into(),
            status,
            message: format!("{}: {}", code(), message()),
            hint: CREDENTIALS.into(),
        })),
        429 => Err(Attempt::Transient {
            what: format!("throttled ({})", code()),
            retry_after: retry_after(headers),
        }),
        500..=599 => Err(Attempt::Transient {
            what: format!("HTTP {status}: {}", message()),
            retry_after: None,
        }),
        _ => Err(Attempt::Fatal(CrmError::Http {
            source_name: SOURCE.into(),
            what: what.to_owned(),
            status,
            message: format!("{}: {}", code(), message()),
        })),
    }
}

impl Connector for Zoho {
    fn source(&self) -> &SourceName {
        &self.source
    }

    fn entities(&self) -> Vec<Entity> {
        let mut entities = vec![Entity::Owners, Entity::Customers, Entity::Orders];
        if self.settings.invoices {
            entities.push(Entity::Invoices);
        }
        entities.extend([
            Entity::Activities,
            Entity::DeletedCustomers,
            Entity::DeletedOrders,
        ]);
        if self.settings.invoices {
            entities.push(Entity::DeletedInvoices);
        }
        entities.push(Entity::DeletedActivities);
        entities
    }

    async fn page(
        &self,
        entity: Entity,
        since: Option<DateTime<Utc>>,
        cursor: Option<&str>,
    ) -> Result<RawPage, CrmError> {
        // Activities (and their deletions) are the Calls, then the Events; a position among
        // the Events is marked.
        let engagements = matches!(entity, Entity::Activities | Entity::DeletedActivities);
        let (events, cursor) = match engagements {
            true => CALLS_THEN_EVENTS.split(cursor),
            false => (false, cursor),
        };
        let page = self.module_page(entity, since, cursor, events).await?;
        let next = match engagements {
            true => CALLS_THEN_EVENTS.next(events, page.next, self.settings.meetings),
            false => page.next,
        };
        Ok(RawPage {
            records: page.records,
            next,
        })
    }

    fn map(
        &self,
        entity: Entity,
        record: &Value,
        lookups: &Lookups,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        match entity {
            // Events are told from calls by their start (every asked-for field comes back).
            Entity::Activities if record.get("Start_DateTime").is_some() => {
                map_event(record, lookups, self.meeting_kind)
            }
            Entity::Activities => map_call(record, lookups),
            Entity::Invoices => self.map_invoice(record),
            Entity::DeletedCustomers
            | Entity::DeletedOrders
            | Entity::DeletedInvoices
            | Entity::DeletedActivities => {
                let at = time(record, "deleted_time")?;
                let reason = match text(record, "type") {
                    Some("recycle") => "deleted in zoho (in the recycle bin)",
                    Some("permanent") => "deleted in zoho (purged)",
                    _ => "deleted in zoho",
                };
                let deleted = Deleted {
                    external_id: text_or_number_id(record, "id")?,
                    at,
                    reason: reason.into(),
                };
                Ok((Mapped::Deleted(deleted), at))
            }
            Entity::Owners => {
                let id = text_or_number_id(record, "id")?;
                let email = EmailAddress::parse(text(record, "email").unwrap_or_default())?;
                let name = text(record, "full_name").unwrap_or_default();
                let locale = text(record, "locale")
                    .and_then(|l| Locale::parse(l).ok())
                    .unwrap_or(lookups.default_locale);
                Ok((
                    Mapped::Owner(Owner::new(email, name, locale, Some(id))?),
                    time(record, "Modified_Time")?,
                ))
            }
            Entity::Customers => {
                let id = text_or_number_id(record, "id")?;
                let owner = owner_of(record, lookups)?;
                let created_on = time(record, "Created_Time")?.map(|t| t.date_naive());
                let customer = Customer::new(id, text(record, "Account_Name").unwrap_or_default())?
                    .with_owner(owner)
                    .with_created_on(created_on);
                let customer = self
                    .settings
                    .customer_fields
                    .apply(customer, |f| record.get(f))?;
                Ok((Mapped::Customer(customer), time(record, "Modified_Time")?))
            }
            Entity::Orders => {
                let changed = time(record, "Modified_Time")?;
                if text(record, "Stage") != Some(self.settings.won_stage.as_str()) {
                    return Ok((Mapped::Ignored, changed));
                }
                let id = text_or_number_id(record, "id")?;
                let customer = account_of(record, "won deal")?;
                let amount = record
                    .get("Amount")
                    .and_then(decimal_text)
                    .ok_or_else(|| Unmappable::field("Amount", "is missing"))?;
                let amount = Money::parse_decimal("Amount", &amount, self.currency)?;
                let day = text(record, "Closing_Date")
                    .ok_or_else(|| Unmappable::field("Closing_Date", "is missing on a won deal"))?;
                let day = iso_date("Closing_Date", day)?;
                let cost =
                    configured_cost(record, self.settings.cost_field.as_deref(), self.currency)?;
                Ok((
                    Mapped::Order(Order::new(id, customer, day, amount, cost, None)?),
                    changed,
                ))
            }
        }
    }
}

impl Zoho {
    /// One page of the module `entity` reads (the Events instead of the Calls when `events`).
    async fn module_page(
        &self,
        entity: Entity,
        since: Option<DateTime<Utc>>,
        cursor: Option<&str>,
        events: bool,
    ) -> Result<RawPage, CrmError> {
        let per_page = self.settings.page_size.to_string();
        // Users and deletions page by number (an org has far fewer than 2,000 users, and
        // deletions since the last run are few).
        let numbered = match entity {
            Entity::Owners => Some(("users", "/users", "AllUsers", "users", None)),
            Entity::DeletedCustomers => Some((
                "deleted accounts",
                "/Accounts/deleted",
                "all",
                "data",
                since,
            )),
            Entity::DeletedOrders => {
                Some(("deleted deals", "/Deals/deleted", "all", "data", since))
            }
            Entity::DeletedInvoices => Some((
                "deleted invoices",
                "/Invoices/deleted",
                "all",
                "data",
                since,
            )),
            Entity::DeletedActivities if events => {
                Some(("deleted meetings", "/Events/deleted", "all", "data", since))
            }
            Entity::DeletedActivities => {
                Some(("deleted calls", "/Calls/deleted", "all", "data", since))
            }
            Entity::Customers | Entity::Orders | Entity::Activities | Entity::Invoices => None,
        };
        if let Some((what, path, kind, key, since)) = numbered {
            let page = cursor.unwrap_or("1").to_owned();
            let query = [
                ("type", kind.to_owned()),
                ("per_page", per_page),
                ("page", page.clone()),
            ];
            let body = self.get(what, path, &query, since).await?;
            let records = body
                .as_ref()
                .and_then(|b| b.get(key))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let more = body
                .as_ref()
                .and_then(|b| b.pointer("/info/more_records"))
                .and_then(Value::as_bool)
                == Some(true);
            let next = more.then(|| {
                page.parse::<u64>()
                    .map(|p| (p + 1).to_string())
                    .unwrap_or_default()
            });
            return Ok(RawPage { records, next });
        }
        let (what, path, fields) = match entity {
            Entity::Customers => {
                let mut fields = "Account_Name,Owner,Created_Time,Modified_Time".to_owned();
                for field in self.settings.customer_fields.names() {
                    fields.push(',');
                    fields.push_str(field);
                }
                ("accounts", "/Accounts", fields)
            }
            Entity::Invoices => {
                let mut fields =
                    "Subject,Account_Name,Sales_Order,Invoice_Date,Due_Date,Grand_Total,Status,\
                     Modified_Time"
                        .to_owned();
                if let Some(paid) = &self.settings.paid_date_field {
                    fields.push(',');
                    fields.push_str(paid);
                }
                ("invoices", "/Invoices", fields)
            }
            Entity::Activities if events => (
                "meetings",
                "/Events",
                "Event_Title,Start_DateTime,End_DateTime,What_Id,Owner,Modified_Time".to_owned(),
            ),
            Entity::Activities => (
                "calls",
                "/Calls",
                "Subject,Call_Type,Call_Start_Time,Outgoing_Call_Status,What_Id,Owner,Modified_Time"
                    .to_owned(),
            ),
            _ => {
                let mut fields =
                    "Deal_Name,Amount,Closing_Date,Stage,Account_Name,Owner,Modified_Time"
                        .to_owned();
                if let Some(cost) = &self.settings.cost_field {
                    fields.push(',');
                    fields.push_str(cost);
                }
                ("deals", "/Deals", fields)
            }
        };
        let mut query = vec![
            ("fields", fields),
            ("per_page", per_page),
            ("sort_by", "Modified_Time".to_owned()),
            ("sort_order", "asc".to_owned()),
        ];
        if let Some(token) = cursor {
            query.push(("page_token", token.to_owned()));
        }
        let Some(body) = self.get(what, path, &query, since).await? else {
            return Ok(RawPage::default());
        };
        let records = body
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let more = body.pointer("/info/more_records").and_then(Value::as_bool) == Some(true);
        let next = match (
            more,
            body.pointer("/info/next_page_token")
                .and_then(Value::as_str),
        ) {
            (true, Some(token)) => Some(token.to_owned()),
            (true, None) => {
                return Err(CrmError::Http {
                    source_name: SOURCE.into(),
                    what: what.into(),
                    status: 200,
                    message: "more records announced without a next_page_token".into(),
                });
            }
            (false, _) => None,
        };
        Ok(RawPage { records, next })
    }
}

impl Zoho {
    /// An invoice of the Invoices module: issued on `Invoice_Date`, due on `Due_Date` (or on
    /// issue without one) for `Grand_Total`. Paid when its `Status` is one of `paid_statuses`:
    /// on the day in `paid_date_field` when configured, else on the day of its last change
    /// (Zoho CRM keeps payments in Zoho Books; marking the invoice paid changes it). Cancelled
    /// or voided invoices are not debts and are skipped.
    fn map_invoice(&self, record: &Value) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        let changed = time(record, "Modified_Time")?;
        let status = text(record, "Status");
        if matches!(status, Some("Cancelled" | "Void" | "Voided")) {
            return Ok((Mapped::Ignored, changed));
        }
        let id = text_or_number_id(record, "id")?;
        let customer = account_of(record, "invoice")?;
        let order = match record.get("Sales_Order") {
            Some(order @ Value::Object(_)) => Some(text_or_number_id(order, "id")?),
            _ => None,
        };
        let issued = text(record, "Invoice_Date")
            .ok_or_else(|| Unmappable::field("Invoice_Date", "is missing"))?;
        let issued = iso_date("Invoice_Date", issued)?;
        let due = match text(record, "Due_Date") {
            Some(due) => iso_date("Due_Date", due)?,
            None => issued,
        };
        let amount = record
            .get("Grand_Total")
            .and_then(decimal_text)
            .ok_or_else(|| Unmappable::field("Grand_Total", "is missing"))?;
        let amount = Money::parse_decimal("Grand_Total", &amount, self.currency)?;
        let is_paid =
            status.is_some_and(|status| self.settings.paid_statuses.iter().any(|p| p == status));
        let paid = match (&self.settings.paid_date_field, is_paid) {
            (_, false) => None,
            (Some(field), true) => match text(record, field) {
                Some(day) => Some(iso_date(field, day)?),
                None => local_day(record, "Modified_Time")?,
            },
            (None, true) => local_day(record, "Modified_Time")?,
        };
        let invoice = Invoice::new(id, customer, order, issued, due, amount, paid)?;
        Ok((Mapped::Invoice(invoice), changed))
    }
}

/// The day of an ISO-8601 time in the offset it was written with (the org's time zone).
fn local_day(record: &Value, field: &str) -> Result<Option<chrono::NaiveDate>, Unmappable> {
    Ok(offset_time(record, field)?.map(|t| t.date_naive()))
}

/// The account a deal or invoice belongs to (`Account_Name.id`); an error naming `what`
/// without one.
fn account_of(record: &Value, what: &str) -> Result<ExternalId, Unmappable> {
    match record.get("Account_Name") {
        Some(account @ Value::Object(_)) => text_or_number_id(account, "id"),
        _ => Err(Unmappable::field(
            "Account_Name",
            format!("the {what} has no account; link it to one in Zoho CRM"),
        )),
    }
}

/// The record's `Owner`: its email, else the imported user with its id; none without an owner.
fn owner_of(record: &Value, lookups: &Lookups) -> Result<Option<EmailAddress>, Unmappable> {
    let Some(owner @ Value::Object(o)) = record.get("Owner") else {
        return Ok(None);
    };
    match o.get("email").and_then(Value::as_str) {
        Some(email) => Ok(Some(EmailAddress::parse(email)?)),
        None => {
            let owner_id = text_or_number_id(owner, "id")?;
            Ok(Some(lookups.owner_email("Owner", &owner_id)?))
        }
    }
}

/// A call that took place on an account is a contact: not a missed call, not one scheduled,
/// overdue or cancelled, not one in the future, and not one on a deal or contact alone.
fn map_call(
    record: &Value,
    lookups: &Lookups,
) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
    let changed = time(record, "Modified_Time")?;
    let ignored = Ok((Mapped::Ignored, changed));
    if text(record, "$se_module") != Some("Accounts") || text(record, "Call_Type") == Some("Missed")
    {
        return ignored;
    }
    if matches!(
        text(record, "Outgoing_Call_Status"),
        Some("Scheduled" | "Overdue" | "Cancelled")
    ) {
        return ignored;
    }
    let Some(at) = time(record, "Call_Start_Time")? else {
        return ignored;
    };
    if at > Utc::now() {
        return ignored;
    }
    let customer = text_or_number_id(record.get("What_Id").unwrap_or(&Value::Null), "id")
        .map_err(|_| Unmappable::field("What_Id", "names no account id"))?;
    // A user who is not among the imported ones leaves the contact without an owner.
    let owner_email = owner_of(record, lookups).ok().flatten();
    let activity = Activity {
        external_id: text_or_number_id(record, "id")?,
        customer,
        owner_email,
        kind: ActivityKind::Call,
        occurred_at: at,
        note: text(record, "Subject")
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned),
    };
    Ok((Mapped::Activity(activity), changed))
}

/// A meeting (Events module) on an account is a contact of `kind` at its start, stored even
/// when it lies ahead: contacts count from their time on, so a planned meeting counts once it
/// has taken place without being read again. A cancelled one (`$event_cancelled`) is marked
/// deleted; meetings on a deal, contact or lead alone are not contacts.
fn map_event(
    record: &Value,
    lookups: &Lookups,
    kind: ActivityKind,
) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
    let changed = time(record, "Modified_Time")?;
    if record.get("$event_cancelled").and_then(Value::as_bool) == Some(true) {
        let deleted = Deleted {
            external_id: text_or_number_id(record, "id")?,
            at: changed,
            reason: "cancelled in zoho".into(),
        };
        return Ok((Mapped::Deleted(deleted), changed));
    }
    if text(record, "$se_module") != Some("Accounts") {
        return Ok((Mapped::Ignored, changed));
    }
    let at = time(record, "Start_DateTime")?
        .ok_or_else(|| Unmappable::field("Start_DateTime", "is missing on a meeting"))?;
    let customer = text_or_number_id(record.get("What_Id").unwrap_or(&Value::Null), "id")
        .map_err(|_| Unmappable::field("What_Id", "names no account id"))?;
    let activity = Activity {
        external_id: text_or_number_id(record, "id")?,
        customer,
        owner_email: owner_of(record, lookups).ok().flatten(),
        kind,
        occurred_at: at,
        note: text(record, "Event_Title")
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned),
    };
    Ok((Mapped::Activity(activity), changed))
}

/// An ISO-8601 time with offset, as Zoho writes them.
fn time(record: &Value, field: &str) -> Result<Option<DateTime<Utc>>, Unmappable> {
    Ok(offset_time(record, field)?.map(|t| t.with_timezone(&Utc)))
}

/// An ISO-8601 time with the offset it was written with.
fn offset_time(
    record: &Value,
    field: &str,
) -> Result<Option<DateTime<chrono::FixedOffset>>, Unmappable> {
    text(record, field)
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw).map_err(|_| {
                Unmappable::field(
                    field,
                    format!("'{raw}' is not a time like 2024-05-02T17:40:55+08:00"),
                )
            })
        })
        .transpose()
}
