//! Fxiaoke (纷享销客): company users are owners, `AccountObj` records are customers and
//! `SalesOrderObj` records are orders, through the Open API (every call a `POST` of JSON to
//! `/cgi/...`, always HTTP 200 with the outcome in `errorCode`). A corp access token is minted
//! from the app's id, secret and permanent code, kept for its lifetime less 10 minutes, and
//! minted once more when a call says it expired. Pages are read by `_id` keyset (`_id GT <last>`,
//! ordered by `_id`), never by offset, because offsets past 10,000 fail; changes come from a
//! `last_modified_time` filter. Throttling (14001, 30004) waits at least 20 s, a spent daily
//! quota (30002) stops the run cleanly. Times are epoch milliseconds; dates such as an order's
//! day are taken in the tenant's time zone. A voided record (`life_status` invalid, 作废) or one
//! flagged `is_deleted` is marked deleted in the store.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tierwise_domain::{
    Activity, ActivityKind, Currency, Customer, EmailAddress, ExternalId, Invoice, Money, Order,
    Owner, SourceName,
};

use super::http::{Attempt, Http, HttpSettings, transport_error};
use super::{
    Connector, CrmError, CustomerFields, Deleted, Entity, Lookups, Mapped, RawPage, Unmappable,
    configured_cost, decimal_text, masked, text, text_or_number_id,
};

/// `[crm.fxiaoke]` settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FxiaokeSettings {
    /// Import from Fxiaoke when the import job runs.
    pub enabled: bool,
    /// The tenant's Open API host, e.g. `https://open.fxiaoke.com` (or its cloud's).
    pub base_url: String,
    /// The self-built app's id (`FSAID_...`).
    pub app_id: String,
    /// The app's secret; from `TIERWISE__CRM__FXIAOKE__APP_SECRET`.
    #[serde(serialize_with = "masked")]
    pub app_secret: SecretString,
    /// The app's permanent code; from `TIERWISE__CRM__FXIAOKE__PERMANENT_CODE`.
    #[serde(serialize_with = "masked")]
    pub permanent_code: SecretString,
    /// The operator whose permissions the queries use (`FSUID_...`, an administrator).
    pub operator_user_id: String,
    /// Records per page (at most 1,000 for preset objects).
    pub page_size: u32,
    /// Currency of amounts.
    pub currency: String,
    /// The tenant's offset from UTC in hours: epoch times become days in this zone.
    pub utc_offset_hours: i32,
    /// API name of a money field on `SalesOrderObj` holding the order's cost, if any.
    pub cost_field: Option<String>,
    /// Import payment plans (`PaymentPlanObj`, 回款计划) as invoices, for the credit grade.
    pub payment_plans: bool,
    /// Date a completed plan by the payment (`PaymentObj`, 回款) that completed it: the
    /// payments of its order fill its plans in due-date order. Off, or for a plan without an
    /// order or payments: by the plan's last change.
    pub payment_dates: bool,
    /// Custom fields of `AccountObj` to import (`[crm.fxiaoke.customer_fields]`).
    pub customer_fields: CustomerFields,
    /// The object holding contacts with customers, if any (`[crm.fxiaoke.activities]`).
    pub activities: ActivitySettings,
    /// Timeouts and retries.
    pub http: HttpSettings,
}

impl Default for FxiaokeSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: "https://open.fxiaoke.com".into(),
            app_id: String::new(),
            app_secret: SecretString::from(String::new()),
            permanent_code: SecretString::from(String::new()),
            operator_user_id: String::new(),
            page_size: 500,
            currency: "CNY".into(),
            utc_offset_hours: 8,
            cost_field: None,
            payment_plans: true,
            payment_dates: true,
            customer_fields: CustomerFields::default(),
            activities: ActivitySettings::default(),
            // 100 calls per 20 s per interface: throttled calls wait out the window.
            http: HttpSettings {
                backoff_ms: 2_000,
                max_backoff_secs: 60,
                ..HttpSettings::default()
            },
        }
    }
}

/// `[crm.fxiaoke.activities]`: which object records contacts with customers (follow-ups such
/// as 销售记录) and which of its fields say who, when and what kind. Tenants set these objects up
/// differently, so every name is configured; an empty `object` imports no activities.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActivitySettings {
    /// The object's API name, e.g. `ActiveRecordObj`; empty: activities are not imported.
    pub object: String,
    /// The field holding the customer's `AccountObj` `_id` (a lookup to 客户). Records whose
    /// field is empty (a contact with a lead, say) are not customer contacts.
    pub customer_field: String,
    /// The field holding when the contact happened, in epoch milliseconds.
    pub time_field: String,
    /// A single-select field telling the kind of contact; empty: every record is `default_kind`.
    pub kind_field: String,
    /// Option values of `kind_field` → `call`, `visit`, `email` or `meeting`; records with
    /// other values are not contacts.
    pub kinds: BTreeMap<String, String>,
    /// The kind of every record when there is no `kind_field`.
    pub default_kind: Option<String>,
    /// A text field kept as the contact's note, if any.
    pub note_field: Option<String>,
}

impl Default for ActivitySettings {
    fn default() -> Self {
        Self {
            object: String::new(),
            customer_field: String::new(),
            time_field: "create_time".into(),
            kind_field: String::new(),
            kinds: BTreeMap::new(),
            default_kind: None,
            note_field: None,
        }
    }
}

impl ActivitySettings {
    fn enabled(&self) -> bool {
        !self.object.trim().is_empty()
    }

    /// Checks that an enabled object names its customer and time fields and a way to tell
    /// each record's kind.
    fn validate(&self) -> Result<(), CrmError> {
        if !self.enabled() {
            return Ok(());
        }
        super::require_field_settings(
            "crm.fxiaoke.activities",
            &self.object,
            "docs/crm/fxiaoke.md",
            &[
                ("customer_field", &self.customer_field),
                ("time_field", &self.time_field),
            ],
        )?;
        let setup = |what: String| CrmError::Setup(format!("crm.fxiaoke.activities.{what}"));
        for (option, kind) in &self.kinds {
            ActivityKind::parse(kind)
                .map_err(|e| setup(format!("kinds.{option}: {}", e.reason)))?;
        }
        if let Some(kind) = &self.default_kind {
            ActivityKind::parse(kind).map_err(|e| setup(format!("default_kind: {}", e.reason)))?;
        }
        match (
            self.kind_field.trim().is_empty(),
            self.kinds.is_empty(),
            &self.default_kind,
        ) {
            (true, _, None) => Err(setup(
                "kind_field: empty and no default_kind; name the field telling calls from visits \
                 and map its options in kinds, or set default_kind"
                    .into(),
            )),
            (false, true, _) => Err(setup(format!(
                "kinds: empty; map the options of {} to call, visit, email or meeting",
                self.kind_field
            ))),
            _ => Ok(()),
        }
    }

    /// The fields a query asks for.
    fn fields(&self) -> Vec<&str> {
        let mut fields = vec![
            "_id",
            "owner",
            "life_status",
            "last_modified_time",
            self.customer_field.as_str(),
            self.time_field.as_str(),
        ];
        if !self.kind_field.trim().is_empty() {
            fields.push(&self.kind_field);
        }
        fields.extend(self.note_field.as_deref());
        fields.sort_unstable();
        fields.dedup();
        fields
    }
}

/// A minted corp access token.
struct CorpToken {
    token: SecretString,
    corp_id: String,
    renew_at: Instant,
}

/// The Fxiaoke connector.
pub struct Fxiaoke {
    settings: FxiaokeSettings,
    http: Http,
    source: SourceName,
    currency: Currency,
    zone: FixedOffset,
    token: RefCell<Option<CorpToken>>,
    /// When the payment completing each completed plan of the page being read came in (plan
    /// id → epoch ms), found by `page` and taken by `map`.
    paid_at: RefCell<HashMap<String, i64>>,
}

impl std::fmt::Debug for Fxiaoke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fxiaoke")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const SOURCE: &str = "fxiaoke";
const CREDENTIALS: &str = "[crm.fxiaoke] app_id, TIERWISE__CRM__FXIAOKE__APP_SECRET and \
     TIERWISE__CRM__FXIAOKE__PERMANENT_CODE";
/// How long a throttled interface is left alone (its window is 20 s).
const THROTTLE_WAIT: Duration = Duration::from_secs(20);

/// What an `errorCode` asks of the caller.
enum Outcome {
    Ok(Value),
    /// The token expired or is invalid: mint another and retry once.
    Renew,
}

impl Fxiaoke {
    /// A connector for `settings`; fails on missing credentials or bad settings.
    pub fn new(settings: FxiaokeSettings) -> Result<Self, CrmError> {
        if settings.app_id.trim().is_empty()
            || settings.app_secret.expose_secret().trim().is_empty()
            || settings.permanent_code.expose_secret().trim().is_empty()
        {
            return Err(CrmError::Setup(format!(
                "fxiaoke: credentials missing; set {CREDENTIALS}"
            )));
        }
        if settings.operator_user_id.trim().is_empty() {
            return Err(CrmError::Setup(
                "crm.fxiaoke.operator_user_id: empty; set the FSUID_ id of an administrator \
                 (docs/crm/fxiaoke.md shows how to look it up)"
                    .into(),
            ));
        }
        if !(1..=1000).contains(&settings.page_size) {
            return Err(CrmError::Setup(format!(
                "crm.fxiaoke.page_size: {} is outside 1..=1000",
                settings.page_size
            )));
        }
        let zone = FixedOffset::east_opt(settings.utc_offset_hours.saturating_mul(3600))
            .filter(|_| (-12..=14).contains(&settings.utc_offset_hours))
            .ok_or_else(|| {
                CrmError::Setup(format!(
                    "crm.fxiaoke.utc_offset_hours: {} is outside -12..=14",
                    settings.utc_offset_hours
                ))
            })?;
        settings.activities.validate()?;
        let currency = Currency::parse(&settings.currency)
            .map_err(|e| CrmError::Setup(format!("crm.fxiaoke.currency: {}", e.reason)))?;
        let http = Http::new(SOURCE, settings.http.clone())?;
        let source = SourceName::parse(SOURCE).map_err(|e| CrmError::Setup(e.to_string()))?;
        Ok(Self {
            settings,
            http,
            source,
            currency,
            zone,
            token: RefCell::new(None),
            paid_at: RefCell::new(HashMap::new()),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url.trim_end_matches('/'))
    }

    /// One POST of `body` to `path`: the parsed envelope, or why to try again.
    async fn send(&self, path: &str, body: &Value) -> Result<Value, Attempt> {
        let response = self
            .http
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(transport_error)?;
        if status >= 500 {
            return Err(Attempt::Transient {
                what: format!("HTTP {status}"),
                retry_after: None,
            });
        }
        serde_json::from_str::<Value>(&text).map_err(|e| Attempt::Transient {
            what: format!("the body is not JSON ({e})"),
            retry_after: None,
        })
    }

    /// The cached corp token and corp id, or new ones.
    async fn access(&self) -> Result<(SecretString, String), CrmError> {
        if let Some(t) = self.token.borrow().as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok((t.token.clone(), t.corp_id.clone()));
        }
        let body = json!({
            "appId": self.settings.app_id,
            "appSecret": self.settings.app_secret.expose_secret(),
            "permanentCode": self.settings.permanent_code.expose_secret(),
        });
        let answer = self
            .http
            .retrying("token", || self.send("/cgi/corpAccessToken/get/V2", &body))
            .await?;
        let code = answer
            .get("errorCode")
            .and_then(Value::as_i64)
            .unwrap_or(-2);
        if code != 0 {
            return Err(CrmError::Auth {
                source_name: SOURCE.into(),
                status: 200,
                message: format!("errorCode {code}"),
                hint: CREDENTIALS.into(),
            });
        }
        let refused = |what: &str| CrmError::Auth {
            source_name: SOURCE.into(),
            status: 200,
            message: format!("the token endpoint returned no {what}"),
            hint: CREDENTIALS.into(),
        };
        let token = answer
            .get("corpAccessToken")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("corpAccessToken"))?;
        let corp_id = answer
            .get("corpId")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("corpId"))?
            .to_owned();
        let lifetime = answer
            .get("expiresIn")
            .and_then(Value::as_u64)
            .unwrap_or(7200);
        // Renewed in the last 10 minutes: the token endpoint allows 10 calls a minute.
        let renew_at = Instant::now() + Duration::from_secs(lifetime.saturating_sub(600).max(1));
        let token = SecretString::from(token.to_owned());
        *self.token.borrow_mut() = Some(CorpToken {
            token: token.clone(),
            corp_id: corp_id.clone(),
            renew_at,
        });
        Ok((token, corp_id))
    }

    /// A data call: the token fields are added to `body`; an expired token is renewed once.
    async fn call(&self, what: &str, path: &str, mut body: Value) -> Result<Value, CrmError> {
        for renewed in [false, true] {
            let (token, corp_id) = self.access().await?;
            body["corpAccessToken"] = json!(token.expose_secret());
            body["corpId"] = json!(corp_id);
            body["currentOpenUserId"] = json!(self.settings.operator_user_id);
            let answer = self
                .http
                .retrying(what, || async {
                    let envelope = self.send(path, &body).await?;
                    judge(what, envelope)
                })
                .await?;
            match answer {
                Outcome::Ok(v) => return Ok(v),
                Outcome::Renew if !renewed => {
                    *self.token.borrow_mut() = None;
                }
                Outcome::Renew => {
                    return Err(CrmError::Auth {
                        source_name: SOURCE.into(),
                        status: 200,
                        message: "a freshly minted corp access token was refused".into(),
                        hint: CREDENTIALS.into(),
                    });
                }
            }
        }
        Err(CrmError::Setup(
            "fxiaoke: authentication loop ended without an answer".into(),
        ))
    }

    fn date(&self, millis: i64) -> Option<chrono::NaiveDate> {
        DateTime::from_timestamp_millis(millis).map(|t| t.with_timezone(&self.zone).date_naive())
    }
}

/// Sorts an envelope by its `errorCode` (never by its message, which the vendor changes).
fn judge(what: &str, envelope: Value) -> Result<Outcome, Attempt> {
    let code = envelope.get("errorCode").and_then(Value::as_i64);
    let message = || {
        envelope
            .get("errorMessage")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    match code {
        Some(0) => Ok(Outcome::Ok(envelope)),
        Some(11014 | 11015 | 20016) => Ok(Outcome::Renew),
        Some(14001 | 30004) => Err(Attempt::Transient {
            what: format!("throttled (errorCode {})", code.unwrap_or_default()),
            retry_after: Some(THROTTLE_WAIT),
        }),
        Some(-1 | -2 | 50009) => Err(Attempt::Transient {
            what: format!("errorCode {}: {}", code.unwrap_or_default(), message()),
            retry_after: None,
        }),
        Some(30002) => Err(Attempt::Fatal(CrmError::QuotaExhausted(SOURCE.into()))),
        Some(other) => Err(Attempt::Fatal(CrmError::Http {
            source_name: SOURCE.into(),
            what: what.to_owned(),
            status: 200,
            message: format!("errorCode {other}: {}", message()),
        })),
        None => Err(Attempt::Transient {
            what: "the answer has no errorCode".into(),
            retry_after: None,
        }),
    }
}

impl Connector for Fxiaoke {
    fn source(&self) -> &SourceName {
        &self.source
    }

    fn entities(&self) -> Vec<Entity> {
        let mut entities = vec![Entity::Owners, Entity::Customers, Entity::Orders];
        if self.settings.payment_plans {
            entities.push(Entity::Invoices);
        }
        if self.settings.activities.enabled() {
            entities.push(Entity::Activities);
        }
        entities
    }

    async fn page(
        &self,
        entity: Entity,
        since: Option<DateTime<Utc>>,
        cursor: Option<&str>,
    ) -> Result<RawPage, CrmError> {
        if entity == Entity::Owners {
            // The whole company (department 999999) in one call, every run.
            let body = json!({"departmentId": 999_999, "fetchChild": true});
            let answer = self.call("users", "/cgi/user/list", body).await?;
            let users = answer
                .get("userList")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            return Ok(RawPage {
                records: users,
                next: None,
            });
        }
        let (what, object, mut fields) = match entity {
            Entity::Customers => (
                "accounts",
                "AccountObj",
                vec![
                    "_id",
                    "name",
                    "owner",
                    "create_time",
                    "life_status",
                    "last_modified_time",
                ],
            ),
            // Payment plans (回款计划): what is owed by when, and how much of it came in.
            Entity::Invoices => (
                "payment plans",
                "PaymentPlanObj",
                vec![
                    "_id",
                    "account_id",
                    "order_id",
                    "plan_payment_amount",
                    "plan_payment_time",
                    "actual_payment_amount",
                    "create_time",
                    "life_status",
                    "last_modified_time",
                ],
            ),
            Entity::Activities => (
                "activities",
                self.settings.activities.object.as_str(),
                self.settings.activities.fields(),
            ),
            _ => (
                "orders",
                "SalesOrderObj",
                vec![
                    "_id",
                    "account_id",
                    "order_time",
                    "order_amount",
                    "life_status",
                    "last_modified_time",
                ],
            ),
        };
        if entity == Entity::Orders
            && let Some(cost) = &self.settings.cost_field
        {
            fields.push(cost);
        }
        if entity == Entity::Customers {
            fields.extend(self.settings.customer_fields.names());
        }
        let mut filters = Vec::new();
        if let Some(since) = since {
            // GT is the operator every client uses; GT (since - 1 ms) is "at or after since".
            filters.push(json!({"field_name": "last_modified_time", "operator": "GT",
                "field_values": [since.timestamp_millis() - 1]}));
        }
        if let Some(last) = cursor {
            filters.push(json!({"field_name": "_id", "operator": "GT", "field_values": [last]}));
        }
        let records = self.query(what, object, &fields, filters).await?;
        if entity == Entity::Invoices && self.settings.payment_dates {
            self.date_completed_plans(&records).await?;
        }
        // A full page may have more behind it; the next page starts after its last _id.
        let next = if records.len() >= self.settings.page_size as usize {
            match records
                .last()
                .and_then(|r| r.get("_id"))
                .and_then(Value::as_str)
            {
                Some(last) => Some(last.to_owned()),
                None => {
                    return Err(CrmError::Http {
                        source_name: SOURCE.into(),
                        what: what.into(),
                        status: 200,
                        message: "a full page whose last record has no _id".into(),
                    });
                }
            }
        } else {
            None
        };
        Ok(RawPage { records, next })
    }

    fn map(
        &self,
        entity: Entity,
        record: &Value,
        lookups: &Lookups,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        let changed =
            millis(record, "last_modified_time")?.and_then(DateTime::from_timestamp_millis);
        let voided = text(record, "life_status") == Some("invalid");
        let flagged = record.get("is_deleted").and_then(Value::as_bool) == Some(true);
        if entity != Entity::Owners && (voided || flagged) {
            // A voided order is not a purchase, and a voided customer is no longer one.
            let deleted = Deleted {
                external_id: text_or_number_id(record, "_id")?,
                at: changed,
                reason: if voided {
                    "voided in fxiaoke (作废)".into()
                } else {
                    "deleted in fxiaoke".into()
                },
            };
            return Ok((Mapped::Deleted(deleted), changed));
        }
        match entity {
            Entity::Owners => {
                let id = text_or_number_id(record, "openUserId")?;
                let email = EmailAddress::parse(text(record, "email").unwrap_or_default())?;
                let name = text(record, "name").unwrap_or_default();
                Ok((
                    Mapped::Owner(Owner::new(email, name, lookups.default_locale, Some(id))?),
                    changed,
                ))
            }
            Entity::Customers => {
                let id = text_or_number_id(record, "_id")?;
                // `owner` is a list of user ids (the first is the owner).
                let owner = match record.get("owner") {
                    Some(Value::Array(ids)) if !ids.is_empty() => {
                        let owner_id = match &ids[0] {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            _ => return Err(Unmappable::field("owner", "is not a user id")),
                        };
                        let owner_id = ExternalId::parse("owner", &owner_id)?;
                        Some(lookups.owner_email("owner", &owner_id)?)
                    }
                    _ => None,
                };
                let created_on = millis(record, "create_time")?.and_then(|ms| self.date(ms));
                let customer = Customer::new(id, text(record, "name").unwrap_or_default())?
                    .with_owner(owner)
                    .with_created_on(created_on);
                let customer = self
                    .settings
                    .customer_fields
                    .apply(customer, |f| record.get(f))?;
                Ok((Mapped::Customer(customer), changed))
            }
            Entity::DeletedCustomers
            | Entity::DeletedOrders
            | Entity::DeletedInvoices
            | Entity::DeletedActivities => Ok((Mapped::Ignored, changed)),
            Entity::Activities => self.map_activity(record, changed, lookups),
            Entity::Invoices => self.map_payment_plan(record, changed),
            Entity::Orders => {
                let id = text_or_number_id(record, "_id")?;
                let customer = account_of(record, "order")?;
                let amount = record
                    .get("order_amount")
                    .and_then(decimal_text)
                    .ok_or_else(|| Unmappable::field("order_amount", "is missing"))?;
                let amount = Money::parse_decimal("order_amount", &amount, self.currency)?;
                let day = millis(record, "order_time")?
                    .and_then(|ms| self.date(ms))
                    .ok_or_else(|| Unmappable::field("order_time", "is missing"))?;
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

impl Fxiaoke {
    /// A payment plan (回款计划) as an invoice: due on `plan_payment_time` for
    /// `plan_payment_amount`, issued when the plan was created (or on its due date, if it was
    /// entered later). Fxiaoke marks a plan completed once `actual_payment_amount` reaches the
    /// planned amount; plans carry no payment date, so a completed plan counts as paid on the
    /// day of the payment that completed it (see [`completion_times`]) or, where none was
    /// found, of its last change (booking the payment that completes it changes the plan).
    fn map_payment_plan(
        &self,
        record: &Value,
        changed: Option<DateTime<Utc>>,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        let id = text_or_number_id(record, "_id")?;
        let customer = account_of(record, "payment plan")?;
        let order = match record.get("order_id") {
            Some(Value::String(s)) if !s.is_empty() => Some(text_or_number_id(record, "order_id")?),
            _ => None,
        };
        let money = |field: &'static str| -> Result<Option<Money>, Unmappable> {
            record
                .get(field)
                .and_then(decimal_text)
                .map(|amount| Money::parse_decimal(field, &amount, self.currency))
                .transpose()
                .map_err(Unmappable::from)
        };
        let planned = money("plan_payment_amount")?
            .ok_or_else(|| Unmappable::field("plan_payment_amount", "is missing"))?;
        let due = millis(record, "plan_payment_time")?
            .and_then(|ms| self.date(ms))
            .ok_or_else(|| Unmappable::field("plan_payment_time", "is missing"))?;
        let issued = millis(record, "create_time")?
            .and_then(|ms| self.date(ms))
            .map_or(due, |created| created.min(due));
        let received = money("actual_payment_amount")?.map_or(0, |m| m.minor);
        let paid = if received >= planned.minor {
            // The completing payment's day where it was found, else the plan's last change.
            let completed = self.paid_at.borrow_mut().remove(id.as_str());
            completed
                .or_else(|| changed.map(|t| t.timestamp_millis()))
                .and_then(|ms| self.date(ms))
                .map(|day| day.max(issued))
        } else {
            None
        };
        let invoice = Invoice::new(id, customer, order, issued, due, planned, paid)?;
        Ok((Mapped::Invoice(invoice), changed))
    }

    /// A record of the configured activity object as a contact with the customer its
    /// `customer_field` names, at its `time_field`, of the kind its `kind_field` option maps to.
    /// Records without a customer or with an unmapped kind are not contacts; the owner is the
    /// first of `owner` when that user is imported.
    fn map_activity(
        &self,
        record: &Value,
        changed: Option<DateTime<Utc>>,
        lookups: &Lookups,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable> {
        let settings = &self.settings.activities;
        let Some(customer) = first_id(record, &settings.customer_field)? else {
            return Ok((Mapped::Ignored, changed));
        };
        let kind = if settings.kind_field.trim().is_empty() {
            settings.default_kind.as_deref()
        } else {
            match record.get(&settings.kind_field) {
                Some(Value::Array(options)) => options.first().and_then(Value::as_str),
                other => other.and_then(Value::as_str),
            }
            .and_then(|option| settings.kinds.get(option.trim()))
            .map(String::as_str)
        };
        let Some(kind) = kind else {
            return Ok((Mapped::Ignored, changed));
        };
        let occurred_at = millis(record, &settings.time_field)?
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| Unmappable::field(&settings.time_field, "is missing on a contact"))?;
        let owner_email = first_id(record, "owner")
            .ok()
            .flatten()
            .and_then(|id| lookups.owner_email("owner", &id).ok());
        let note = settings
            .note_field
            .as_deref()
            .and_then(|field| text(record, field))
            .filter(|note| !note.trim().is_empty())
            .map(str::to_owned);
        let activity = Activity {
            external_id: text_or_number_id(record, "_id")?,
            customer,
            owner_email,
            kind: ActivityKind::parse(kind)?,
            occurred_at,
            note,
        };
        Ok((Mapped::Activity(activity), changed))
    }

    /// Finds when each completed plan of `plans` that belongs to an order was completed: reads
    /// every plan and payment of those orders and fills the plans with the payments in order.
    async fn date_completed_plans(&self, plans: &[Value]) -> Result<(), CrmError> {
        // Only this page's plans are mapped next.
        self.paid_at.borrow_mut().clear();
        let orders: BTreeSet<&str> = plans
            .iter()
            .filter(|p| completed_plan(p, self.currency))
            .filter_map(|p| p.get("order_id").and_then(Value::as_str))
            .filter(|o| !o.is_empty())
            .collect();
        let orders: Vec<&str> = orders.into_iter().collect();
        // Bounded IN lists: the limit on them is not documented.
        for chunk in orders.chunks(100) {
            let of_orders = json!({"field_name": "order_id", "operator": "IN",
                "field_values": chunk});
            let all_plans = self
                .query_all(
                    "payment plans of orders",
                    "PaymentPlanObj",
                    &[
                        "_id",
                        "order_id",
                        "plan_payment_amount",
                        "plan_payment_time",
                        "life_status",
                    ],
                    &of_orders,
                )
                .await?;
            let payments = self
                .query_all(
                    "payments",
                    "PaymentObj",
                    &[
                        "_id",
                        "order_id",
                        "payment_amount",
                        "payment_time",
                        "life_status",
                    ],
                    &of_orders,
                )
                .await?;
            let times = completion_times(&all_plans, &payments, self.currency);
            self.paid_at.borrow_mut().extend(times);
        }
        Ok(())
    }

    /// One page (`page_size` records, in `_id` order) of `object` passing `filters`.
    async fn query(
        &self,
        what: &str,
        object: &str,
        fields: &[&str],
        filters: Vec<Value>,
    ) -> Result<Vec<Value>, CrmError> {
        let body = json!({
            "data": {
                "dataObjectApiName": object,
                "search_query_info": {
                    "limit": self.settings.page_size,
                    "offset": 0,
                    "filters": filters,
                    "orders": [{"fieldName": "_id", "isAsc": true}],
                    "fieldProjection": fields,
                },
            },
        });
        let answer = self.call(what, "/cgi/crm/v2/data/query", body).await?;
        Ok(answer
            .pointer("/data/dataList")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Every record of `object` passing `filter`, page by page along `_id`.
    async fn query_all(
        &self,
        what: &str,
        object: &str,
        fields: &[&str],
        filter: &Value,
    ) -> Result<Vec<Value>, CrmError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut filters = vec![filter.clone()];
            if let Some(last) = &after {
                filters
                    .push(json!({"field_name": "_id", "operator": "GT", "field_values": [last]}));
            }
            let page = self.query(what, object, fields, filters).await?;
            let full = page.len() >= self.settings.page_size as usize;
            after = page
                .last()
                .and_then(|r| r.get("_id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            all.extend(page);
            if !full || after.is_none() {
                return Ok(all);
            }
        }
    }
}

/// The id in `field`, given as text or as a list of ids (lookups and `owner` are lists; the
/// first counts); None when the field is absent or empty.
fn first_id(record: &Value, field: &str) -> Result<Option<ExternalId>, Unmappable> {
    let value = match record.get(field) {
        Some(Value::Array(ids)) => ids.first(),
        other => other,
    };
    let raw = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => return Err(Unmappable::field(field, format!("{other} is not an id"))),
    };
    ExternalId::parse("id", &raw)
        .map(Some)
        .map_err(|e| Unmappable::field(field, e.reason))
}

/// An amount field in minor units of `currency`; None when absent or unreadable.
fn minor_units(record: &Value, field: &'static str, currency: Currency) -> Option<i64> {
    record
        .get(field)
        .and_then(decimal_text)
        .and_then(|a| Money::parse_decimal(field, &a, currency).ok())
        .map(|m| m.minor)
}

/// Whether a plan's received amount reaches its planned amount (Fxiaoke's "completed"), read
/// in minor units as the plan's mapping reads them.
fn completed_plan(plan: &Value, currency: Currency) -> bool {
    match (
        minor_units(plan, "plan_payment_amount", currency),
        minor_units(plan, "actual_payment_amount", currency),
    ) {
        (Some(planned), Some(received)) => received >= planned,
        _ => false,
    }
}

/// When each plan of an order was completed: the order's live payments, oldest first, fill its
/// live plans in due-date order; a plan is completed by the payment that brings the running
/// total of payments to the running total of planned amounts up to it. Plan id → epoch ms of
/// that payment. Records with unreadable amounts or times are left out (their plans keep the
/// last-change date).
fn completion_times(
    plans: &[Value],
    payments: &[Value],
    currency: Currency,
) -> HashMap<String, i64> {
    let owed = by_order(plans, "plan_payment_time", "plan_payment_amount", currency);
    let mut paid = by_order(payments, "payment_time", "payment_amount", currency);
    let mut times = HashMap::new();
    for (order, mut plans) in owed {
        let Some(mut payments) = paid.remove(order) else {
            continue;
        };
        plans.sort_unstable();
        payments.sort_unstable();
        let mut payments = payments.into_iter();
        let (mut owed_total, mut paid_total, mut last_payment) = (0_i64, 0_i64, None);
        for (_, plan, amount) in plans {
            owed_total = owed_total.saturating_add(amount);
            while paid_total < owed_total {
                let Some((at, _, amount)) = payments.next() else {
                    break;
                };
                paid_total = paid_total.saturating_add(amount);
                last_payment = Some(at);
            }
            if paid_total < owed_total {
                // The payments ran out: this plan and the later ones are not completed by them.
                break;
            }
            if let Some(at) = last_payment {
                times.insert(plan.to_owned(), at);
            }
        }
    }
    times
}

/// The live records (not voided) with an order, a time and an amount, by order: `(time, id,
/// amount in minor units)` each.
fn by_order<'a>(
    records: &'a [Value],
    time_field: &str,
    amount_field: &'static str,
    currency: Currency,
) -> BTreeMap<&'a str, Vec<(i64, &'a str, i64)>> {
    let mut orders: BTreeMap<&str, Vec<(i64, &str, i64)>> = BTreeMap::new();
    for record in records
        .iter()
        .filter(|r| text(r, "life_status") != Some("invalid"))
    {
        if let (Some(order), Some(id), Some(at), Some(amount)) = (
            text(record, "order_id").filter(|o| !o.is_empty()),
            text(record, "_id"),
            millis(record, time_field).ok().flatten(),
            minor_units(record, amount_field, currency),
        ) {
            orders.entry(order).or_default().push((at, id, amount));
        }
    }
    orders
}

/// The customer an order or payment plan belongs to (`account_id`).
fn account_of(record: &Value, what: &str) -> Result<ExternalId, Unmappable> {
    match record.get("account_id") {
        Some(Value::String(s)) if !s.is_empty() => text_or_number_id(record, "account_id"),
        _ => Err(Unmappable::field(
            "account_id",
            format!("the {what} has no customer; link it to one in Fxiaoke"),
        )),
    }
}

/// Epoch milliseconds sent as a number or a digit string.
fn millis(record: &Value, field: &str) -> Result<Option<i64>, Unmappable> {
    match record.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| Unmappable::field(field, format!("{n} is not epoch milliseconds"))),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| Unmappable::field(field, format!("'{s}' is not epoch milliseconds"))),
        Some(other) => Err(Unmappable::field(
            field,
            format!("{other} is not epoch milliseconds"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str, order: &str, due: i64, amount: &str) -> Value {
        json!({"_id": id, "order_id": order, "plan_payment_time": due,
            "plan_payment_amount": amount, "life_status": "normal"})
    }

    fn payment(id: &str, order: &str, at: i64, amount: &str) -> Value {
        json!({"_id": id, "order_id": order, "payment_time": at, "payment_amount": amount,
            "life_status": "normal"})
    }

    #[test]
    fn payments_fill_an_orders_plans_in_due_order() {
        let cny = Currency::parse("CNY").unwrap();
        let plans = [
            // Listed out of due order: the second plan is due first.
            plan("P2", "O1", 2_000, "100.00"),
            plan("P1", "O1", 1_000, "100.00"),
            plan("P3", "O1", 3_000, "100.00"),
            plan("Q1", "O2", 1_000, "50"),
        ];
        let mut voided = payment("X", "O1", 1_200, "999");
        voided["life_status"] = json!("invalid");
        let payments = [
            payment("A", "O1", 1_500, "60"),
            payment("B", "O1", 1_800, "40.00"),
            // Covers P2 and part of P3.
            payment("C", "O1", 2_500, "150"),
            voided,
            // Another order's payment does not pay O1's plans.
            payment("D", "O2", 900, "49.99"),
        ];
        let times = completion_times(&plans, &payments, cny);
        assert_eq!(
            times.get("P1"),
            Some(&1_800),
            "completed by the second payment"
        );
        assert_eq!(times.get("P2"), Some(&2_500));
        assert_eq!(times.get("P3"), None, "50 of 100 received");
        assert_eq!(times.get("Q1"), None, "a cent short");
        assert_eq!(times.len(), 2);
    }

    #[test]
    fn plans_without_an_order_or_payments_get_no_time() {
        let cny = Currency::parse("CNY").unwrap();
        let plans = [plan("P1", "", 1_000, "10"), plan("P2", "O9", 1_000, "10")];
        let payments = [payment("A", "", 1_100, "10")];
        assert!(completion_times(&plans, &payments, cny).is_empty());
    }

    #[test]
    fn a_plan_of_nothing_owed_does_not_stop_the_later_ones() {
        let cny = Currency::parse("CNY").unwrap();
        let plans = [plan("P0", "O1", 500, "0"), plan("P1", "O1", 1_000, "10")];
        let payments = [payment("A", "O1", 1_100, "10")];
        let times = completion_times(&plans, &payments, cny);
        assert_eq!((times.get("P0"), times.get("P1")), (None, Some(&1_100)));
    }
}
