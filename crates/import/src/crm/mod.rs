//! CRM connectors: each fetches owners, customers and orders changed since a watermark, page by
//! page; [`sync`] maps and loads every page in its own transaction together with the
//! connector's position, so a run that dies resumes from its last committed page, and moves the
//! watermark only when the run completes (re-reading an overlap window, deduplicated by the
//! upsert on `(source, external_id)`). Records that do not map go to import_rejects with their
//! raw JSON and the reason; the run goes on. Records the source reports deleted or merged away
//! (in its listings, or in a listing of deletions read as an entity of its own) are marked in
//! the store, not removed and not kept as live.

pub mod fxiaoke;
pub mod http;
pub mod hubspot;
pub mod pipedrive;
pub mod salesforce;
pub mod zoho;

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use serde_json::Value;
use tierwise_domain::{
    Activity, Customer, EmailAddress, ExternalId, Invoice, Locale, Order, Owner, SourceName,
};
use tierwise_store::crm::{owner_emails, save_sync_state, sync_state};
use tierwise_store::load::{
    CustomerRef, DeletableTable, LoadContext, LoadedTable, Staged, analyze_after_load,
    load_activities, load_customers, load_invoices, load_orders, load_owners, mark_deleted,
};
use tierwise_store::runs::{Reject, RunStatus, RunTotals, finish_import_run, insert_rejects};
use tierwise_store::{Database, ImportRunId, StoreError};

/// Why a CRM run stopped.
#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    /// The connector could not be set up (configuration).
    #[error("{0}")]
    Setup(String),
    /// The API refused the credentials.
    #[error(
        "{source_name}: the API refused the credentials (HTTP {status}: {message}); check {hint}"
    )]
    Auth {
        /// Source.
        source_name: String,
        /// HTTP status.
        status: u16,
        /// The API's message.
        message: String,
        /// Where the credentials come from.
        hint: String,
    },
    /// The API's daily budget is spent: the run stopped cleanly and resumes on the next run.
    #[error(
        "{0}: the API's daily quota is used up; the run stopped after its last committed page \
         and resumes from there on the next run"
    )]
    QuotaExhausted(String),
    /// The API answered with an error that retrying does not fix.
    #[error("{source_name}: {what}: HTTP {status}: {message}")]
    Http {
        /// Source.
        source_name: String,
        /// The request.
        what: String,
        /// HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// Every try of a request failed.
    #[error(
        "{source_name}: {what}: gave up after {attempts} tries (last: {last}); the run resumes \
         from its last committed page next time"
    )]
    GaveUp {
        /// Source.
        source_name: String,
        /// The request.
        what: String,
        /// Tries made.
        attempts: usize,
        /// The last failure.
        last: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `[crm]`: the connectors and how they sync.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrmSettings {
    /// Minutes re-read before each watermark (late-visible writes, equal timestamps).
    pub overlap_minutes: i64,
    /// `[crm.fxiaoke]`
    pub fxiaoke: fxiaoke::FxiaokeSettings,
    /// `[crm.hubspot]`
    pub hubspot: hubspot::HubspotSettings,
    /// `[crm.pipedrive]`
    pub pipedrive: pipedrive::PipedriveSettings,
    /// `[crm.salesforce]`
    pub salesforce: salesforce::SalesforceSettings,
    /// `[crm.zoho]`
    pub zoho: zoho::ZohoSettings,
}

impl Default for CrmSettings {
    fn default() -> Self {
        Self {
            overlap_minutes: 5,
            fxiaoke: fxiaoke::FxiaokeSettings::default(),
            hubspot: hubspot::HubspotSettings::default(),
            pipedrive: pipedrive::PipedriveSettings::default(),
            salesforce: salesforce::SalesforceSettings::default(),
            zoho: zoho::ZohoSettings::default(),
        }
    }
}

impl CrmSettings {
    /// The sources that are switched on.
    pub fn enabled(&self) -> Vec<&'static str> {
        let mut on = Vec::new();
        if self.fxiaoke.enabled {
            on.push("fxiaoke");
        }
        if self.hubspot.enabled {
            on.push("hubspot");
        }
        if self.pipedrive.enabled {
            on.push("pipedrive");
        }
        if self.salesforce.enabled {
            on.push("salesforce");
        }
        if self.zoho.enabled {
            on.push("zoho");
        }
        on
    }
}

/// Sources there is a connector for.
pub const SOURCES: &[&str] = &["fxiaoke", "hubspot", "pipedrive", "salesforce", "zoho"];

/// Runs the connector of `source` (one of [`SOURCES`]) as `settings` configure it.
pub async fn sync_source(
    db: &Database,
    settings: &CrmSettings,
    source: &str,
    full: bool,
    default_locale: Locale,
) -> Result<SyncReport, CrmError> {
    let options = SyncOptions {
        full,
        overlap: TimeDelta::minutes(settings.overlap_minutes.max(0)),
        default_locale,
        max_pages: None,
        batch_records: BATCH_RECORDS,
    };
    match source {
        "fxiaoke" => {
            let connector = fxiaoke::Fxiaoke::new(settings.fxiaoke.clone())?;
            sync(db, &connector, &options).await
        }
        "hubspot" => {
            let connector = hubspot::Hubspot::new(settings.hubspot.clone())?;
            sync(db, &connector, &options).await
        }
        "pipedrive" => {
            let connector = pipedrive::Pipedrive::new(settings.pipedrive.clone())?;
            sync(db, &connector, &options).await
        }
        "salesforce" => {
            let connector = salesforce::Salesforce::new(settings.salesforce.clone())?;
            sync(db, &connector, &options).await
        }
        "zoho" => {
            let connector = zoho::Zoho::new(settings.zoho.clone())?;
            sync(db, &connector, &options).await
        }
        other => Err(CrmError::Setup(format!(
            "there is no connector for '{other}'; available: {}",
            SOURCES.join(", ")
        ))),
    }
}

/// What a connector imports, in load order (owners before the customers that name them,
/// customers before their orders).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Entity {
    /// Account managers.
    Owners,
    /// Customers (companies, organisations, accounts).
    Customers,
    /// Orders (won deals).
    Orders,
    /// Invoices or payment plans: what a customer owes, by when, and when it was paid.
    Invoices,
    /// Contacts with customers: calls, visits, emails, meetings.
    Activities,
    /// Customers the source lists as deleted or merged away (a listing of its own).
    DeletedCustomers,
    /// Orders the source lists as deleted (a listing of its own).
    DeletedOrders,
    /// Invoices the source lists as deleted (a listing of its own).
    DeletedInvoices,
    /// Activities the source lists as deleted (a listing of its own).
    DeletedActivities,
}

impl Entity {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owners => "owners",
            Self::Customers => "customers",
            Self::Orders => "orders",
            Self::Invoices => "invoices",
            Self::Activities => "activities",
            Self::DeletedCustomers => "deleted_customers",
            Self::DeletedOrders => "deleted_orders",
            Self::DeletedInvoices => "deleted_invoices",
            Self::DeletedActivities => "deleted_activities",
        }
    }

    /// The table a deletion read for this entity marks.
    fn deletes_from(self) -> Option<DeletableTable> {
        match self {
            Self::Customers | Self::DeletedCustomers => Some(DeletableTable::Customers),
            Self::Orders | Self::DeletedOrders => Some(DeletableTable::Orders),
            Self::Invoices | Self::DeletedInvoices => Some(DeletableTable::Invoices),
            Self::Activities | Self::DeletedActivities => Some(DeletableTable::Activities),
            Self::Owners => None,
        }
    }
}

/// One page of raw records and where the next page starts.
#[derive(Debug, Clone, Default)]
pub struct RawPage {
    /// The records as the API sent them.
    pub records: Vec<Value>,
    /// The API's cursor of the next page; None on the last page.
    pub next: Option<String>,
}

/// A record mapped to the domain.
#[derive(Debug, Clone)]
pub enum Mapped {
    /// An owner.
    Owner(Owner),
    /// A customer.
    Customer(Customer),
    /// An order of a customer.
    Order(Order),
    /// An invoice (or payment plan) of a customer, created from its id if not held yet.
    Invoice(Invoice),
    /// A contact with a customer; the customer must be imported already (an activity names no
    /// more of it than its id), else the activity is rejected with its JSON.
    Activity(Activity),
    /// Deleted or merged away at the source: marked in the store if held there.
    Deleted(Deleted),
    /// Read but not imported (a deal that is not won).
    Ignored,
}

/// A record the source reports deleted or merged away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// Its id at the source.
    pub external_id: ExternalId,
    /// When the source says it was deleted, if it says.
    pub at: Option<DateTime<Utc>>,
    /// Why, for people reading the store (`deleted in zoho (recycle bin)`,
    /// `merged into 0015g00000XyZ12AAB`).
    pub reason: String,
}

/// A record that did not map: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmappable {
    /// The API's field name, when one field is at fault.
    pub field: Option<String>,
    /// Why, in words a person can act on.
    pub reason: String,
}

impl Unmappable {
    /// A record refused because of `field`.
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            reason: reason.into(),
        }
    }
}

impl From<tierwise_domain::FieldError> for Unmappable {
    fn from(e: tierwise_domain::FieldError) -> Self {
        Self {
            field: Some(e.field.to_owned()),
            reason: e.reason,
        }
    }
}

/// What a mapper may look up.
#[derive(Debug, Default)]
pub struct Lookups {
    /// Owners' emails by their id in the source.
    pub owner_emails: HashMap<String, String>,
    /// Locale of owners the source gives none for.
    pub default_locale: Locale,
}

impl Lookups {
    /// The email of user `owner_id` of the source; `field` names the record's owner field in
    /// the reject.
    pub fn owner_email(
        &self,
        field: &str,
        owner_id: &ExternalId,
    ) -> Result<EmailAddress, Unmappable> {
        let email = self.owner_emails.get(owner_id.as_str()).ok_or_else(|| {
            Unmappable::field(
                field,
                format!("user {} is not among the imported users", owner_id.as_str()),
            )
        })?;
        Ok(EmailAddress::parse(email)?)
    }
}

/// Positions of a listing that reads two objects in turn within one entity (calls, then
/// meetings): a position in the second object is the object's own cursor behind `marker`, and
/// the marker alone is its start. Stored positions of the first object are never marked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TwoObjects {
    /// Marks positions in the second object, e.g. `meetings:`.
    pub marker: &'static str,
}

impl TwoObjects {
    /// Whether `cursor` lies in the second object, and the object's own cursor (none at the
    /// start of either).
    pub(crate) fn split(self, cursor: Option<&str>) -> (bool, Option<&str>) {
        match cursor.and_then(|c| c.strip_prefix(self.marker)) {
            Some(rest) => (true, Some(rest).filter(|c| !c.is_empty())),
            None => (false, cursor.filter(|c| !c.is_empty())),
        }
    }

    /// The position to store after a page whose object gave `next`: marked in the second
    /// object; at the end of the first, the start of the second (when it is read at all).
    pub(crate) fn next(
        self,
        second: bool,
        next: Option<String>,
        then_second: bool,
    ) -> Option<String> {
        match next {
            Some(next) if second => Some(format!("{}{next}", self.marker)),
            None if !second && then_second => Some(self.marker.to_owned()),
            next => next,
        }
    }
}

/// Fails unless every field setting of a configured object (`section`, e.g.
/// `crm.salesforce.invoices`) is filled in, naming the first empty one and the doc to read.
pub(crate) fn require_field_settings(
    section: &str,
    object: &str,
    doc: &str,
    settings: &[(&str, &str)],
) -> Result<(), CrmError> {
    match settings.iter().find(|(_, value)| value.trim().is_empty()) {
        Some((name, _)) => Err(CrmError::Setup(format!(
            "{section}.{name}: empty; name the field of {object} that holds it ({doc})"
        ))),
        None => Ok(()),
    }
}

/// The error of a connector asked for an entity it does not read (its `entities` never lists
/// it, so this is a programming error, said plainly).
pub(crate) fn not_read(entity: Entity) -> CrmError {
    CrmError::Setup(format!("this connector does not read {}", entity.as_str()))
}

/// A record's field as text, when it is a JSON string.
pub(crate) fn text<'a>(record: &'a Value, field: &str) -> Option<&'a str> {
    record.get(field).and_then(Value::as_str)
}

/// The decimal text of an amount sent as a JSON number or string.
pub(crate) fn decimal_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Custom customer fields a connector reads (`[crm.<source>.customer_fields]`): named in
/// configuration, because every company names its own.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CustomerFields {
    /// The CRM field holding the manual prospect rating (1 cold – 5 hot) of new customers.
    pub prospect_rating: Option<String>,
    /// Numeric customer attributes, usable as custom grading components: tierwise name → CRM
    /// field, e.g. `nps = "NPS__c"`, `credit_limit = "Credit_Limit__c"`.
    pub attributes: std::collections::BTreeMap<String, String>,
}

impl CustomerFields {
    /// The CRM fields to ask for.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.prospect_rating
            .iter()
            .chain(self.attributes.values())
            .map(String::as_str)
    }

    /// Sets the configured fields of `customer` from the record, `value_of` finding a field's
    /// value. Empty fields are left unset; a value that is not a number rejects the record.
    pub fn apply<'r>(
        &self,
        mut customer: Customer,
        value_of: impl Fn(&str) -> Option<&'r Value>,
    ) -> Result<Customer, Unmappable> {
        if let Some(field) = &self.prospect_rating
            && let Some(rating) = number(field, value_of(field))?
        {
            if rating.fract() != 0.0 {
                return Err(Unmappable::field(
                    field,
                    format!("{rating} is not a whole rating from 1 to 5"),
                ));
            }
            customer = customer
                .with_prospect_rating(Some(rating as i64))
                .map_err(|e| Unmappable::field(field, e.reason))?;
        }
        for (name, field) in &self.attributes {
            if let Some(value) = number(field, value_of(field))? {
                customer = customer
                    .with_attribute(name, value)
                    .map_err(|e| Unmappable::field(field, e.reason))?;
            }
        }
        Ok(customer)
    }
}

/// A number sent as a JSON number, a numeric string, or an object with a `value` (Pipedrive's
/// monetary custom fields); None when absent or empty.
fn number(field: &str, value: Option<&Value>) -> Result<Option<f64>, Unmappable> {
    let value = match value {
        Some(Value::Object(o)) => o.get("value"),
        other => other,
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| Unmappable::field(field, format!("'{s}' is not a number"))),
        Some(other) => Err(Unmappable::field(field, format!("{other} is not a number"))),
    }
}

/// An id sent as a JSON string or number, as text (ids past 2^53 must stay strings).
pub(crate) fn text_or_number_id(
    record: &Value,
    field: &'static str,
) -> Result<ExternalId, Unmappable> {
    match record.get(field) {
        Some(Value::String(s)) => Ok(ExternalId::parse(field, s)?),
        Some(Value::Number(n)) => Ok(ExternalId::parse(field, &n.to_string())?),
        _ => Err(Unmappable::field(field, "is missing")),
    }
}

/// An order's cost from the field configuration names (`cost_field`): None when none is
/// configured or the record has no amount there; an amount that does not parse rejects the
/// record as `cost`.
pub(crate) fn configured_cost(
    record: &Value,
    cost_field: Option<&str>,
    currency: tierwise_domain::Currency,
) -> Result<Option<tierwise_domain::Money>, Unmappable> {
    match cost_field
        .and_then(|f| record.get(f))
        .and_then(decimal_text)
    {
        Some(raw) => Ok(Some(tierwise_domain::Money::parse_decimal(
            "cost", &raw, currency,
        )?)),
        None => Ok(None),
    }
}

/// A `YYYY-MM-DD` date from `field`, or why it is not one.
pub(crate) fn iso_date(field: &str, day: &str) -> Result<NaiveDate, Unmappable> {
    NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map_err(|_| Unmappable::field(field, format!("'{day}' is not a date like 2024-05-02")))
}

/// A secret as `config show` prints it.
pub(crate) fn masked<S: serde::Serializer>(
    secret: &secrecy::SecretString,
    s: S,
) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    s.serialize_str(if secret.expose_secret().is_empty() {
        ""
    } else {
        "***"
    })
}

/// A CRM API.
pub trait Connector {
    /// The source name records are stored under (`pipedrive`, ...).
    fn source(&self) -> &SourceName;

    /// What this connector imports, in load order.
    fn entities(&self) -> Vec<Entity> {
        vec![Entity::Owners, Entity::Customers, Entity::Orders]
    }

    /// Fetches the page of `entity` at `cursor` (None: the first) of the records changed at or
    /// after `since` (None: all).
    fn page(
        &self,
        entity: Entity,
        since: Option<DateTime<Utc>>,
        cursor: Option<&str>,
    ) -> impl std::future::Future<Output = Result<RawPage, CrmError>>;

    /// Maps one record, with the time it last changed (for the watermark).
    fn map(
        &self,
        entity: Entity,
        record: &Value,
        lookups: &Lookups,
    ) -> Result<(Mapped, Option<DateTime<Utc>>), Unmappable>;
}

/// How to run a sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Ignore the watermarks and any run in progress: read everything again.
    pub full: bool,
    /// Re-read this much before the watermark (late-visible writes, equal timestamps).
    pub overlap: TimeDelta,
    /// Locale of owners the source gives none for.
    pub default_locale: Locale,
    /// Stop after this many pages in this call (tests simulate a run that dies).
    pub max_pages: Option<u64>,
    /// Records stored per transaction (with the position after them).
    pub batch_records: u64,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            full: false,
            overlap: TimeDelta::minutes(5),
            default_locale: Locale::default(),
            max_pages: None,
            batch_records: BATCH_RECORDS,
        }
    }
}

/// What one entity's run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityReport {
    /// The entity.
    pub entity: &'static str,
    /// The import run recording it.
    pub run: Option<ImportRunId>,
    /// Pages loaded in this call.
    pub pages: u64,
    /// Records read.
    pub records: u64,
    /// Records written (new or changed).
    pub written: u64,
    /// Records rejected.
    pub rejected: u64,
    /// Records of the store marked deleted (the source deleted or merged them away).
    pub deleted: u64,
    /// Customers created from orders naming a customer not imported yet.
    pub customers_created: u64,
    /// The run resumed one that had stopped part-way.
    pub resumed: bool,
    /// The run completed (its watermark moved); false when it stopped part-way.
    pub completed: bool,
}

/// What a sync did, entity by entity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The source.
    pub source: String,
    /// Per entity, in load order.
    pub entities: Vec<EntityReport>,
}

impl SyncReport {
    /// Records rejected in all.
    pub fn rejected(&self) -> u64 {
        self.entities.iter().map(|e| e.rejected).sum()
    }
}

fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(t, Utc)
}

/// Imports what changed at `connector`'s source since the last completed run into `db`.
/// Returns early with [`EntityReport::completed`] false when `options.max_pages` stops it.
pub async fn sync<C: Connector>(
    db: &Database,
    connector: &C,
    options: &SyncOptions,
) -> Result<SyncReport, CrmError> {
    let source = connector.source().clone();
    let mut report = SyncReport {
        source: source.as_str().to_owned(),
        entities: Vec::new(),
    };
    let mut pages_left = options.max_pages;
    for entity in connector.entities() {
        let entity_report = sync_entity(db, connector, entity, options, &mut pages_left).await?;
        let completed = entity_report.completed;
        report.entities.push(entity_report);
        if !completed {
            break;
        }
    }
    Ok(report)
}

async fn sync_entity<C: Connector>(
    db: &Database,
    connector: &C,
    entity: Entity,
    options: &SyncOptions,
    pages_left: &mut Option<u64>,
) -> Result<EntityReport, CrmError> {
    let source = connector.source().clone();
    let (state, lookups, run) = {
        let source = source.clone();
        let full = options.full;
        let overlap = options.overlap;
        let locale = options.default_locale;
        db.run(move |c| {
            let mut state = sync_state(c, source.as_str(), entity.as_str())?;
            if full {
                state.watermark = None;
                state.in_progress = false;
            }
            if !state.in_progress {
                state.in_progress = true;
                state.run_since = state.watermark.map(|w| w - overlap);
                state.run_started = Some(Utc::now().naive_utc());
                state.run_cursor = None;
                state.run_max_seen = None;
                state.run_pages = 0;
            }
            let origin = format!("{} {}", source.as_str(), entity.as_str());
            let run = tierwise_store::runs::start_import_run(c, &source, entity.as_str(), &origin)?;
            let lookups = Lookups {
                owner_emails: owner_emails(c, source.as_str())?,
                default_locale: locale,
            };
            Ok((state, lookups, run))
        })
        .await?
    };
    let mut report = EntityReport {
        entity: entity.as_str(),
        run: Some(run),
        resumed: state.run_pages > 0,
        ..EntityReport::default()
    };
    let mut state = state;
    let target = Target {
        db,
        source: &source,
        entity,
        run,
        locale: options.default_locale,
    };
    let since = state.run_since.map(utc);
    let mut batch = Batch::default();
    let result: Result<(), CrmError> = async {
        loop {
            if pages_left.is_some_and(|left| left == 0) {
                return Ok(());
            }
            let page = match connector
                .page(entity, since, state.run_cursor.as_deref())
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    // Keep what was fetched before stopping: the next run resumes after it.
                    if !matches!(e, CrmError::Store(_)) {
                        batch.commit(&target, &state, &mut report).await?;
                    }
                    return Err(e);
                }
            };
            let page_no = state.run_pages + 1;
            let mut rejects = Vec::new();
            for (index, record) in page.records.iter().enumerate() {
                let line = index as u64 + 1;
                match connector.map(entity, record, &lookups) {
                    Ok((m, changed)) => {
                        if let Some(changed) = changed {
                            let changed = changed.naive_utc();
                            state.run_max_seen =
                                Some(state.run_max_seen.map_or(changed, |m| m.max(changed)));
                        }
                        if matches!(m, Mapped::Activity(_)) {
                            // Kept until stored: the store may still refuse it.
                            batch
                                .raw
                                .insert(batch.records.len(), (page_no, line, record.to_string()));
                        }
                        batch.records.push(Staged { line, record: m });
                    }
                    Err(why) => rejects.push(Reject {
                        line,
                        field: why.field,
                        reason: why.reason,
                        raw_record: record.to_string(),
                    }),
                }
            }
            if !rejects.is_empty() {
                batch.rejects.push((
                    format!("{} {} page {page_no}", source.as_str(), entity.as_str()),
                    rejects,
                ));
            }
            batch.pages += 1;
            batch.read += page.records.len() as u64;
            state.run_pages = page_no;
            state.run_cursor = page.next.clone();
            let last = page.next.is_none();
            if last {
                state.in_progress = false;
                // The newest change seen, but not past the run's start: a record changed while
                // the run paged may have moved behind its cursor, and is read again next time.
                let seen = match (state.run_max_seen, state.run_started) {
                    (Some(m), Some(started)) => Some(m.min(started)),
                    (m, _) => m,
                };
                state.watermark = match (state.watermark, seen) {
                    (Some(w), Some(m)) => Some(w.max(m)),
                    (w, m) => m.or(w),
                };
                state.run_started = None;
                state.run_since = None;
                state.run_max_seen = None;
                state.run_pages = 0;
            }
            if let Some(left) = pages_left.as_mut() {
                *left -= 1;
            }
            if last
                || batch.read >= options.batch_records
                || pages_left.is_some_and(|left| left == 0)
            {
                batch.commit(&target, &state, &mut report).await?;
            }
            if last {
                report.completed = true;
                return Ok(());
            }
        }
    }
    .await;
    // The import run's counts are the report's.
    let totals = RunTotals {
        rows_read: report.records,
        rows_written: report.written,
        rows_rejected: report.rejected,
        customers_created: report.customers_created,
        ..RunTotals::default()
    };
    let (status, error) = match &result {
        Ok(()) if totals.rows_rejected > 0 => (RunStatus::CompletedWithRejects, None),
        Ok(()) => (RunStatus::Succeeded, None),
        // The pages already loaded stay: the run resumes from them.
        Err(e) => (RunStatus::Failed, Some(e.to_string())),
    };
    let table = match entity {
        Entity::Owners => LoadedTable::Owners,
        Entity::Customers | Entity::DeletedCustomers => LoadedTable::Customers,
        Entity::Orders | Entity::DeletedOrders => LoadedTable::Orders,
        Entity::Invoices | Entity::DeletedInvoices => LoadedTable::Invoices,
        Entity::Activities | Entity::DeletedActivities => LoadedTable::Activities,
    };
    db.run(move |c| {
        finish_import_run(c, run, status, &totals, error.as_deref())?;
        // Orders may have created customers: their statistics are refreshed too.
        for (table, rows) in [
            (table, totals.rows_written),
            (LoadedTable::Customers, totals.customers_created),
        ] {
            if let Err(error) = analyze_after_load(c, table, rows) {
                tracing::warn!(%error, "refreshing statistics after the import failed");
            }
        }
        Ok(())
    })
    .await?;
    result.map(|()| report)
}

/// Records stored per transaction by default: small pages one by one cost PostgreSQL a
/// transaction and a staging round each. Measured on 1.1M Pipedrive records at 200 a page
/// (`cargo bench -p tierwise-import --bench crm_pipedrive`): page by page 10,700 records/s, in
/// batches of 2,000 18,200, of 10,000 32,600. A run that dies re-reads at most one batch.
pub const BATCH_RECORDS: u64 = 10_000;

/// Where one entity's batches go.
struct Target<'a> {
    db: &'a Database,
    source: &'a SourceName,
    entity: Entity,
    run: ImportRunId,
    locale: Locale,
}

/// Pages fetched and not yet stored.
#[derive(Default)]
struct Batch {
    records: Vec<Staged<Mapped>>,
    /// The page, line and JSON of records the store may refuse, by their index in `records`.
    raw: HashMap<usize, (i64, u64, String)>,
    /// Rejects by origin (`pipedrive customers page 7`).
    rejects: Vec<(String, Vec<Reject>)>,
    pages: u64,
    read: u64,
}

impl Batch {
    /// Stores the batch and `state` (the position after its last page) in one transaction.
    async fn commit(
        &mut self,
        target: &Target<'_>,
        state: &tierwise_store::crm::SyncState,
        report: &mut EntityReport,
    ) -> Result<(), CrmError> {
        if self.pages == 0 {
            return Ok(());
        }
        let Batch {
            records,
            raw,
            mut rejects,
            pages,
            read,
        } = std::mem::take(self);
        let (source, run, locale) = (target.source.clone(), target.run, target.locale);
        let entity = target.entity;
        let saved = state.clone();
        let (loaded, rejected) = target
            .db
            .run(move |c| {
                tierwise_store::transaction(c, |tx| {
                    let loaded = load_page(tx, &source, entity, run, locale, records)?;
                    // Records the store refused (their customer is not imported) are rejects.
                    for (index, customer) in &loaded.unknown_customers {
                        let Some((page, line, json)) = raw.get(index) else {
                            continue;
                        };
                        let origin = format!("{} {} page {page}", source.as_str(), entity.as_str());
                        let reject = Reject {
                            line: *line,
                            field: None,
                            reason: format!(
                                "customer {customer} is not imported (rejected, or created after \
                                 this run read the customers); run the import again with --full \
                                 once it is"
                            ),
                            raw_record: json.clone(),
                        };
                        match rejects.iter_mut().find(|(o, _)| *o == origin) {
                            Some((_, list)) => list.push(reject),
                            None => rejects.push((origin, vec![reject])),
                        }
                    }
                    for (origin, rejects) in &rejects {
                        insert_rejects(tx, run, origin, rejects)?;
                    }
                    save_sync_state(tx, &saved)?;
                    let rejected: u64 = rejects.iter().map(|(_, r)| r.len() as u64).sum();
                    Ok((loaded, rejected))
                })
            })
            .await?;
        report.pages += pages;
        report.records += read;
        report.written += loaded.written;
        report.deleted += loaded.deleted;
        report.customers_created += loaded.customers_created;
        report.rejected += rejected;
        tracing::debug!(entity = target.entity.as_str(), pages, read, "pages stored");
        Ok(())
    }
}

/// What loading a batch did.
#[derive(Debug, Default)]
struct PageLoaded {
    written: u64,
    deleted: u64,
    customers_created: u64,
    /// Records refused because their customer is unknown: index in the batch, customer id.
    unknown_customers: Vec<(usize, String)>,
}

/// Loads a batch's records of `entity`.
fn load_page(
    tx: &mut tierwise_store::DbConnection,
    source: &SourceName,
    entity: Entity,
    run: ImportRunId,
    locale: Locale,
    mapped: Vec<Staged<Mapped>>,
) -> Result<PageLoaded, StoreError> {
    let ctx = LoadContext {
        source: source.clone(),
        run,
        // An order may name a customer created after the customers' pass read its page: it is
        // created from the order (named by its id) and named by the next customers' pass.
        create_missing_customers: true,
        default_locale: locale,
        known_customers: Default::default(),
        // Pages are small and the watermark commits each batch: nothing to defer.
        deferred_indexes: Default::default(),
    };
    let (mut owners, mut customers, mut orders) = (Vec::new(), Vec::new(), Vec::new());
    let mut invoices = Vec::new();
    let mut deleted = Vec::new();
    let mut activities = Vec::new();
    for (index, Staged { line, record }) in mapped.into_iter().enumerate() {
        match record {
            // Numbered by their place in the batch, so a refusal finds its JSON.
            Mapped::Activity(a) => activities.push(Staged {
                line: index as u64,
                record: a,
            }),
            Mapped::Owner(o) => owners.push(Staged { line, record: o }),
            Mapped::Customer(c) => customers.push(Staged { line, record: c }),
            Mapped::Order(o) => orders.push(Staged {
                line,
                record: (o, CustomerRef::default()),
            }),
            Mapped::Invoice(i) => invoices.push(Staged {
                line,
                record: (i, CustomerRef::default()),
            }),
            Mapped::Deleted(d) => deleted.push(d),
            Mapped::Ignored => {}
        }
    }
    let mut loaded = PageLoaded::default();
    if !owners.is_empty() {
        loaded.written += load_owners(tx, &ctx, &owners)?.written;
    }
    if !customers.is_empty() {
        loaded.written += load_customers(tx, &ctx, &customers)?.written;
    }
    if !orders.is_empty() {
        let outcome = load_orders(tx, &ctx, &orders)?;
        loaded.written += outcome.written;
        loaded.customers_created += outcome.customers_created;
    }
    if !invoices.is_empty() {
        let outcome = load_invoices(tx, &ctx, &invoices)?;
        loaded.written += outcome.written;
        loaded.customers_created += outcome.customers_created;
    }
    if !activities.is_empty() {
        let outcome = load_activities(tx, &ctx, &activities)?;
        loaded.written += outcome.written;
        for index in outcome.unknown_customer_lines {
            let customer = activities
                .iter()
                .find(|a| a.line == index)
                .map(|a| a.record.customer.as_str().to_owned())
                .unwrap_or_default();
            loaded.unknown_customers.push((index as usize, customer));
        }
    }
    if let (Some(table), false) = (entity.deletes_from(), deleted.is_empty()) {
        // A deletion without a time is dated by the run that learned of it.
        let now = Utc::now().naive_utc();
        let deletions: Vec<_> = deleted
            .iter()
            .map(|d| tierwise_store::load::Deletion {
                external_id: d.external_id.as_str(),
                at: d.at.map_or(now, |t| t.naive_utc()),
                reason: &d.reason,
            })
            .collect();
        loaded.deleted = mark_deleted(tx, source, table, &deletions)?;
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> CustomerFields {
        CustomerFields {
            prospect_rating: Some("Rating__c".into()),
            attributes: [("nps".to_owned(), "NPS__c".to_owned())].into(),
        }
    }

    fn apply(record: Value) -> Result<Customer, Unmappable> {
        let customer = Customer::new(ExternalId::parse("id", "C1")?, "Acme")?;
        fields().apply(customer, |f| record.get(f))
    }

    #[test]
    fn configured_fields_are_read_as_numbers_from_numbers_strings_and_value_objects() {
        let c =
            apply(json!({"Rating__c": "4", "NPS__c": 42.5})).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (c.prospect_rating(), c.attributes().get("nps")),
            (Some(4), Some(&42.5))
        );
        let c = apply(json!({"Rating__c": 2, "NPS__c": {"value": "-7", "currency": "CNY"}}))
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (c.prospect_rating(), c.attributes().get("nps")),
            (Some(2), Some(&-7.0))
        );
        // Absent or empty fields are left unset.
        let c = apply(json!({"Rating__c": "", "NPS__c": null})).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((c.prospect_rating(), c.attributes().len()), (None, 0));
    }

    #[test]
    fn a_field_that_is_not_a_number_rejects_the_record_naming_the_field() {
        let e = apply(json!({"NPS__c": "n/a"}))
            .err()
            .map(|e| (e.field, e.reason));
        assert_eq!(
            e,
            Some((Some("NPS__c".into()), "'n/a' is not a number".into()))
        );
        let e = apply(json!({"Rating__c": 3.5})).err();
        assert!(e.is_some_and(|e| e.reason.contains("whole rating")));
        let e = apply(json!({"Rating__c": 9})).err();
        assert!(e.is_some_and(
            |e| e.field.as_deref() == Some("Rating__c") && e.reason.contains("outside 1-5")
        ));
    }

    #[test]
    fn two_objects_mark_the_second_objects_positions() {
        let parts = TwoObjects { marker: "events:" };
        assert_eq!(parts.split(None), (false, None));
        assert_eq!(parts.split(Some("")), (false, None));
        assert_eq!(parts.split(Some("/q/01g-200")), (false, Some("/q/01g-200")));
        assert_eq!(parts.split(Some("events:")), (true, None));
        assert_eq!(
            parts.split(Some("events:/q/02h-400")),
            (true, Some("/q/02h-400"))
        );
        // The first object ends: the second starts, unless it is not read.
        assert_eq!(parts.next(false, None, true).as_deref(), Some("events:"));
        assert_eq!(parts.next(false, None, false), None);
        assert_eq!(
            parts.next(false, Some("a".into()), true).as_deref(),
            Some("a")
        );
        assert_eq!(
            parts.next(true, Some("b".into()), true).as_deref(),
            Some("events:b")
        );
        assert_eq!(parts.next(true, None, true), None);
        // A stored position round-trips.
        let stored = parts.next(true, Some("b".into()), true);
        assert_eq!(parts.split(stored.as_deref()), (true, Some("b")));
    }
}
