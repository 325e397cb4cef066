//! Operations pages and their API: tier migrations, imports and rejects, jobs (with "run now"),
//! the outbox, and the CSV export of the customer list.

use actix_session::Session;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use tierwise_domain::grading::Summary;
use tierwise_store::ImportRunId;
use tierwise_store::dashboard::CustomerRow;
use tierwise_store::jobs::JobRun;
use tierwise_store::notify::{OutboxMessage, OutboxStatus};
use tierwise_store::runs::{ImportRun, Reject};

use crate::AppState;
use crate::api::{self, ApiError, CustomersQuery, PeriodQuery};
use crate::auth::{AuthError, CurrentUser, Role, check_csrf};
use crate::pages::{self, CsrfForm};

/// The migration matrix of a period against the one before.
#[derive(Debug, Serialize)]
pub struct Migrations {
    /// Period.
    pub period: Option<String>,
    /// Every graded period, newest first.
    pub periods: Vec<String>,
    /// Tier names, rows and columns (`none` last).
    pub tiers: Vec<String>,
    /// `cells[from][to]`: customers.
    pub cells: Vec<Vec<u64>>,
}

async fn migrations_data(state: &AppState, period: Option<&str>) -> Result<Migrations, ApiError> {
    let wanted = api::parse_period(period)?.map(|p| p.to_string());
    let summaries = state
        .db
        .run(|c| tierwise_store::dashboard::recent_summaries(c, 240))
        .await?;
    let periods: Vec<String> = summaries.iter().map(|(p, _)| p.clone()).collect();
    let chosen = match &wanted {
        Some(p) => summaries
            .iter()
            .find(|(k, _)| k == p)
            .ok_or_else(|| ApiError::NotFound(format!("{p} has not been graded")))?,
        None => match summaries.first() {
            Some(first) => first,
            None => {
                return Ok(Migrations {
                    period: None,
                    periods,
                    tiers: Vec::new(),
                    cells: Vec::new(),
                });
            }
        },
    };
    let summary: Summary = chosen
        .1
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut tiers = state.policy.tier_names();
    tiers.push(tierwise_domain::grading::summary::NO_TIER.to_owned());
    let cells = matrix_cells(&tiers, &summary.migration);
    Ok(Migrations {
        period: Some(chosen.0.clone()),
        periods,
        tiers,
        cells,
    })
}

/// `cells[from][to]` of a from-tier → to-tier count map, over `tiers` in both directions
/// (absent pairs count 0).
pub(crate) fn matrix_cells<T: AsRef<str>>(
    tiers: &[T],
    counts: &std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
) -> Vec<Vec<u64>> {
    tiers
        .iter()
        .map(|from| {
            let row = counts.get(from.as_ref());
            tiers
                .iter()
                .map(|to| row.and_then(|r| r.get(to.as_ref())).copied().unwrap_or(0))
                .collect()
        })
        .collect()
}

/// `GET /migrations`
pub async fn migrations(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    q: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let data = migrations_data(&state, q.period.as_deref()).await?;
    Ok(pages::render(
        &state,
        &session,
        Some(&user),
        "migrations.html",
        data,
    ))
}

/// `GET /api/v1/migrations?period=`
pub async fn api_migrations(
    _user: CurrentUser,
    state: web::Data<AppState>,
    q: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(migrations_data(&state, q.period.as_deref()).await?))
}

async fn import_runs(state: &AppState) -> Result<Vec<ImportRun>, ApiError> {
    Ok(state
        .db
        .run(|c| tierwise_store::runs::recent_import_runs(c, 100))
        .await?)
}

/// `GET /imports`
pub async fn imports(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
) -> Result<HttpResponse, ApiError> {
    let runs = import_runs(&state).await?;
    Ok(pages::render(
        &state,
        &session,
        Some(&user),
        "imports.html",
        runs,
    ))
}

/// `GET /api/v1/imports`
pub async fn api_imports(
    _user: CurrentUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(import_runs(&state).await?))
}

#[derive(Debug, Serialize)]
struct RejectsView {
    run: i64,
    rejects: Vec<Reject>,
}

async fn rejects(state: &AppState, run: i64) -> Result<Vec<Reject>, ApiError> {
    Ok(state
        .db
        .run(move |c| tierwise_store::runs::rejects_of_run(c, ImportRunId(run), 1000))
        .await?)
}

/// `GET /imports/{id}`: the rejected records of one import, with line, column and reason.
pub async fn import_rejects(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let run = id.into_inner();
    let view = RejectsView {
        run,
        rejects: rejects(&state, run).await?,
    };
    Ok(pages::render(
        &state,
        &session,
        Some(&user),
        "rejects.html",
        view,
    ))
}

/// `GET /api/v1/imports/{id}/rejects`
pub async fn api_import_rejects(
    _user: CurrentUser,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(rejects(&state, id.into_inner()).await?))
}

/// A job definition as shown.
#[derive(Debug, Serialize)]
pub struct JobView {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Cron expression.
    pub schedule: String,
    /// Time zone.
    pub timezone: String,
    /// Enabled.
    pub enabled: bool,
    /// Next occurrence (UTC).
    pub next_run: Option<String>,
}

/// The jobs page.
#[derive(Debug, Serialize)]
pub struct Jobs {
    /// Definitions.
    pub jobs: Vec<JobView>,
    /// Recent runs, newest first.
    pub runs: Vec<JobRun>,
    /// Whether the viewer may request runs.
    pub may_run: bool,
}

async fn jobs_data(state: &AppState, user: &CurrentUser) -> Result<Jobs, ApiError> {
    let now = chrono::Utc::now();
    let runs = state
        .db
        .run(|c| tierwise_store::jobs::history(c, None, 100))
        .await?;
    Ok(Jobs {
        jobs: state
            .jobs
            .iter()
            .map(|d| JobView {
                name: d.name.clone(),
                kind: d.kind.key().to_owned(),
                schedule: d.schedule.clone(),
                timezone: d.timezone.to_string(),
                enabled: d.enabled,
                next_run: d
                    .next_occurrence(now)
                    .filter(|_| d.enabled)
                    .map(|t| t.to_string()),
            })
            .collect(),
        runs,
        may_run: user.role == Role::Admin,
    })
}

/// `GET /jobs`
pub async fn jobs(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
) -> Result<HttpResponse, ApiError> {
    let data = jobs_data(&state, &user).await?;
    Ok(pages::render(
        &state,
        &session,
        Some(&user),
        "jobs.html",
        data,
    ))
}

/// `GET /api/v1/jobs`
pub async fn api_jobs(
    user: CurrentUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(jobs_data(&state, &user).await?))
}

/// `POST /jobs/{name}/run`: writes a run request that a scheduler picks up (admins only).
pub async fn run_job(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    name: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, actix_web::Error> {
    check_csrf(&session, &form.csrf)?;
    if user.role != Role::Admin {
        return Err(AuthError::Forbidden.into());
    }
    let name = name.into_inner();
    if !state.jobs.iter().any(|d| d.name == name) {
        return Err(ApiError::NotFound(format!("no job '{name}'")).into());
    }
    let by = user.username.clone();
    let job = name.clone();
    state
        .db
        .run(move |c| {
            tierwise_store::jobs::request_run(c, &job, "{}", &by, chrono::Utc::now().naive_utc())
        })
        .await
        .map_err(ApiError::from)?;
    tracing::info!(job = %name, by = %user.username, "run requested from the dashboard");
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", "/jobs"))
        .finish())
}

/// `?status=dead`
#[derive(Debug, Deserialize)]
pub struct OutboxQuery {
    status: Option<String>,
}

/// An outbox row without its bodies.
#[derive(Debug, Serialize)]
pub struct OutboxRow {
    id: i64,
    kind: String,
    recipient: String,
    subject: String,
    status: String,
    attempts: i32,
    last_error: Option<String>,
    created_at: String,
    sent_at: Option<String>,
}

impl From<OutboxMessage> for OutboxRow {
    fn from(m: OutboxMessage) -> Self {
        Self {
            id: m.id,
            kind: m.kind,
            recipient: m.recipient,
            subject: m.subject,
            status: m.status,
            attempts: m.attempts,
            last_error: m.last_error,
            created_at: m.created_at.format("%Y-%m-%d %H:%M").to_string(),
            sent_at: m.sent_at.map(|t| t.format("%Y-%m-%d %H:%M").to_string()),
        }
    }
}

/// The outbox page.
#[derive(Debug, Serialize)]
pub struct Outbox {
    /// Counts by status.
    pub counts: Vec<(String, i64)>,
    /// Messages, newest first.
    pub messages: Vec<OutboxRow>,
    /// The status filter.
    pub status: Option<String>,
}

async fn outbox_data(state: &AppState, status: Option<String>) -> Result<Outbox, ApiError> {
    let filter = match status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(OutboxStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!("status '{s}' is not queued, sending, sent or dead"))
        })?),
    };
    let (counts, messages) = state
        .db
        .run(move |c| {
            Ok((
                tierwise_store::notify::outbox_counts(c)?,
                tierwise_store::notify::list_outbox(c, filter, 200)?,
            ))
        })
        .await?;
    Ok(Outbox {
        counts,
        messages: messages.into_iter().map(OutboxRow::from).collect(),
        status: filter.map(|s| s.as_str().to_owned()),
    })
}

/// `GET /outbox`
pub async fn outbox(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    q: web::Query<OutboxQuery>,
) -> Result<HttpResponse, ApiError> {
    let data = outbox_data(&state, q.into_inner().status).await?;
    Ok(pages::render(
        &state,
        &session,
        Some(&user),
        "outbox.html",
        data,
    ))
}

/// `GET /api/v1/outbox`
pub async fn api_outbox(
    _user: CurrentUser,
    state: web::Data<AppState>,
    q: web::Query<OutboxQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(outbox_data(&state, q.into_inner().status).await?))
}

/// A text cell a spreadsheet will not run as a formula: cells starting with `=`, `+`, `-`, `@`,
/// tab or carriage return get a leading apostrophe (OWASP CSV injection).
pub fn spreadsheet_safe(text: &str) -> String {
    match text.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{text}"),
        _ => text.to_owned(),
    }
}

/// One exported value: text (formula-escaped), an amount in minor units, a count, a score.
enum Value {
    Text(String),
    Money(Option<i64>),
    Count(i64),
    Score(Option<f64>),
}

const EXPORT_HEADER: [&str; 17] = [
    "customer_id",
    "name",
    "contact",
    "contact_email",
    "owner",
    "orders",
    "average_order",
    "monetary",
    "clv",
    "tier",
    "segment",
    "abc_class",
    "lifecycle",
    "score",
    "p_alive",
    "clv_model",
    "notes",
];

fn export_values(r: &CustomerRow) -> [Value; 17] {
    let text = |s: Option<&str>| Value::Text(spreadsheet_safe(s.unwrap_or("")));
    let average = (r.frequency > 0).then(|| r.monetary / i64::from(r.frequency));
    [
        text(Some(&r.external_id)),
        text(Some(&r.name)),
        text(r.contact_name.as_deref()),
        text(r.contact_email.as_deref()),
        text(r.owner_email.as_deref()),
        Value::Count(i64::from(r.frequency)),
        Value::Money(average),
        Value::Money(Some(r.monetary)),
        Value::Money(r.clv),
        text(r.tier.as_deref()),
        text(r.segment.as_deref()),
        text(r.abc_class.as_deref()),
        text(Some(&r.lifecycle)),
        Value::Score(r.composite),
        Value::Score(r.p_alive),
        Value::Money(r.clv_model),
        text(r.note.as_deref()),
    ]
}

/// Where export rows go.
trait Sheet {
    fn row(&mut self, values: [Value; 17]) -> Result<(), String>;
    fn finish(self) -> Result<Vec<u8>, String>;
}

struct CsvSheet(csv::Writer<Vec<u8>>);

/// Hundredths as a decimal with two places, the sign kept for amounts under 1.00 (−50 is
/// "-0.50", not "0.50").
fn cents_text(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

impl Sheet for CsvSheet {
    fn row(&mut self, values: [Value; 17]) -> Result<(), String> {
        let cells = values.map(|v| match v {
            Value::Text(s) => s,
            Value::Money(m) => m.map(cents_text).unwrap_or_default(),
            Value::Count(n) => n.to_string(),
            Value::Score(s) => s.map(|c| format!("{c:.2}")).unwrap_or_default(),
        });
        self.0.write_record(cells).map_err(|e| e.to_string())
    }

    fn finish(self) -> Result<Vec<u8>, String> {
        self.0.into_inner().map_err(|e| e.to_string())
    }
}

struct XlsxSheet {
    workbook: rust_xlsxwriter::Workbook,
    money: rust_xlsxwriter::Format,
    next_row: u32,
}

impl XlsxSheet {
    fn new() -> Result<Self, rust_xlsxwriter::XlsxError> {
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let bold = rust_xlsxwriter::Format::new().set_bold();
        let sheet = workbook.add_worksheet_with_constant_memory()?;
        sheet.set_name("customers")?;
        for (col, name) in EXPORT_HEADER.iter().enumerate() {
            sheet.write_string_with_format(0, col as u16, *name, &bold)?;
        }
        Ok(Self {
            workbook,
            money: rust_xlsxwriter::Format::new().set_num_format("#,##0.00"),
            next_row: 1,
        })
    }
}

impl Sheet for XlsxSheet {
    fn row(&mut self, values: [Value; 17]) -> Result<(), String> {
        let row = self.next_row;
        self.next_row += 1;
        let sheet = self
            .workbook
            .worksheet_from_index(0)
            .map_err(|e| e.to_string())?;
        for (col, value) in values.into_iter().enumerate() {
            let col = col as u16;
            // write_string never makes a formula: text stays text in Excel.
            let written = match value {
                Value::Text(s) if s.is_empty() => continue,
                Value::Text(s) => sheet.write_string(row, col, s),
                Value::Money(Some(m)) => {
                    sheet.write_number_with_format(row, col, m as f64 / 100.0, &self.money)
                }
                Value::Count(n) => sheet.write_number(row, col, n as f64),
                Value::Score(Some(v)) => sheet.write_number(row, col, (v * 100.0).round() / 100.0),
                Value::Money(None) | Value::Score(None) => continue,
            };
            written.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<u8>, String> {
        self.workbook.save_to_buffer().map_err(|e| e.to_string())
    }
}

/// Writes every customer matching `query` (all pages, in the list's order) into `sheet`.
async fn export_into(
    state: &AppState,
    mut query: CustomersQuery,
    mut sheet: impl Sheet,
) -> Result<Vec<u8>, ApiError> {
    let failed = |e: String| {
        tracing::error!(error = %e, "writing an export");
        ApiError::Internal
    };
    query.after = None;
    loop {
        let page = api::customers_data(state, query.clone()).await?;
        for r in &page.rows {
            sheet.row(export_values(r)).map_err(failed)?;
        }
        match page.next_after {
            Some(after) => query.after = Some(after),
            None => break,
        }
    }
    sheet.finish().map_err(failed)
}

fn attachment(content_type: &str, file: &str, body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{file}\""),
        ))
        .body(body)
}

/// `GET /customers.csv?…`: every customer matching the list's filters, as CSV.
pub async fn export_csv(
    _user: CurrentUser,
    state: web::Data<AppState>,
    q: web::Query<CustomersQuery>,
) -> Result<HttpResponse, ApiError> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(EXPORT_HEADER)
        .map_err(|_| ApiError::Internal)?;
    let body = export_into(&state, q.into_inner(), CsvSheet(out)).await?;
    Ok(attachment("text/csv; charset=utf-8", "customers.csv", body))
}

/// `GET /customers.xlsx?…`: the same as an Excel workbook (amounts as numbers).
pub async fn export_xlsx(
    _user: CurrentUser,
    state: web::Data<AppState>,
    q: web::Query<CustomersQuery>,
) -> Result<HttpResponse, ApiError> {
    let sheet = XlsxSheet::new().map_err(|e| {
        tracing::error!(error = %e, "starting a workbook");
        ApiError::Internal
    })?;
    let body = export_into(&state, q.into_inner(), sheet).await?;
    Ok(attachment(
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "customers.xlsx",
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_defused() {
        assert_eq!(spreadsheet_safe("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(spreadsheet_safe("+1"), "'+1");
        assert_eq!(spreadsheet_safe("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(spreadsheet_safe("Acme"), "Acme");
        assert_eq!(spreadsheet_safe(""), "");
    }

    #[test]
    fn amounts_keep_their_sign_under_one() {
        assert_eq!(cents_text(-50), "-0.50");
        assert_eq!(cents_text(-5), "-0.05");
        assert_eq!(cents_text(-150), "-1.50");
        assert_eq!(cents_text(0), "0.00");
        assert_eq!(cents_text(7), "0.07");
        assert_eq!(cents_text(123_456), "1234.56");
        assert_eq!(cents_text(i64::MIN), "-92233720368547758.08");
    }
}
