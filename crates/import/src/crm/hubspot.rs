//! HubSpot: owners (`/crm/v3/owners`) are owners, companies are customers and deals in a won
//! stage are orders, with a private app's access token. A full run reads the list endpoints
//! (`after` cursor, no result cap; deals with their company associations). An incremental run
//! searches on `hs_lastmodifieddate` (oldest first), which HubSpot caps at 10,000 results per
//! query: before the cap the search starts again from the last change time seen, and when a
//! whole window shares one change time it walks that time by `hs_object_id` keyset, then goes
//! on after it. Search results carry no associations, so each page of deals reads its companies
//! through the v4 associations batch endpoint. A 429 waits for `Retry-After` (or the 10-second
//! window); a `DAILY` policy stops the run cleanly. Completed calls on a company are contacts.
//! Archived companies and deals (deleted, or
//! merged into another record) are listed with `archived=true` after the live records, and
//! marked deleted in the store.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tierwise_domain::{
    Activity, ActivityKind, Currency, Customer, EmailAddress, ExternalId, Invoice, Money, Order,
    Owner, SourceName,
};

use super::http::{Attempt, Http, HttpSettings, retry_after, transport_error};
use super::{
    Connector, CrmError, CustomerFields, Deleted, Entity, Lookups, Mapped, RawPage, TwoObjects,
    Unmappable, masked,
};

/// `[crm.hubspot]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubspotSettings {
    /// Import from HubSpot when the import job runs.
    pub enabled: bool,
    /// API address.
    pub base_url: String,
    /// Private app access token; from `TIERWISE__CRM__HUBSPOT__ACCESS_TOKEN`.
    #[serde(serialize_with = "masked")]
    pub access_token: SecretString,
    /// Records per list page (HubSpot allows up to 100).
    pub page_size: u32,
    /// Records per search page (HubSpot allows up to 200).
    pub search_page_size: u32,
    /// Results one search may return (HubSpot: 10,000); the search restarts before it.
    pub search_cap: u32,
    /// Deal stage ids that mean won (per pipeline; the default pipeline's is `closedwon`).
    pub won_stages: Vec<String>,
    /// Currency of deals without `deal_currency_code`.
    pub currency: String,
    /// Internal name of a number property on deals holding the deal's cost, if any.
    pub cost_property: Option<String>,
    /// Import invoices (needs the `crm.objects.invoices.read` scope).
    pub invoices: bool,
    /// Import meetings as contacts, after the calls (same scope as calls).
    pub meetings: bool,
    /// Values of `hs_meeting_outcome` that mean the meeting took place.
    pub meeting_outcomes: Vec<String>,
    /// What a meeting that took place counts as: `meeting`, or `visit` where the team logs its
    /// customer visits as meetings.
    pub meeting_kind: String,
    /// Custom company properties to import (`[crm.hubspot.customer_fields]`).
    pub customer_fields: CustomerFields,
    /// Timeouts and retries.
    pub http: HttpSettings,
}

impl Default for HubspotSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://api.hubapi.com".into(),
            access_token: SecretString::from(String::new()),
            page_size: 100,
            search_page_size: 200,
            search_cap: 10_000,
            won_stages: vec!["closedwon".into()],
            currency: "CNY".into(),
            cost_property: None,
            invoices: true,
            meetings: true,
            meeting_outcomes: vec!["COMPLETED".into()],
            meeting_kind: "meeting".into(),
            customer_fields: CustomerFields::default(),
            http: HttpSettings::default(),
        }
    }
}

/// The HubSpot connector.
pub struct Hubspot {
    settings: HubspotSettings,
    http: Http,
    source: SourceName,
    currency: Currency,
    /// What a meeting that took place counts as (`meeting_kind`).
    meeting_kind: ActivityKind,
}

impl std::fmt::Debug for Hubspot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hubspot")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const SOURCE: &str = "hubspot";
const TOKEN_HINT: &str = "the private app's access token (TIERWISE__CRM__HUBSPOT__ACCESS_TOKEN) \
     and its scopes (docs/crm/hubspot.md)";
/// The meetings object's path.
const MEETINGS: &str = "meetings";
/// Activities are calls, then meetings; a position among the meetings is marked.
const CALLS_THEN_MEETINGS: TwoObjects = TwoObjects {
    marker: "meetings:",
};
/// HubSpot's burst window: a 429 without `Retry-After` waits for it to roll.
const BURST_WINDOW: Duration = Duration::from_secs(10);

/// Where an incremental search stands (stored as the run's cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
enum SearchAt {
    /// Changed at or after `from` (epoch ms), results from `after` on.
    Window { from: i64, after: u64 },
    /// Changed exactly at `at`, ids after `last_id`.
    Tie { at: i64, last_id: u64 },
}

impl SearchAt {
    fn encode(&self) -> String {
        match self {
            Self::Window { from, after } => format!("window:{from}:{after}"),
            Self::Tie { at, last_id } => format!("tie:{at}:{last_id}"),
        }
    }

    fn decode(cursor: &str) -> Option<Self> {
        let mut parts = cursor.split(':');
        let kind = parts.next()?;
        let a: i64 = parts.next()?.parse().ok()?;
        let b: u64 = parts.next()?.parse().ok()?;
        match kind {
            "window" => Some(Self::Window { from: a, after: b }),
            "tie" => Some(Self::Tie { at: a, last_id: b }),
            _ => None,
        }
    }
}

impl Hubspot {
    /// A connector for `settings`; fails on a missing token or bad settings.
    pub fn new(settings: HubspotSettings) -> Result<Self, CrmError> {
        if settings.access_token.expose_secret().trim().is_empty() {
            return Err(CrmError::Setup(
                "hubspot: no access token; set TIERWISE__CRM__HUBSPOT__ACCESS_TOKEN".into(),
            ));
        }
        let bad = |key: &str, value: u32, range: &str| {
            CrmError::Setup(format!("crm.hubspot.{key}: {value} is outside {range}"))
        };
        if !(1..=100).contains(&settings.page_size) {
            return Err(bad("page_size", settings.page_size, "1..=100"));
        }
        if !(1..=200).contains(&settings.search_page_size) {
            return Err(bad(
                "search_page_size",
                settings.search_page_size,
                "1..=200",
            ));
        }
        if settings.search_cap < 2 * settings.search_page_size || settings.search_cap > 10_000 {
            return Err(bad(
                "search_cap",
                settings.search_cap,
                "2 × search_page_size..=10000",
            ));
        }
        if settings.won_stages.is_empty() {
            return Err(CrmError::Setup(
                "crm.hubspot.won_stages: empty; list the stage ids that mean won".into(),
            ));
        }
        let currency = Currency::parse(&settings.currency)
            .map_err(|e| CrmError::Setup(format!("crm.hubspot.currency: {}", e.reason)))?;
        let meeting_kind = ActivityKind::parse(&settings.meeting_kind)
            .map_err(|e| CrmError::Setup(format!("crm.hubspot.meeting_kind: {}", e.reason)))?;
        let http = Http::new(SOURCE, settings.http.clone())?;
        let source = SourceName::parse(SOURCE).map_err(|e| CrmError::Setup(e.to_string()))?;
        Ok(Self {
            settings,
            http,
            source,
            currency,
            meeting_kind,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url.trim_end_matches('/'))
    }

    /// Sends a GET (`body` None) or POST of JSON, retrying what is transient.
    async fn request(
        &self,
        what: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, CrmError> {
        let url = self.url(path);
        self.http
            .retrying(what, || async {
                let request = match body {
                    Some(body) => self.http.client.post(&url).json(body),
                    None => self.http.client.get(&url),
                };
                let response = request
                    .bearer_auth(self.settings.access_token.expose_secret())
                    .query(query)
                    .send()
                    .await
                    .map_err(transport_error)?;
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let text = response.text().await.map_err(transport_error)?;
                judge(what, status, &headers, &text)
            })
            .await
    }

    fn properties(&self, object: Object) -> Vec<String> {
        let entity = object.entity;
        let mut properties: Vec<String> = match entity {
            Entity::Customers => vec!["name", "hubspot_owner_id", "createdate"],
            Entity::Activities if object.path == MEETINGS => vec![
                "hs_timestamp",
                "hs_meeting_start_time",
                "hs_meeting_outcome",
                "hs_meeting_title",
                "hubspot_owner_id",
            ],
            Entity::Activities => vec![
                "hs_timestamp",
                "hs_call_status",
                "hs_call_title",
                "hubspot_owner_id",
            ],
            Entity::Invoices => vec![
                "hs_invoice_status",
                "hs_invoice_date",
                "hs_due_date",
                "hs_amount_billed",
                "hs_currency",
            ],
            _ => vec!["amount", "closedate", "dealstage", "deal_currency_code"],
        }
        .into_iter()
        .map(str::to_owned)
        .collect();
        properties.push("hs_lastmodifieddate".into());
        if entity == Entity::Orders
            && let Some(cost) = &self.settings.cost_property
        {
            properties.push(cost.clone());
        }
        if entity == Entity::Customers {
            properties.extend(self.settings.customer_fields.names().map(str::to_owned));
        }
        properties
    }

    /// A list page (full runs): no cap, deals with their companies.
    async fn list_page(&self, object: Object, after: Option<&str>) -> Result<RawPage, CrmError> {
        let Object { entity, what, path } = object;
        let mut query = vec![
            ("limit", self.settings.page_size.to_string()),
            ("properties", self.properties(object).join(",")),
            ("archived", "false".into()),
        ];
        if matches!(
            entity,
            Entity::Orders | Entity::Invoices | Entity::Activities
        ) {
            query.push(("associations", "companies".into()));
        }
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        let body = self
            .request(what, &format!("/crm/v3/objects/{path}"), &query, None)
            .await?;
        let next = next_after(&body).map(|a| format!("list:{a}"));
        Ok(RawPage {
            records: results(&body),
            next,
        })
    }

    /// A page of archived (deleted or merged-away) records. HubSpot has no change filter on
    /// them, so every run lists them all; marking an already marked record changes nothing.
    async fn archived_page(
        &self,
        object: Object,
        after: Option<&str>,
    ) -> Result<RawPage, CrmError> {
        let Object { what, path, .. } = object;
        let mut query = vec![
            ("limit", self.settings.page_size.to_string()),
            ("properties", "hs_lastmodifieddate".to_owned()),
            ("archived", "true".into()),
        ];
        if let Some(after) = after {
            query.push(("after", after.to_owned()));
        }
        let body = self
            .request(what, &format!("/crm/v3/objects/{path}"), &query, None)
            .await?;
        Ok(RawPage {
            records: results(&body),
            next: next_after(&body),
        })
    }

    /// A search page (incremental runs) at `at`; the records and where the search goes next.
    async fn search_page(&self, object: Object, at: &SearchAt) -> Result<RawPage, CrmError> {
        let Object { what, path, .. } = object;
        let limit = u64::from(self.settings.search_page_size);
        let (filters, sort, after) = match at {
            SearchAt::Window { from, after } => (
                json!([{"propertyName": "hs_lastmodifieddate", "operator": "GTE",
                    "value": from.to_string()}]),
                "hs_lastmodifieddate",
                Some(after.to_string()),
            ),
            SearchAt::Tie { at, last_id } => (
                json!([
                    {"propertyName": "hs_lastmodifieddate", "operator": "EQ", "value": at.to_string()},
                    {"propertyName": "hs_object_id", "operator": "GT", "value": last_id.to_string()},
                ]),
                "hs_object_id",
                None,
            ),
        };
        let mut body = json!({
            "filterGroups": [{"filters": filters}],
            "sorts": [{"propertyName": sort, "direction": "ASCENDING"}],
            "properties": self.properties(object),
            "limit": limit,
        });
        if let Some(after) = after {
            body["after"] = json!(after);
        }
        let answer = self
            .request(
                what,
                &format!("/crm/v3/objects/{path}/search"),
                &[],
                Some(&body),
            )
            .await?;
        let records = results(&answer);
        let more = next_after(&answer).is_some();
        let next = match at {
            _ if !more => match at {
                // The tie is walked: go on after its time.
                SearchAt::Tie { at, .. } => Some(SearchAt::Window {
                    from: at + 1,
                    after: 0,
                }),
                SearchAt::Window { .. } => None,
            },
            SearchAt::Window { from, after } => {
                let after = after + records.len() as u64;
                if after + limit <= u64::from(self.settings.search_cap) {
                    Some(SearchAt::Window { from: *from, after })
                } else {
                    // Near the cap: start again from the last change time seen, or walk it by
                    // id when the whole window shares it.
                    let last = records
                        .last()
                        .map(modified_millis)
                        .transpose()
                        .map_err(|e| bad_page(what, &e.reason))?
                        .flatten()
                        .ok_or_else(|| bad_page(what, "a search page without change times"))?;
                    if last > *from {
                        Some(SearchAt::Window {
                            from: last,
                            after: 0,
                        })
                    } else {
                        Some(SearchAt::Tie {
                            at: *from,
                            last_id: 0,
                        })
                    }
                }
            }
            SearchAt::Tie { at, .. } => {
                let last_id = records
                    .last()
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_str)
                    .and_then(|id| id.parse::<u64>().ok())
                    .ok_or_else(|| bad_page(what, "a search result without a numeric id"))?;
                Some(SearchAt::Tie { at: *at, last_id })
            }
        };
        Ok(RawPage {
            records,
            next: next.map(|n| n.encode()),
        })
    }

    /// Adds each deal's companies (`associations.companies.results[].id`, as the list endpoint
    /// gives them) from the v4 associations batch endpoint.
    async fn with_companies(
        &self,
        object: Object,
        mut deals: Vec<Value>,
    ) -> Result<Vec<Value>, CrmError> {
        let Object { what, path, .. } = object;
        let inputs: Vec<Value> = deals
            .iter()
            .filter_map(|d| d.get("id").cloned())
            .map(|id| json!({"id": id}))
            .collect();
        if inputs.is_empty() {
            return Ok(deals);
        }
        let answer = self
            .request(
                &format!("{what} companies"),
                &format!("/crm/v4/associations/{path}/companies/batch/read"),
                &[],
                Some(&json!({"inputs": inputs})),
            )
            .await?;
        let mut companies: std::collections::HashMap<String, Vec<Value>> = Default::default();
        for result in answer
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(from) = result.pointer("/from/id").map(id_text) else {
                continue;
            };
            let to = result
                .get("to")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|t| t.get("toObjectId").map(|id| json!({"id": id_text(id)})))
                .collect();
            companies.insert(from, to);
        }
        for deal in &mut deals {
            let id = deal.get("id").map(id_text).unwrap_or_default();
            let to = companies.remove(&id).unwrap_or_default();
            deal["associations"] = json!({"companies": {"results": to}});
        }
        Ok(deals)
    }
}

/// The HubSpot object a page reads: what it is called in messages and its path.
#[derive(Debug, Clone, Copy)]
struct Object {
    entity: Entity,
    what: &'static str,
    path: &'static str,
}

impl Object {
    /// The object read for `entity`; activities are calls, then meetings.
    fn of(entity: Entity, meetings: bool) -> Self {
        let (what, path) = match entity {
            Entity::Customers => ("companies", "companies"),
            Entity::DeletedCustomers => ("archived companies", "companies"),
            Entity::DeletedOrders => ("archived deals", "deals"),
            Entity::DeletedInvoices => ("archived invoices", "invoices"),
            Entity::DeletedActivities if meetings => ("archived meetings", MEETINGS),
            Entity::DeletedActivities => ("archived calls", "calls"),
            Entity::Activities if meetings => ("meetings", MEETINGS),
            Entity::Activities => ("calls", "calls"),
            Entity::Invoices => ("invoices", "invoices"),
            Entity::Orders | Entity::Owners => ("deals", "deals"),
        };
        Self { entity, what, path }
    }
}

fn bad_page(what: &str, message: &str) -> CrmError {
    CrmError::Http {
        source_name: SOURCE.into(),
        what: what.to_owned(),
        status: 200,
        message: message.to_owned(),
    }
}

/// An id sent as a string or a number, as text.
fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn results(body: &Value) -> Vec<Value> {
    body.get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// `paging.next.after`, when there is a next page.
fn next_after(body: &Value) -> Option<String> {
    body.pointer("/paging/next/after")
        .map(id_text)
        .filter(|a| !a.is_empty())
}

/// Sorts an answer into a body, a wait-and-retry, or a stop.
fn judge(
    what: &str,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> Result<Value, Attempt> {
    let parsed = serde_json::from_str::<Value>(body);
    let field = |name: &str| {
        parsed
            .as_ref()
            .ok()
            .and_then(|v| v.get(name).and_then(Value::as_str))
            .unwrap_or("")
            .to_owned()
    };
    let message = || {
        let m = field("message");
        if m.is_empty() {
            body.chars().take(200).collect()
        } else {
            m
        }
    };
    match status {
        200..=299 => parsed.map_err(|e| Attempt::Transient {
            what: format!("the body is not JSON ({e})"),
            retry_after: None,
        }),
        401 => Err(Attempt::Fatal(CrmError::Auth {
            source_name: SOURCE.into(),
            status,
            message: format!("{}: {}", field("category"), message()),
            hint: TOKEN_HINT.into(),
        })),
        429 if field("policyName").contains("DAILY") => {
            Err(Attempt::Fatal(CrmError::QuotaExhausted(SOURCE.into())))
        }
        429 => Err(Attempt::Transient {
            what: format!("throttled ({})", field("policyName")),
            retry_after: retry_after(headers).or(Some(BURST_WINDOW)),
        }),
        500..=599 => Err(Attempt::Transient {
            what: format!("HTTP {status}: {}", message()),
            retry_after: retry_after(headers),
        }),
        _ => Err(Attempt::Fatal(CrmError::Http {
            source_name: SOURCE.into(),
            what: what.to_owned(),
            status,
            message: format!("{}: {}", field("category"), message()),
        })),
    }
}

impl Connector for Hubspot {
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
        if entity == Entity::Owners {
            // Tens of owners: all of them, every run.
            let mut query = vec![("limit", "500".to_owned())];
            if let Some(after) = cursor {
                query.push(("after", after.to_owned()));
            }
            let body = self
                .request("owners", "/crm/v3/owners", &query, None)
                .await?;
            return Ok(RawPage {
                records: results(&body),
                next: next_after(&body),
            });
        }
        // Activities (and their archived ones) are calls, then meetings; a position among the
        // meetings is marked.
        let engagements = matches!(entity, Entity::Activities | Entity::DeletedActivities);
        let (meetings, cursor) = match engagements {
            true => CALLS_THEN_MEETINGS.split(cursor),
            false => (false, cursor),
        };
        let object = Object::of(entity, meetings);
        let archived = matches!(
            entity,
            Entity::DeletedCustomers
                | Entity::DeletedOrders
                | Entity::DeletedInvoices
                | Entity::DeletedActivities
        );
        let page = match (since, cursor) {
            _ if archived => self.archived_page(object, cursor).await?,
            (None, None) => self.list_page(object, None).await?,
            (_, Some(cursor)) if cursor.starts_with("list:") => {
                self.list_page(object, cursor.strip_prefix("list:")).await?
            }
            (Some(since), None) => {
                let at = SearchAt::Window {
                    from: since.timestamp_millis(),
                    after: 0,
                };
                self.search_page(object, &at).await?
            }
            (_, Some(cursor)) => {
                let at = SearchAt::decode(cursor).ok_or_else(|| {
                    CrmError::Setup(format!(
                        "hubspot: stored position '{cursor}' is not one this connector wrote; \
                         run with --full"
                    ))
                })?;
                self.search_page(object, &at).await?
            }
        };
        // Search results carry no associations; list results do.
        let searched =
            !archived && since.is_some() && !cursor.is_some_and(|c| c.starts_with("list:"));
        let records = if matches!(
            entity,
            Entity::Orders | Entity::Invoices | Entity::Activities
        ) && searched
        {
            self.with_companies(object, page.records).await?
        } else {
            page.records
        };
        let next = match engagements {
            true => CALLS_THEN_MEETINGS.next(meetings, page.next, self.settings.meetings),
            false => page.next,
        };
        Ok(RawPage { records, next })
    }

    fn map(
        &self,
        entity: Entity,
        record: &Value,
        lookups: &Lookups,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        if entity == Entity::Owners {
            let id = ExternalId::parse("id", &record.get("id").map(id_text).unwrap_or_default())?;
            let email =
                EmailAddress::parse(record.get("email").and_then(Value::as_str).unwrap_or(""))?;
            let name = ["firstName", "lastName"]
                .iter()
                .filter_map(|f| record.get(*f).and_then(Value::as_str))
                .filter(|s| !s.trim().is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let changed = record
                .get("updatedAt")
                .and_then(Value::as_str)
                .map(|t| iso_time("updatedAt", t))
                .transpose()?;
            return Ok((
                Mapped::Owner(Owner::new(email, &name, lookups.default_locale, Some(id))?),
                changed,
            ));
        }
        let id = ExternalId::parse("id", &record.get("id").map(id_text).unwrap_or_default())?;
        if matches!(
            entity,
            Entity::DeletedCustomers
                | Entity::DeletedOrders
                | Entity::DeletedInvoices
                | Entity::DeletedActivities
        ) {
            let at = record
                .get("archivedAt")
                .and_then(Value::as_str)
                .map(|t| iso_time("archivedAt", t))
                .transpose()?;
            let deleted = Deleted {
                external_id: id,
                at,
                reason: if entity == Entity::DeletedActivities {
                    "archived in hubspot (deleted)".into()
                } else {
                    "archived in hubspot (deleted or merged)".into()
                },
            };
            return Ok((Mapped::Deleted(deleted), at));
        }
        let changed = modified_millis(record)?.and_then(DateTime::from_timestamp_millis);
        let property = |name: &str| {
            record
                .pointer(&format!("/properties/{name}"))
                .and_then(Value::as_str)
                .filter(|v| !v.trim().is_empty())
        };
        match entity {
            Entity::Invoices => {
                // Drafts are not sent, voided invoices are not owed.
                let Some(status) = property("hs_invoice_status")
                    .filter(|status| !matches!(*status, "draft" | "voided"))
                else {
                    return Ok((Mapped::Ignored, changed));
                };
                let customer = first_company(record, "invoice")?;
                let currency = currency_of(property("hs_currency"), self.currency)?;
                let amount = property("hs_amount_billed")
                    .ok_or_else(|| Unmappable::field("hs_amount_billed", "is missing"))?;
                let amount = Money::parse_decimal("hs_amount_billed", amount, currency)?;
                // Date properties come as `2024-05-02`, date-times as ISO or epoch ms.
                let day = |name: &str| -> Result<Option<NaiveDate>, Unmappable> {
                    property(name)
                        .map(|raw| match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
                            Ok(day) => Ok(day),
                            Err(_) => iso_time(name, raw).map(|t| t.date_naive()),
                        })
                        .transpose()
                };
                let issued = day("hs_invoice_date")?.ok_or_else(|| {
                    Unmappable::field("hs_invoice_date", "is missing on an invoice")
                })?;
                let due = day("hs_due_date")?.unwrap_or(issued);
                // No payment date on invoices (payments are separate records): paid counts
                // from the last change, which marking it paid is.
                let paid = (status == "paid")
                    .then(|| changed.map(|t| t.date_naive().max(issued)))
                    .flatten();
                let invoice = Invoice::new(id, customer, None, issued, due, amount, paid)?;
                Ok((Mapped::Invoice(invoice), changed))
            }
            Entity::Activities => {
                // A completed call or a meeting that took place, on a company, is a contact;
                // other calls are attempts, other meetings plans or no-shows. A meeting is told
                // from a call by its outcome (calls are not asked for one).
                let (kind, title, what) = match property("hs_meeting_outcome") {
                    Some(outcome) => {
                        if !self.settings.meeting_outcomes.iter().any(|o| o == outcome) {
                            return Ok((Mapped::Ignored, changed));
                        }
                        (self.meeting_kind, "hs_meeting_title", "meeting")
                    }
                    None if property("hs_call_status") == Some("COMPLETED") => {
                        (ActivityKind::Call, "hs_call_title", "call")
                    }
                    None => return Ok((Mapped::Ignored, changed)),
                };
                let Some(company) = record
                    .pointer("/associations/companies/results/0/id")
                    .map(id_text)
                else {
                    return Ok((Mapped::Ignored, changed));
                };
                // When it happened; a meeting's start time stands in where hs_timestamp is
                // unset (HubSpot defaults one to the other).
                let occurred_at = match property("hs_timestamp") {
                    Some(t) => Some(iso_time("hs_timestamp", t)?),
                    None => property("hs_meeting_start_time")
                        .map(|t| iso_time("hs_meeting_start_time", t))
                        .transpose()?,
                }
                .ok_or_else(|| {
                    Unmappable::field("hs_timestamp", format!("is missing on a {what}"))
                })?;
                let owner_email = match property("hubspot_owner_id") {
                    Some(owner_id) => ExternalId::parse("hubspot_owner_id", owner_id)
                        .ok()
                        .and_then(|id| lookups.owner_email("hubspot_owner_id", &id).ok()),
                    None => None,
                };
                let activity = Activity {
                    external_id: id,
                    customer: ExternalId::parse("companies", &company)?,
                    owner_email,
                    kind,
                    occurred_at,
                    note: property(title).map(str::to_owned),
                };
                Ok((Mapped::Activity(activity), changed))
            }
            Entity::Customers => {
                let owner = match property("hubspot_owner_id") {
                    Some(owner_id) => Some(lookups.owner_email(
                        "hubspot_owner_id",
                        &ExternalId::parse("hubspot_owner_id", owner_id)?,
                    )?),
                    None => None,
                };
                let created_on = property("createdate")
                    .map(|t| iso_time("createdate", t))
                    .transpose()?
                    .map(|t| t.date_naive());
                let customer = Customer::new(id, property("name").unwrap_or_default())?
                    .with_owner(owner)
                    .with_created_on(created_on);
                let customer = self.settings.customer_fields.apply(customer, |f| {
                    record.get("properties").and_then(|p| p.get(f))
                })?;
                Ok((Mapped::Customer(customer), changed))
            }
            _ => {
                let stage = property("dealstage").unwrap_or_default();
                if !self.settings.won_stages.iter().any(|s| s == stage) {
                    return Ok((Mapped::Ignored, changed));
                }
                let customer = first_company(record, "won deal")?;
                let currency = currency_of(property("deal_currency_code"), self.currency)?;
                let amount =
                    property("amount").ok_or_else(|| Unmappable::field("amount", "is missing"))?;
                let amount = Money::parse_decimal("amount", amount, currency)?;
                let day: NaiveDate = property("closedate")
                    .map(|t| iso_time("closedate", t))
                    .transpose()?
                    .map(|t| t.date_naive())
                    .ok_or_else(|| Unmappable::field("closedate", "is missing on a won deal"))?;
                let cost = match self.settings.cost_property.as_deref().and_then(property) {
                    Some(raw) => Some(Money::parse_decimal("cost", raw, currency)?),
                    None => None,
                };
                Ok((
                    Mapped::Order(Order::new(id, customer, day, amount, cost, None)?),
                    changed,
                ))
            }
        }
    }
}

/// `hs_lastmodifieddate` in epoch ms (HubSpot sends every property as a string: an ISO time, or
/// epoch ms for some date properties).
fn modified_millis(record: &Value) -> Result<Option<i64>, Unmappable> {
    match record
        .pointer("/properties/hs_lastmodifieddate")
        .and_then(Value::as_str)
    {
        None => Ok(None),
        Some(raw) => Ok(Some(
            iso_time("hs_lastmodifieddate", raw)?.timestamp_millis(),
        )),
    }
}

/// An ISO-8601 time (`2024-05-02T09:41:12.345Z`), or epoch milliseconds as digits.
/// The first company a deal or invoice is associated with; an error naming `what` without one.
fn first_company(record: &Value, what: &str) -> Result<ExternalId, Unmappable> {
    let company = record
        .pointer("/associations/companies/results/0/id")
        .map(id_text)
        .ok_or_else(|| {
            Unmappable::field(
                "associations.companies",
                format!("the {what} has no company; associate one in HubSpot"),
            )
        })?;
    Ok(ExternalId::parse("associations.companies", &company)?)
}

/// A currency code property, or the configured currency without one.
fn currency_of(code: Option<&str>, default: Currency) -> Result<Currency, Unmappable> {
    match code {
        Some(code) => Ok(Currency::parse(code)?),
        None => Ok(default),
    }
}

fn iso_time(field: &str, raw: &str) -> Result<DateTime<Utc>, Unmappable> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    raw.parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(|| {
            Unmappable::field(
                field,
                format!("'{raw}' is not a time like 2024-05-02T09:41:12.345Z"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::SearchAt;

    #[test]
    fn search_positions_round_trip() {
        for at in [
            SearchAt::Window {
                from: 1_714_521_600_000,
                after: 9_800,
            },
            SearchAt::Tie {
                at: 1_714_521_600_000,
                last_id: 18_342_211,
            },
        ] {
            assert_eq!(SearchAt::decode(&at.encode()), Some(at));
        }
        assert_eq!(SearchAt::decode("list:200"), None);
        assert_eq!(SearchAt::decode("window:x:1"), None);
    }
}
