//! The JSON API (`/api/v1`) and the data behind the pages: each page renders exactly what its
//! API route returns.

use actix_web::{HttpResponse, web};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tierwise_domain::grading::summary::GroupFigures;
use tierwise_domain::grading::{BUILTIN_COMPONENTS, Policy, Summary};
use tierwise_domain::notify::{FollowUpKind, next_due};
use tierwise_domain::{CustomerId, Period};
use tierwise_store::dashboard::{
    self as store, Cursor, CustomerFilter, CustomerRecords, CustomerRow, CustomerSort,
    GradeHistoryRow,
};
use tierwise_store::grading::{GradedCustomer, OverrideEvent};

use std::sync::Arc;

use tierwise_store::DbConnection;
use tierwise_store::dashboard::PublishedRun;

use crate::AppState;
use crate::auth::CurrentUser;

/// Rows per customer page.
pub const PAGE: i64 = 50;

/// Why data could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not found.
    #[error("{0}")]
    NotFound(String),
    /// Bad input.
    #[error("{0}")]
    BadRequest(String),
    /// Another process holds what this needs (a grading run holds the grading lock).
    #[error("{0}; try again when it has finished")]
    Busy(String),
    /// The database failed.
    #[error("internal error")]
    Internal,
}

impl actix_web::ResponseError for ApiError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Busy(_) => StatusCode::CONFLICT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .json(serde_json::json!({ "error": self.to_string() }))
    }
}

impl From<tierwise_store::StoreError> for ApiError {
    fn from(e: tierwise_store::StoreError) -> Self {
        tracing::error!(error = %e, "database");
        Self::Internal
    }
}

/// `?period=2026-10` (default: the newest graded period).
#[derive(Debug, Default, Deserialize)]
pub struct PeriodQuery {
    /// Period.
    pub period: Option<String>,
}

/// A tier's figures now and in the period before.
#[derive(Debug, Serialize)]
pub struct TierFigures {
    /// Tier name (`none` for no tier).
    pub name: String,
    /// CSS colour.
    pub colour: String,
    /// Customers now.
    pub customers: u64,
    /// Customers in the period before.
    pub customers_before: u64,
    /// Revenue share now.
    pub revenue_share: f64,
}

/// The overview.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// The period shown.
    pub period: Option<String>,
    /// The one before, when graded.
    pub previous: Option<String>,
    /// Every graded period, newest first (for the selector).
    pub periods: Vec<String>,
    /// Customers considered and graded.
    pub customers: u64,
    /// Graded.
    pub graded: u64,
    /// Tier changes against the period before.
    pub tier_changes: u64,
    /// By tier.
    pub tiers: Vec<TierFigures>,
    /// By segment, ABC class, lifecycle stage.
    pub segments: Vec<(String, GroupFigures)>,
    /// By ABC class.
    pub abc: Vec<(String, GroupFigures)>,
    /// By lifecycle stage (funnel order).
    pub lifecycle: Vec<(String, GroupFigures)>,
    /// Customers at risk or churned.
    pub churn_risk: u64,
    /// Tier sizes over the last 12 periods, oldest first: (period, counts by tier).
    pub trend: Vec<(String, Vec<u64>)>,
}

pub(crate) fn parse_period(raw: Option<&str>) -> Result<Option<Period>, ApiError> {
    raw.filter(|p| !p.is_empty())
        .map(|p| Period::parse(p).map_err(|e| ApiError::BadRequest(format!("period: {e}"))))
        .transpose()
}

/// Builds the overview of `period` (default: newest).
pub async fn overview_data(state: &AppState, period: Option<&str>) -> Result<Overview, ApiError> {
    let wanted = parse_period(period)?;
    let summaries = state.db.run(|c| store::recent_summaries(c, 240)).await?;
    let parse = |json: &Option<String>| -> Summary {
        json.as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    };
    let periods: Vec<String> = summaries.iter().map(|(p, _)| p.clone()).collect();
    let index = match wanted {
        Some(p) => summaries
            .iter()
            .position(|(k, _)| *k == p.to_string())
            .ok_or_else(|| ApiError::NotFound(format!("{p} has not been graded")))?,
        None => 0,
    };
    let now = summaries
        .get(index)
        .map(|(_, s)| parse(s))
        .unwrap_or_default();
    let prev_key = summaries
        .get(index)
        .and_then(|(k, _)| Period::parse(k).ok())
        .map(|p| p.prev().to_string());
    let before = summaries
        .iter()
        .find(|(k, _)| Some(k) == prev_key.as_ref())
        .map(|(_, s)| parse(s));
    let count = |s: &Summary, name: &str| {
        s.tiers
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, g)| g.customers)
    };
    let mut names: Vec<(String, String)> = state
        .policy
        .tiers
        .levels
        .iter()
        .map(|l| (l.name.clone(), l.colour.clone()))
        .collect();
    names.push(("none".into(), "#c8ccd2".into()));
    let tiers = names
        .iter()
        .map(|(name, colour)| TierFigures {
            name: name.clone(),
            colour: colour.clone(),
            customers: count(&now, name),
            customers_before: before.as_ref().map_or(0, |b| count(b, name)),
            revenue_share: now
                .tiers
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |(_, g)| g.revenue_share),
        })
        .collect();
    let trend = summaries
        .iter()
        .skip(index)
        .take(12)
        .rev()
        .map(|(k, s)| {
            let s = parse(s);
            (k.clone(), names.iter().map(|(n, _)| count(&s, n)).collect())
        })
        .collect();
    let stage_order = ["prospect", "new", "active", "loyal", "at_risk", "churned"];
    let lifecycle = stage_order
        .iter()
        .map(|k| {
            (
                (*k).to_owned(),
                now.lifecycle.get(*k).cloned().unwrap_or_default(),
            )
        })
        .collect();
    let churn_risk = ["at_risk", "churned"]
        .iter()
        .map(|k| now.lifecycle.get(*k).map_or(0, |g| g.customers))
        .sum();
    Ok(Overview {
        period: summaries.get(index).map(|(k, _)| k.clone()),
        previous: before.as_ref().and(prev_key),
        periods,
        customers: now.customers,
        graded: now.graded,
        tier_changes: now.tier_changes,
        tiers,
        segments: now.segments.clone().into_iter().collect(),
        abc: now.abc.clone().into_iter().collect(),
        lifecycle,
        churn_risk,
        trend,
    })
}

/// `GET /api/v1/overview?period=`
pub async fn overview(
    _user: CurrentUser,
    state: web::Data<AppState>,
    q: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(overview_data(&state, q.period.as_deref()).await?))
}

/// Customer list query: filters, and `after` (the last id of the previous page).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct CustomersQuery {
    /// Period (default newest).
    pub period: Option<String>,
    /// Tier (`none`: no tier).
    pub tier: Option<String>,
    /// Segment.
    pub segment: Option<String>,
    /// ABC class.
    pub abc: Option<String>,
    /// Lifecycle stage.
    pub lifecycle: Option<String>,
    /// Owner id (text, so that the form's empty "any" option is not an error).
    pub owner: Option<String>,
    /// Name part or exact id.
    pub q: Option<String>,
    /// `yes` / `no`: with or without an override.
    pub overridden: Option<String>,
    /// Tier in the period before (a migration matrix cell, with `tier`).
    pub from_tier: Option<String>,
    /// `yes`: only customers at risk or churned; `no`: only the others.
    pub churn_risk: Option<String>,
    /// `id` (default), `score` (best first) or `monetary` (largest first).
    pub sort: Option<String>,
    /// Where the previous page ended (its `next_after`).
    pub after: Option<String>,
}

/// A page of customers.
#[derive(Debug, Serialize)]
pub struct CustomerList {
    /// Period shown.
    pub period: Option<String>,
    /// The filters as given.
    pub query: CustomersQuery,
    /// Rows.
    pub rows: Vec<CustomerRow>,
    /// `after` for the next page (none: this is the last).
    pub next_after: Option<String>,
}

fn yes_no(field: &str, value: Option<&str>) -> Result<Option<bool>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some("yes") => Ok(Some(true)),
        Some("no") => Ok(Some(false)),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{field}: '{other}' is neither yes nor no"
        ))),
    }
}

fn some(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Builds a page of the customer list (`q.after` = the last id of the previous page).
pub async fn customers_data(state: &AppState, q: CustomersQuery) -> Result<CustomerList, ApiError> {
    let wanted = parse_period(q.period.as_deref())?;
    let filter = CustomerFilter {
        tier: some(&q.tier),
        segment: some(&q.segment),
        abc: some(&q.abc),
        lifecycle: some(&q.lifecycle),
        owner_id: match some(&q.owner) {
            Some(text) => Some(match text.parse::<i64>() {
                Ok(id) => id,
                Err(_) => state
                    .cache
                    .owners(&state.db)
                    .await?
                    .iter()
                    .find(|(_, _, email)| email.eq_ignore_ascii_case(&text))
                    .map(|(id, _, _)| *id)
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "owner: no owner has the id or email '{text}'"
                        ))
                    })?,
            }),
            None => None,
        },
        search: some(&q.q),
        overridden: yes_no("overridden", q.overridden.as_deref())?,
        from_tier: some(&q.from_tier),
        churn_risk: yes_no("churn_risk", q.churn_risk.as_deref())?,
    };
    let sort = match some(&q.sort).as_deref() {
        None | Some("id") => CustomerSort::Id,
        Some("score") => CustomerSort::Score,
        Some("monetary") => CustomerSort::Monetary,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "sort: '{other}' is not one of id, score, monetary"
            )));
        }
    };
    let after = match some(&q.after) {
        Some(text) => Some(Cursor::decode(sort, &text).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "after: '{text}' is not a position in this order; use the next_after of the page before"
            ))
        })?),
        None => None,
    };
    // One connection and one trip to the blocking pool for the whole page.
    let cache = state.cache.clone();
    let (published, rows) = state
        .db
        .run(move |c| {
            let page = |c: &mut DbConnection, run: Option<PublishedRun>| match run {
                Some(run) => store::customer_page(c, run, &filter, sort, after, PAGE),
                None => Ok(Vec::new()),
            };
            let mut lookup = cache.published(c, wanted)?;
            let mut rows = page(c, lookup.run)?;
            if rows.is_empty() && lookup.cached {
                // The cached run may have been replaced since.
                lookup = cache.newest_again(c)?;
                rows = page(c, lookup.run)?;
            }
            Ok((lookup.run, rows))
        })
        .await?;
    let period = published.map(|p| p.period);
    if let (Some(p), None) = (wanted, published) {
        return Err(ApiError::NotFound(format!("{p} has not been graded")));
    }
    let next_after = (rows.len() as i64 == PAGE)
        .then(|| rows.last().map(|r| Cursor::after(sort, r).encode()))
        .flatten();
    Ok(CustomerList {
        period: period.map(|p| p.to_string()),
        query: q,
        rows,
        next_after,
    })
}

/// `GET /api/v1/customers?…`
pub async fn customers(
    _user: CurrentUser,
    state: web::Data<AppState>,
    q: web::Query<CustomersQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(customers_data(&state, q.into_inner()).await?))
}

/// One customer: the newest grade with its explanation, the grade history and overrides.
#[derive(Debug, Serialize)]
pub struct CustomerDetail {
    /// Customer id.
    pub customer_id: i64,
    /// Owner id.
    pub owner_id: Option<i64>,
    /// Period of `grade`.
    pub period: Option<String>,
    /// The grade (with the explanation JSON), when graded.
    pub grade: Option<GradedCustomer>,
    /// The explanation parsed, for display.
    pub explanation: Option<serde_json::Value>,
    /// Grades by period, newest first.
    pub history: Vec<GradeHistoryRow>,
    /// The override audit trail, oldest first.
    pub overrides: Vec<OverrideEvent>,
    /// Whether the viewer may pin or block it.
    pub may_override: bool,
    /// Newest orders, invoices (with days late) and activities.
    pub records: CustomerRecords,
    /// Days each listed invoice was paid after its due day (open ones: days overdue today).
    pub days_late: Vec<i64>,
    /// Next call and visit by the tier's cadence.
    pub follow_ups: Vec<NextFollowUp>,
    /// The composite score's parts under the weights of the run that graded it.
    pub breakdown: Vec<ComponentPart>,
}

/// A follow-up due by the tier's contact cadence.
#[derive(Debug, Serialize)]
pub struct NextFollowUp {
    /// call | visit.
    pub kind: &'static str,
    /// Every this many months.
    pub every_months: u32,
    /// The latest contact of the kind.
    pub last_contact: Option<NaiveDate>,
    /// Next due day.
    pub due_on: NaiveDate,
    /// Days past due today (negative: days left).
    pub days_overdue: i64,
}

/// One component of the composite score.
#[derive(Debug, Serialize)]
pub struct ComponentPart {
    /// Component name.
    pub name: String,
    /// Its value in [0, 1].
    pub value: f64,
    /// Its weight in the run's policy.
    pub weight: f64,
    /// Points it adds to the composite: 100 × value × weight / (sum of the weights present).
    pub points: f64,
}

/// The parts of the composite from an explanation's component values and the run's policy.
fn breakdown(explanation: Option<&serde_json::Value>, policy: &Policy) -> Vec<ComponentPart> {
    let Some(values) = explanation
        .and_then(|e| e.get("components"))
        .and_then(|c| c.as_object())
    else {
        return Vec::new();
    };
    let names = BUILTIN_COMPONENTS
        .iter()
        .map(|n| (*n).to_owned())
        .chain(policy.components.custom.keys().cloned());
    let present: Vec<(String, f64, f64)> = names
        .zip(policy.components.weights())
        .filter_map(|(name, weight)| {
            let value = values.get(&name)?.as_f64()?;
            Some((name, value, weight))
        })
        .collect();
    let total: f64 = present.iter().map(|p| p.2).sum();
    present
        .into_iter()
        .map(|(name, value, weight)| ComponentPart {
            points: if total > 0.0 {
                100.0 * value * weight / total
            } else {
                0.0
            },
            name,
            value,
            weight,
        })
        .collect()
}

/// Orders, invoices and activities listed on a customer's page.
const RECORDS: i64 = 20;

/// Builds one customer's page.
pub async fn customer_data(
    state: &AppState,
    user: &CurrentUser,
    id: i64,
) -> Result<CustomerDetail, ApiError> {
    // One connection and one trip to the blocking pool for the whole page.
    struct Loaded {
        owner: Option<i64>,
        period: Option<Period>,
        grade: Option<GradedCustomer>,
        run_policy: Option<Arc<Policy>>,
        history: Vec<GradeHistoryRow>,
        overrides: Vec<OverrideEvent>,
        records: CustomerRecords,
    }
    let cache = state.cache.clone();
    let loaded: Option<Loaded> = state
        .db
        .run(move |c| {
            let Some(owner) = store::customer_owner(c, id)? else {
                return Ok(None);
            };
            let grade = |c: &mut DbConnection, run: Option<PublishedRun>| match run {
                Some(p) => {
                    tierwise_store::grading::graded_customer_in_run(c, p.run_id, CustomerId(id))
                }
                None => Ok(None),
            };
            let mut lookup = cache.published(c, None)?;
            let mut graded = grade(c, lookup.run)?;
            if graded.is_none() && lookup.cached {
                // The cached run may have been replaced since.
                lookup = cache.newest_again(c)?;
                graded = grade(c, lookup.run)?;
            }
            let run_policy = match lookup.run {
                Some(p) => cache.run_policy(c, p.run_id)?,
                None => None,
            };
            Ok(Some(Loaded {
                owner,
                period: lookup.run.map(|p| p.period),
                grade: graded,
                run_policy,
                history: store::grade_history(c, id, 24)?,
                overrides: tierwise_store::grading::override_history(c, CustomerId(id))?,
                records: store::customer_records(c, id, RECORDS)?,
            }))
        })
        .await?;
    let mut l = loaded.ok_or_else(|| ApiError::NotFound(format!("no customer {id}")))?;
    let today = chrono::Utc::now().date_naive();
    // Stored compactly; shown as the object with named fields.
    if let Some(stored) = l.grade.as_mut().and_then(|g| g.explanation.as_mut()) {
        *stored = tierwise_grading::explanation_object(stored).into_owned();
    }
    let explanation: Option<serde_json::Value> = l
        .grade
        .as_ref()
        .and_then(|g| g.explanation.as_deref())
        .and_then(|e| serde_json::from_str(e).ok());
    // The weights and cadences of the run that graded it (today's configuration may differ).
    let policy: &Policy = l.run_policy.as_deref().unwrap_or(&state.policy);
    let follow_ups = match (&l.grade, l.grade.as_ref().and_then(|g| g.tier.as_deref())) {
        (Some(g), Some(tier)) => match (policy.tier_index(tier), g.tier_since) {
            (Some(index), Some(since)) => FollowUpKind::ALL
                .iter()
                .filter_map(|kind| {
                    let every = kind.interval(policy, index)?;
                    let last = match kind {
                        FollowUpKind::Call => l.records.last_call,
                        FollowUpKind::Visit => l.records.last_visit,
                    };
                    let due_on = next_due(last, since, every);
                    Some(NextFollowUp {
                        kind: kind.as_str(),
                        every_months: every,
                        last_contact: last,
                        due_on,
                        days_overdue: (today - due_on).num_days(),
                    })
                })
                .collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let days_late = l
        .records
        .invoices
        .iter()
        .map(|i| (i.paid_on.unwrap_or(today) - i.due_on).num_days())
        .collect();
    Ok(CustomerDetail {
        customer_id: id,
        owner_id: l.owner,
        period: l.period.map(|p| p.to_string()),
        breakdown: breakdown(explanation.as_ref(), policy),
        explanation,
        grade: l.grade,
        history: l.history,
        overrides: l.overrides,
        may_override: user.may_override(l.owner),
        records: l.records,
        days_late,
        follow_ups,
    })
}

/// `GET /api/v1/customers/{id}`
pub async fn customer(
    user: CurrentUser,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(customer_data(&state, &user, id.into_inner()).await?))
}
