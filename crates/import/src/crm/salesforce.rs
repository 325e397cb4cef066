//! Salesforce: Users are owners, Accounts are customers and won Opportunities are orders, read
//! with SOQL through the REST query resource (`{instance_url}/services/data/vXX.X/query`;
//! `queryAll` for Accounts and Opportunities, which also returns deleted rows: `IsDeleted =
//! true` marks the record deleted, or merged into its `MasterRecordId`).
//! Access comes from the OAuth token endpoint (refresh-token flow, or client credentials when no
//! refresh token is configured). Salesforce gives no token lifetime, so a token is kept until
//! the API answers `INVALID_SESSION_ID`, then renewed once. Changes are read with `WHERE
//! SystemModstamp >= <since> ORDER BY SystemModstamp, Id`, paging follows `nextRecordsUrl`, and
//! an expired query locator (`INVALID_QUERY_LOCATOR`) restarts the query from the run's start
//! time (re-read records are deduplicated by the upsert). Salesforce never answers 429: a spent
//! daily allocation is a 403 `REQUEST_LIMIT_EXCEEDED`, and the run also stops cleanly when
//! `Sforce-Limit-Info` shows the org's allocation used past the configured share, leaving room
//! for the company's other integrations.

use std::cell::{Cell, RefCell};

use chrono::{DateTime, NaiveTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tierwise_domain::{
    Activity, ActivityKind, Currency, Customer, EmailAddress, ExternalId, Invoice, Locale, Money,
    Order, Owner, SourceName,
};

use super::http::{Attempt, Http, HttpSettings, transport_error};
use super::{
    Connector, CrmError, CustomerFields, Deleted, Entity, Lookups, Mapped, RawPage, TwoObjects,
    Unmappable, configured_cost, decimal_text, iso_date, masked, text,
};

/// `[crm.salesforce]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SalesforceSettings {
    /// Import from Salesforce when the import job runs.
    pub enabled: bool,
    /// Where tokens are minted: `https://login.salesforce.com`, `https://test.salesforce.com`
    /// for a sandbox, or the org's My Domain for client credentials.
    pub login_url: String,
    /// REST API version; v56.0 or later keeps query locators for 2 days.
    pub api_version: String,
    /// Consumer key of the connected app.
    pub client_id: String,
    /// Consumer secret; from `TIERWISE__CRM__SALESFORCE__CLIENT_SECRET`.
    #[serde(serialize_with = "masked")]
    pub client_secret: SecretString,
    /// Refresh token; from `TIERWISE__CRM__SALESFORCE__REFRESH_TOKEN`. Empty: the client
    /// credentials flow (the app's run-as user).
    #[serde(serialize_with = "masked")]
    pub refresh_token: SecretString,
    /// Records per batch asked of the query resource (Salesforce allows 200..=2000).
    pub batch_size: u32,
    /// Currency of amounts in a single-currency org.
    pub currency: String,
    /// The org has multiple currencies: read each opportunity's `CurrencyIsoCode`.
    pub multi_currency: bool,
    /// API name of a currency field on Opportunity holding its cost (e.g. `Cost__c`), if any.
    pub cost_field: Option<String>,
    /// Custom Account fields to import (`[crm.salesforce.customer_fields]`).
    pub customer_fields: CustomerFields,
    /// Stop the run (cleanly, resumed next time) once the org's daily API allocation is used
    /// past this percentage.
    pub max_api_usage_percent: f64,
    /// What a past Event counts as: `meeting` (the default) or `visit` where the team logs
    /// customer visits as events. Closed Tasks of subtype Call or Email are calls and emails.
    pub event_kind: String,
    /// An invoice object to read for the credit grade, if the org has one
    /// (`[crm.salesforce.invoices]`).
    pub invoices: InvoiceObject,
    /// Timeouts and retries.
    pub http: HttpSettings,
}

impl Default for SalesforceSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            login_url: "https://login.salesforce.com".into(),
            api_version: "v60.0".into(),
            client_id: String::new(),
            client_secret: SecretString::from(String::new()),
            refresh_token: SecretString::from(String::new()),
            batch_size: 2000,
            currency: "CNY".into(),
            multi_currency: false,
            cost_field: None,
            customer_fields: CustomerFields::default(),
            max_api_usage_percent: 80.0,
            event_kind: "meeting".into(),
            invoices: InvoiceObject::default(),
            http: HttpSettings::default(),
        }
    }
}

/// `[crm.salesforce.invoices]`: Salesforce has no standard invoice object outside its billing
/// products, so an org's own (`Invoice__c`) or a billing package's (`blng__Invoice__c`) is
/// named here with its fields. An empty `object` reads no invoices.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvoiceObject {
    /// The object's API name; empty: invoices are not read.
    pub object: String,
    /// Lookup to the Account.
    pub account_field: String,
    /// Date the invoice was issued.
    pub issued_field: String,
    /// Date it is due; empty or unset: due when issued.
    pub due_field: Option<String>,
    /// Currency field with the amount owed.
    pub amount_field: String,
    /// Date it was paid, if the object keeps one.
    pub paid_date_field: Option<String>,
    /// Picklist with the invoice's status, if any.
    pub status_field: Option<String>,
    /// Statuses meaning paid (dated by `paid_date_field`, else by the last change).
    pub paid_statuses: Vec<String>,
    /// Statuses meaning not owed (draft, cancelled): such invoices are skipped.
    pub skipped_statuses: Vec<String>,
}

impl InvoiceObject {
    fn enabled(&self) -> bool {
        !self.object.trim().is_empty()
    }

    /// Checks that an enabled object names the fields an invoice needs and a way to tell paid.
    fn validate(&self) -> Result<(), CrmError> {
        if !self.enabled() {
            return Ok(());
        }
        super::require_field_settings(
            "crm.salesforce.invoices",
            &self.object,
            "docs/crm/salesforce.md",
            &[
                ("account_field", &self.account_field),
                ("issued_field", &self.issued_field),
                ("amount_field", &self.amount_field),
            ],
        )?;
        let setup = |what: String| CrmError::Setup(format!("crm.salesforce.invoices.{what}"));
        let by_status = self.status_field.is_some() && !self.paid_statuses.is_empty();
        if self.paid_date_field.is_none() && !by_status {
            return Err(setup(
                "paid_date_field: unset, and no status_field with paid_statuses; without one \
                 of them every invoice would count as unpaid"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The fields a query asks for.
    fn fields(&self, multi_currency: bool) -> String {
        let mut fields = vec!["Id", "SystemModstamp", "IsDeleted"];
        fields.extend([
            self.account_field.as_str(),
            self.issued_field.as_str(),
            self.amount_field.as_str(),
        ]);
        fields.extend(self.due_field.as_deref());
        fields.extend(self.paid_date_field.as_deref());
        fields.extend(self.status_field.as_deref());
        if multi_currency {
            fields.push("CurrencyIsoCode");
        }
        // SOQL refuses a field selected twice (one field may serve as two settings).
        let mut distinct: Vec<&str> = Vec::with_capacity(fields.len());
        for field in fields {
            if !distinct.contains(&field) {
                distinct.push(field);
            }
        }
        distinct.join(", ")
    }
}

/// A minted access token and the org's instance.
struct Session {
    token: SecretString,
    instance_url: String,
}

/// The Salesforce connector.
pub struct Salesforce {
    settings: SalesforceSettings,
    http: Http,
    source: SourceName,
    currency: Currency,
    session: RefCell<Option<Session>>,
    /// The last answer showed the allocation used past the configured share.
    over_budget: Cell<bool>,
}

impl std::fmt::Debug for Salesforce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Salesforce")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const SOURCE: &str = "salesforce";
/// Activities are two queries, Tasks then Events; a position in the Events query is marked.
const TASKS_THEN_EVENTS: TwoObjects = TwoObjects { marker: "events:" };
const CREDENTIALS: &str = "[crm.salesforce] client_id and login_url, \
     TIERWISE__CRM__SALESFORCE__CLIENT_SECRET and TIERWISE__CRM__SALESFORCE__REFRESH_TOKEN";

/// What a failed query answer means beyond its HTTP status.
enum QueryFailure {
    /// The query locator expired: start the query again.
    ExpiredLocator,
    /// Anything else.
    Stop(CrmError),
}

impl Salesforce {
    /// A connector for `settings`; fails on missing credentials or bad settings.
    pub fn new(settings: SalesforceSettings) -> Result<Self, CrmError> {
        if settings.client_id.trim().is_empty()
            || settings.client_secret.expose_secret().trim().is_empty()
        {
            return Err(CrmError::Setup(format!(
                "salesforce: credentials missing; set {CREDENTIALS}"
            )));
        }
        ActivityKind::parse(&settings.event_kind)
            .map_err(|e| CrmError::Setup(format!("crm.salesforce.event_kind: {}", e.reason)))?;
        settings.invoices.validate()?;
        if !(200..=2000).contains(&settings.batch_size) {
            return Err(CrmError::Setup(format!(
                "crm.salesforce.batch_size: {} is outside 200..=2000",
                settings.batch_size
            )));
        }
        if !(settings.max_api_usage_percent > 0.0 && settings.max_api_usage_percent <= 100.0) {
            return Err(CrmError::Setup(format!(
                "crm.salesforce.max_api_usage_percent: {} is outside (0, 100]",
                settings.max_api_usage_percent
            )));
        }
        // Field names go into SOQL: only API names.
        for field in settings
            .cost_field
            .iter()
            .map(String::as_str)
            .chain(settings.customer_fields.names())
        {
            if !is_api_name(field) {
                return Err(CrmError::Setup(format!(
                    "crm.salesforce: '{field}' is not a field API name like Cost__c"
                )));
            }
        }
        let currency = Currency::parse(&settings.currency)
            .map_err(|e| CrmError::Setup(format!("crm.salesforce.currency: {}", e.reason)))?;
        let http = Http::new(SOURCE, settings.http.clone())?;
        let source = SourceName::parse(SOURCE).map_err(|e| CrmError::Setup(e.to_string()))?;
        Ok(Self {
            settings,
            http,
            source,
            currency,
            session: RefCell::new(None),
            over_budget: Cell::new(false),
        })
    }

    /// The cached session, or a new one from the token endpoint.
    async fn session(&self) -> Result<(SecretString, String), CrmError> {
        if let Some(s) = self.session.borrow().as_ref() {
            return Ok((s.token.clone(), s.instance_url.clone()));
        }
        let url = format!(
            "{}/services/oauth2/token",
            self.settings.login_url.trim_end_matches('/')
        );
        let refresh = self.settings.refresh_token.expose_secret();
        let mut form = vec![
            ("client_id", self.settings.client_id.as_str()),
            ("client_secret", self.settings.client_secret.expose_secret()),
        ];
        if refresh.trim().is_empty() {
            form.push(("grant_type", "client_credentials"));
        } else {
            form.push(("grant_type", "refresh_token"));
            form.push(("refresh_token", refresh));
        }
        let (status, body): (u16, Value) = self
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
                    (500..=599, _) => Err(Attempt::Transient {
                        what: format!("token endpoint: HTTP {status}"),
                        retry_after: None,
                    }),
                    (_, Ok(v)) => Ok((status, v)),
                    (_, Err(_)) => Err(Attempt::Transient {
                        what: format!("token endpoint: HTTP {status}, not JSON"),
                        retry_after: None,
                    }),
                }
            })
            .await?;
        let refused = |message: String| CrmError::Auth {
            source_name: SOURCE.into(),
            status,
            message,
            hint: CREDENTIALS.into(),
        };
        if let Some(error) = body.get("error").and_then(Value::as_str) {
            let description = body
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(refused(format!("{error}: {description}")));
        }
        let token = body
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("the token endpoint returned no access_token".into()))?;
        let instance_url = body
            .get("instance_url")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("the token endpoint returned no instance_url".into()))?
            .trim_end_matches('/')
            .to_owned();
        let token = SecretString::from(token.to_owned());
        *self.session.borrow_mut() = Some(Session {
            token: token.clone(),
            instance_url: instance_url.clone(),
        });
        Ok((token, instance_url))
    }

    /// GETs `path_and_query` under the instance; an expired session is renewed once.
    async fn get(&self, what: &str, path_and_query: &str) -> Result<Value, QueryFailure> {
        for renewed in [false, true] {
            let (token, instance) = self.session().await.map_err(QueryFailure::Stop)?;
            let url = format!("{instance}{path_and_query}");
            let answer = self
                .http
                .retrying(what, || async {
                    let response = self
                        .http
                        .client
                        .get(&url)
                        .bearer_auth(token.expose_secret())
                        .header(
                            "Sforce-Query-Options",
                            format!("batchSize={}", self.settings.batch_size),
                        )
                        .send()
                        .await
                        .map_err(transport_error)?;
                    let status = response.status().as_u16();
                    let usage = response
                        .headers()
                        .get("sforce-limit-info")
                        .and_then(|h| h.to_str().ok())
                        .and_then(api_usage_percent);
                    let body = response.text().await.map_err(transport_error)?;
                    if let Some(used) = usage {
                        self.over_budget
                            .set(used >= self.settings.max_api_usage_percent);
                    }
                    judge(what, status, &body)
                })
                .await;
            match answer {
                Ok(Ok(body)) => return Ok(body),
                Ok(Err(failure)) => return Err(failure),
                Err(CrmError::Auth { .. }) if !renewed => {
                    // The session ended (timeout or revoked): mint a new one, try once more.
                    *self.session.borrow_mut() = None;
                }
                Err(other) => return Err(QueryFailure::Stop(other)),
            }
        }
        Err(QueryFailure::Stop(CrmError::Setup(
            "salesforce: authentication loop ended without an answer".into(),
        )))
    }

    /// The SOQL reading `entity`'s records changed at or after `since`, oldest change first.
    fn soql(&self, entity: Entity, since: Option<DateTime<Utc>>) -> String {
        let (fields, object, filter) = match entity {
            Entity::Owners => (
                "Id, Name, Email, LanguageLocaleKey, SystemModstamp".to_owned(),
                "User",
                None,
            ),
            Entity::Customers => {
                let mut fields =
                    "Id, Name, OwnerId, Owner.Email, CreatedDate, SystemModstamp, IsDeleted, \
                     MasterRecordId"
                        .to_owned();
                for field in self.settings.customer_fields.names() {
                    fields.push_str(", ");
                    fields.push_str(field);
                }
                (fields, "Account", None)
            }
            Entity::Orders => {
                let mut fields =
                    "Id, AccountId, Amount, CloseDate, IsWon, SystemModstamp, IsDeleted".to_owned();
                if self.settings.multi_currency {
                    fields.push_str(", CurrencyIsoCode");
                }
                if let Some(cost) = &self.settings.cost_field {
                    fields.push_str(", ");
                    fields.push_str(cost);
                }
                (fields, "Opportunity", Some("IsWon = true"))
            }
            Entity::Invoices if self.settings.invoices.enabled() => (
                self.settings.invoices.fields(self.settings.multi_currency),
                self.settings.invoices.object.as_str(),
                None,
            ),
            // Deletions come with the records (queryAll): never asked for on their own;
            // activities have queries of their own.
            Entity::DeletedCustomers
            | Entity::DeletedOrders
            | Entity::DeletedInvoices
            | Entity::DeletedActivities
            | Entity::Activities
            | Entity::Invoices => ("Id".to_owned(), "Account", Some("IsDeleted = true")),
        };
        let mut conditions: Vec<String> = filter.into_iter().map(str::to_owned).collect();
        if let Some(since) = since {
            // Datetime literals are unquoted ISO-8601 in UTC.
            conditions.push(format!(
                "SystemModstamp >= {}",
                since.format("%Y-%m-%dT%H:%M:%SZ")
            ));
        }
        let mut soql = format!("SELECT {fields} FROM {object}");
        if !conditions.is_empty() {
            soql.push_str(" WHERE ");
            soql.push_str(&conditions.join(" AND "));
        }
        soql.push_str(" ORDER BY SystemModstamp, Id");
        soql
    }

    /// The SOQL reading activities: closed Tasks changed since `since`, or Events that have
    /// started by `now` and either changed since `since` or started since then (an event
    /// planned long ago becomes a contact when it takes place, without changing).
    fn activity_soql(events: bool, since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
        let stamp = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut soql = if events {
            format!(
                "SELECT Id, AccountId, OwnerId, Subject, StartDateTime, SystemModstamp, IsDeleted \
                 FROM Event WHERE StartDateTime <= {}",
                stamp(now)
            )
        } else {
            "SELECT Id, AccountId, OwnerId, Subject, TaskSubtype, ActivityDate, \
             CompletedDateTime, SystemModstamp, IsDeleted FROM Task WHERE IsClosed = true"
                .to_owned()
        };
        if let Some(since) = since {
            let since = stamp(since);
            if events {
                soql.push_str(&format!(
                    " AND (SystemModstamp >= {since} OR StartDateTime >= {since})"
                ));
            } else {
                soql.push_str(&format!(" AND SystemModstamp >= {since}"));
            }
        }
        soql.push_str(" ORDER BY SystemModstamp, Id");
        soql
    }

    fn query_path(&self, resource: &str, soql: &str) -> String {
        let query: String = url::form_urlencoded::byte_serialize(soql.as_bytes()).collect();
        format!(
            "/services/data/{}/{resource}?q={query}",
            self.settings.api_version
        )
    }

    fn first_page_path(&self, entity: Entity, since: Option<DateTime<Utc>>) -> String {
        let query: String =
            url::form_urlencoded::byte_serialize(self.soql(entity, since).as_bytes()).collect();
        // queryAll also returns deleted and merged-away rows (IsDeleted = true).
        let resource = match entity {
            Entity::Owners => "query",
            _ => "queryAll",
        };
        format!(
            "/services/data/{}/{resource}?q={query}",
            self.settings.api_version
        )
    }
}

/// A custom or standard field API name: letters, digits and underscores, starting with a letter.
fn is_api_name(field: &str) -> bool {
    field
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `api-usage=18/100000` → 0.018 %.
fn api_usage_percent(header: &str) -> Option<f64> {
    let usage = header
        .split(',')
        .find_map(|part| part.trim().strip_prefix("api-usage="))?;
    let (used, limit) = usage.split_once('/')?;
    let used: f64 = used.trim().parse().ok()?;
    let limit: f64 = limit.trim().parse().ok()?;
    (limit > 0.0).then(|| used * 100.0 / limit)
}

/// Sorts an answer into a body, an expired locator, a wait-and-retry, or a stop. Salesforce
/// errors are a JSON array of `{message, errorCode}`.
fn judge(what: &str, status: u16, body: &str) -> Result<Result<Value, QueryFailure>, Attempt> {
    let parsed = serde_json::from_str::<Value>(body);
    let first_error = parsed
        .as_ref()
        .ok()
        .and_then(|v| v.get(0))
        .map(|e| {
            (
                e.get("errorCode")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                e.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| (String::new(), body.chars().take(200).collect()));
    let (code, message) = first_error;
    match status {
        200..=299 => match parsed {
            Ok(v) => Ok(Ok(v)),
            Err(e) => Err(Attempt::Transient {
                what: format!("the body is not JSON ({e})"),
                retry_after: None,
            }),
        },
        401 => Err(Attempt::Fatal(CrmError::Auth {
            source_name: SOURCE.into(),
            status,
            message: format!("{code}: {message}"),
            hint: CREDENTIALS.into(),
        })),
        403 if code == "REQUEST_LIMIT_EXCEEDED" => {
            Err(Attempt::Fatal(CrmError::QuotaExhausted(SOURCE.into())))
        }
        400 | 404 if code == "INVALID_QUERY_LOCATOR" => Ok(Err(QueryFailure::ExpiredLocator)),
        500..=599 => Err(Attempt::Transient {
            what: format!("HTTP {status}: {code} {message}"),
            retry_after: None,
        }),
        _ => Err(Attempt::Fatal(CrmError::Http {
            source_name: SOURCE.into(),
            what: what.to_owned(),
            status,
            message: format!("{code}: {message}"),
        })),
    }
}

impl Connector for Salesforce {
    fn source(&self) -> &SourceName {
        &self.source
    }

    fn entities(&self) -> Vec<Entity> {
        let mut entities = vec![Entity::Owners, Entity::Customers, Entity::Orders];
        if self.settings.invoices.enabled() {
            entities.push(Entity::Invoices);
        }
        entities.push(Entity::Activities);
        entities
    }

    async fn page(
        &self,
        entity: Entity,
        since: Option<DateTime<Utc>>,
        cursor: Option<&str>,
    ) -> Result<RawPage, CrmError> {
        if entity == Entity::DeletedInvoices
            || (entity == Entity::Invoices && !self.settings.invoices.enabled())
        {
            return Err(super::not_read(entity));
        }
        if self.over_budget.get() {
            return Err(CrmError::QuotaExhausted(SOURCE.into()));
        }
        let what = match entity {
            Entity::Owners => "users",
            Entity::Customers | Entity::DeletedCustomers => "accounts",
            Entity::Orders | Entity::DeletedOrders => "opportunities",
            Entity::Activities | Entity::DeletedActivities => "activities",
            Entity::Invoices | Entity::DeletedInvoices => "invoices",
        };
        let activities = entity == Entity::Activities;
        let (events, cursor) = match activities {
            true => TASKS_THEN_EVENTS.split(cursor),
            false => (false, cursor),
        };
        let first = if entity == Entity::Activities {
            self.query_path("queryAll", &Self::activity_soql(events, since, Utc::now()))
        } else {
            self.first_page_path(entity, since)
        };
        // A cursor is the `nextRecordsUrl` Salesforce gave; only a path on the instance.
        let path = match cursor {
            Some(next) if next.starts_with("/services/data/") => next.to_owned(),
            Some(other) => {
                return Err(CrmError::Setup(format!(
                    "salesforce: stored position '{other}' is not a query locator; run with --full"
                )));
            }
            None => first.clone(),
        };
        let body = match self.get(what, &path).await {
            Ok(body) => body,
            Err(QueryFailure::ExpiredLocator) if cursor.is_some() => {
                tracing::warn!(
                    entity = entity.as_str(),
                    "salesforce: the query locator expired; reading again from the run's start"
                );
                match self.get(what, &first).await {
                    Ok(body) => body,
                    Err(QueryFailure::ExpiredLocator) => {
                        return Err(CrmError::Http {
                            source_name: SOURCE.into(),
                            what: what.into(),
                            status: 400,
                            message: "INVALID_QUERY_LOCATOR on a new query".into(),
                        });
                    }
                    Err(QueryFailure::Stop(e)) => return Err(e),
                }
            }
            Err(QueryFailure::ExpiredLocator) => {
                return Err(CrmError::Http {
                    source_name: SOURCE.into(),
                    what: what.into(),
                    status: 400,
                    message: "INVALID_QUERY_LOCATOR on a new query".into(),
                });
            }
            Err(QueryFailure::Stop(e)) => return Err(e),
        };
        let records = body
            .get("records")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let done = body.get("done").and_then(Value::as_bool).unwrap_or(true);
        let next = match (done, body.get("nextRecordsUrl").and_then(Value::as_str)) {
            (true, _) => None,
            (false, Some(url)) => Some(url.to_owned()),
            (false, None) => {
                return Err(CrmError::Http {
                    source_name: SOURCE.into(),
                    what: what.into(),
                    status: 200,
                    message: "done is false but there is no nextRecordsUrl".into(),
                });
            }
        };
        let next = match activities {
            true => TASKS_THEN_EVENTS.next(events, next, true),
            false => next,
        };
        Ok(RawPage { records, next })
    }

    fn map(
        &self,
        entity: Entity,
        record: &Value,
        lookups: &Lookups,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        let changed = time(record, "SystemModstamp")?;
        let deletable = matches!(
            entity,
            Entity::Customers | Entity::Orders | Entity::Invoices
        );
        if deletable && record.get("IsDeleted").and_then(Value::as_bool) == Some(true) {
            let reason = match record.get("MasterRecordId").and_then(Value::as_str) {
                Some(master) => format!("merged into {master} in salesforce"),
                None => "deleted in salesforce".to_owned(),
            };
            let deleted = Deleted {
                external_id: id_of(record, "Id")?,
                at: changed,
                reason,
            };
            return Ok((Mapped::Deleted(deleted), changed));
        }
        match entity {
            Entity::Owners => {
                let id = id_of(record, "Id")?;
                let email = EmailAddress::parse(text(record, "Email").unwrap_or_default())?;
                let name = text(record, "Name").unwrap_or_default();
                // LanguageLocaleKey is like en_US or zh_CN.
                let locale = text(record, "LanguageLocaleKey")
                    .and_then(|l| Locale::parse(l).ok())
                    .unwrap_or(lookups.default_locale);
                Ok((
                    Mapped::Owner(Owner::new(email, name, locale, Some(id))?),
                    changed,
                ))
            }
            Entity::Customers => {
                let id = id_of(record, "Id")?;
                let owner = match record.pointer("/Owner/Email").and_then(Value::as_str) {
                    Some(email) => Some(EmailAddress::parse(email)?),
                    None => match record.get("OwnerId") {
                        Some(Value::String(_)) => {
                            Some(lookups.owner_email("OwnerId", &id_of(record, "OwnerId")?)?)
                        }
                        _ => None,
                    },
                };
                let created_on = time(record, "CreatedDate")?.map(|t| t.date_naive());
                let customer = Customer::new(id, text(record, "Name").unwrap_or_default())?
                    .with_owner(owner)
                    .with_created_on(created_on);
                let customer = self
                    .settings
                    .customer_fields
                    .apply(customer, |f| record.get(f))?;
                Ok((Mapped::Customer(customer), changed))
            }
            Entity::Activities => self.map_activity(record, lookups, changed),
            Entity::Invoices => self.map_invoice(record, changed),
            // Never read as such (see `soql`).
            Entity::DeletedCustomers
            | Entity::DeletedOrders
            | Entity::DeletedInvoices
            | Entity::DeletedActivities => Ok((Mapped::Ignored, changed)),
            Entity::Orders => {
                if record.get("IsWon").and_then(Value::as_bool) != Some(true) {
                    return Ok((Mapped::Ignored, changed));
                }
                let id = id_of(record, "Id")?;
                let customer = match record.get("AccountId") {
                    Some(Value::String(_)) => id_of(record, "AccountId")?,
                    _ => {
                        return Err(Unmappable::field(
                            "AccountId",
                            "the won opportunity has no account; link it to one in Salesforce",
                        ));
                    }
                };
                let currency = if self.settings.multi_currency {
                    Currency::parse(text(record, "CurrencyIsoCode").unwrap_or_default())?
                } else {
                    self.currency
                };
                let amount = record
                    .get("Amount")
                    .and_then(decimal_text)
                    .ok_or_else(|| Unmappable::field("Amount", "is missing"))?;
                let amount = Money::parse_decimal("Amount", &amount, currency)?;
                let day = text(record, "CloseDate")
                    .ok_or_else(|| Unmappable::field("CloseDate", "is missing on a won deal"))?;
                let day = iso_date("CloseDate", day)?;
                let cost = configured_cost(record, self.settings.cost_field.as_deref(), currency)?;
                Ok((
                    Mapped::Order(Order::new(id, customer, day, amount, cost, None)?),
                    changed,
                ))
            }
        }
    }
}

impl Salesforce {
    /// A record of the configured invoice object: owed by its account from the issue date,
    /// due on the due date (or when issued), paid on the paid date, or — when only its status
    /// says paid — on the day of its last change (marking it paid changes it). Skipped
    /// statuses (drafts, cancelled) are not debts.
    fn map_invoice(
        &self,
        record: &Value,
        changed: Option<DateTime<Utc>>,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        let object = &self.settings.invoices;
        let status = object.status_field.as_deref().and_then(|f| text(record, f));
        if status.is_some_and(|s| object.skipped_statuses.iter().any(|k| k == s)) {
            return Ok((Mapped::Ignored, changed));
        }
        let id = id_of(record, "Id")?;
        let account = match record.get(&object.account_field) {
            Some(Value::String(a)) if !a.is_empty() => ExternalId::parse("account", a)
                .map_err(|e| Unmappable::field(&object.account_field, e.reason))?,
            _ => {
                return Err(Unmappable::field(
                    &object.account_field,
                    "the invoice has no account; link it to one in Salesforce",
                ));
            }
        };
        let day = |field: &str| -> Result<Option<chrono::NaiveDate>, Unmappable> {
            text(record, field).map(|d| iso_date(field, d)).transpose()
        };
        let issued = day(&object.issued_field)?
            .ok_or_else(|| Unmappable::field(&object.issued_field, "is missing on an invoice"))?;
        let due = match &object.due_field {
            Some(field) => day(field)?.unwrap_or(issued),
            None => issued,
        };
        let currency = if self.settings.multi_currency {
            Currency::parse(text(record, "CurrencyIsoCode").unwrap_or_default())?
        } else {
            self.currency
        };
        let amount = record
            .get(&object.amount_field)
            .and_then(decimal_text)
            .ok_or_else(|| Unmappable::field(&object.amount_field, "is missing"))?;
        let amount = Money::parse_decimal("amount", &amount, currency)
            .map_err(|e| Unmappable::field(&object.amount_field, e.reason))?;
        let paid_on = match &object.paid_date_field {
            Some(field) => day(field)?,
            None => None,
        };
        let paid_by_status = status.is_some_and(|s| object.paid_statuses.iter().any(|p| p == s));
        let paid = match paid_on {
            Some(day) => Some(day.max(issued)),
            None if paid_by_status => changed.map(|t| t.date_naive().max(issued)),
            None => None,
        };
        let invoice = Invoice::new(id, account, None, issued, due, amount, paid)?;
        Ok((Mapped::Invoice(invoice), changed))
    }

    /// A closed Task of subtype Call or Email, or a past Event, on an account is a contact;
    /// other tasks and those without an account are not; a deleted one is marked deleted.
    fn map_activity(
        &self,
        record: &Value,
        lookups: &Lookups,
        changed: Option<DateTime<Utc>>,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        let is_event = record.pointer("/attributes/type").and_then(Value::as_str) == Some("Event");
        // queryAll returns deleted rows too (IsDeleted): a contact held is marked deleted.
        if record.get("IsDeleted").and_then(Value::as_bool) == Some(true) {
            let deleted = Deleted {
                external_id: id_of(record, "Id")?,
                at: changed,
                reason: "deleted in salesforce".into(),
            };
            return Ok((Mapped::Deleted(deleted), changed));
        }
        let Some(Value::String(_)) = record.get("AccountId") else {
            return Ok((Mapped::Ignored, changed));
        };
        let (kind, occurred_at) = if is_event {
            let start = time(record, "StartDateTime")?
                .ok_or_else(|| Unmappable::field("StartDateTime", "is missing on an event"))?;
            (ActivityKind::parse(&self.settings.event_kind)?, start)
        } else {
            let kind = match text(record, "TaskSubtype") {
                Some("Call") => ActivityKind::Call,
                Some("Email" | "ListEmail" | "List Email") => ActivityKind::Email,
                _ => return Ok((Mapped::Ignored, changed)),
            };
            // When it was completed; else its due day.
            let at = match time(record, "CompletedDateTime")? {
                Some(t) => t,
                None => {
                    let day = text(record, "ActivityDate").ok_or_else(|| {
                        Unmappable::field("ActivityDate", "is missing on a closed task")
                    })?;
                    iso_date("ActivityDate", day)?
                        .and_time(NaiveTime::MIN)
                        .and_utc()
                }
            };
            (kind, at)
        };
        let owner_email = match record.get("OwnerId") {
            Some(Value::String(_)) => lookups
                .owner_email("OwnerId", &id_of(record, "OwnerId")?)
                .ok(),
            _ => None,
        };
        let activity = Activity {
            external_id: id_of(record, "Id")?,
            customer: id_of(record, "AccountId")?,
            owner_email,
            kind,
            occurred_at,
            note: text(record, "Subject")
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned),
        };
        Ok((Mapped::Activity(activity), changed))
    }
}

/// A Salesforce id (15 or 18 characters), kept as sent.
fn id_of(record: &Value, field: &'static str) -> Result<ExternalId, Unmappable> {
    match record.get(field) {
        Some(Value::String(s)) => Ok(ExternalId::parse(field, s)?),
        _ => Err(Unmappable::field(field, "is missing")),
    }
}

/// A Salesforce datetime: `2024-05-02T09:41:12.000+0000` (also accepts RFC 3339).
fn time(record: &Value, field: &str) -> Result<Option<DateTime<Utc>>, Unmappable> {
    let Some(raw) = text(record, field) else {
        return Ok(None);
    };
    DateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f%z")
        .or_else(|_| DateTime::parse_from_rfc3339(raw))
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| {
            Unmappable::field(
                field,
                format!("'{raw}' is not a time like 2024-05-02T09:41:12.000+0000"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_usage_is_read_from_the_limit_header() {
        assert_eq!(api_usage_percent("api-usage=18/100000"), Some(0.018));
        assert_eq!(
            api_usage_percent("api-usage=80000/100000, per-app-api-usage=1/10(appName=x)"),
            Some(80.0)
        );
        assert_eq!(api_usage_percent("api-usage=5/0"), None);
        assert_eq!(api_usage_percent("nonsense"), None);
    }

    #[test]
    fn times_parse_in_salesforce_form() {
        let record = serde_json::json!({"SystemModstamp": "2024-05-02T09:41:12.000+0800"});
        let t = time(&record, "SystemModstamp").unwrap_or_default();
        assert_eq!(
            t.map(|t| t.to_rfc3339()).as_deref(),
            Some("2024-05-02T01:41:12+00:00")
        );
        let bad = serde_json::json!({"SystemModstamp": "yesterday"});
        assert!(time(&bad, "SystemModstamp").is_err());
    }
}
