//! The policy page: the grading policy in force with its version history, a what-if form that
//! re-grades the newest period in memory under changed weights and cut-offs, and applying such a
//! change as a new policy version (admins; the version row is the audit entry).

use actix_session::Session;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use tierwise_domain::grading::policy::TierMode;
use tierwise_domain::grading::summary::NO_TIER;
use tierwise_domain::grading::{BUILTIN_COMPONENTS, Policy, PolicyAdjustment, TierCut};
use tierwise_grading::{GradingError, WhatIf};
use tierwise_store::StoreError;
use tierwise_store::policy::PolicyVersion;

use crate::AppState;
use crate::api::ApiError;
use crate::auth::{AuthError, CurrentUser, Role, check_csrf};
use crate::pages;

/// The policy in force and the versions that led to it.
#[derive(Debug, Serialize)]
pub struct PolicyState {
    /// Hash of the policy in force.
    pub hash: String,
    /// The whole policy in force.
    pub policy: Policy,
    /// The version in force (none: the configuration as is).
    pub version: Option<PolicyVersion>,
    /// Newest versions first.
    pub history: Vec<VersionRow>,
    /// Set when the version in force no longer fits the configuration.
    pub stale: Option<String>,
}

/// A version as listed.
#[derive(Debug, Serialize)]
pub struct VersionRow {
    /// The stored version.
    #[serde(flatten)]
    pub version: PolicyVersion,
    /// What it changes, on one line.
    pub changes: String,
}

async fn policy_state(state: &AppState) -> Result<PolicyState, ApiError> {
    let configured = state.policy.clone();
    let (effective, history) = state
        .db
        .run(move |c| {
            let effective = tierwise_grading::effective_policy(c, &configured);
            let history = tierwise_store::policy::history(c, 50)?;
            Ok::<_, StoreError>((effective, history))
        })
        .await?;
    let (policy, version, stale) = match effective {
        Ok(e) => (e.policy, e.version, None),
        Err(e @ GradingError::StaleVersion { .. }) => {
            (state.policy.clone(), None, Some(e.to_string()))
        }
        Err(e) => return Err(grading_error(e)),
    };
    Ok(PolicyState {
        hash: policy.hash(),
        policy,
        version,
        history: history
            .into_iter()
            .map(|version| VersionRow {
                changes: version.adjustment.to_string(),
                version,
            })
            .collect(),
        stale,
    })
}

fn grading_error(e: GradingError) -> ApiError {
    match e {
        GradingError::Store(StoreError::Busy(why)) => ApiError::Busy(why),
        GradingError::Store(e) => e.into(),
        GradingError::NothingGraded => ApiError::NotFound(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    }
}

/// The knobs of the form, as shown (shares and ABC cuts in percent).
#[derive(Debug, Clone, Serialize)]
struct Knobs {
    weights: Vec<(String, f64)>,
    thresholds: bool,
    tiers: Vec<TierKnob>,
    abc_a: f64,
    abc_b: f64,
}

#[derive(Debug, Clone, Serialize)]
struct TierKnob {
    name: String,
    colour: String,
    share_pct: f64,
    min_score: f64,
    last: bool,
}

/// Percent with at most four decimals, so 0.1 shows as 10, not 10.000000000000002.
fn pct(fraction: f64) -> f64 {
    (fraction * 1e6).round() / 1e4
}

impl Knobs {
    fn of(p: &Policy) -> Self {
        let c = &p.components;
        let builtin = c.builtin_weights();
        let last = p.tiers.levels.len().saturating_sub(1);
        Self {
            weights: BUILTIN_COMPONENTS
                .iter()
                .zip(builtin)
                .map(|(n, w)| ((*n).to_owned(), w))
                .chain(c.custom.iter().map(|(n, x)| (n.clone(), x.weight)))
                .collect(),
            thresholds: p.tiers.mode == TierMode::Thresholds,
            tiers: p
                .tiers
                .levels
                .iter()
                .enumerate()
                .map(|(i, l)| TierKnob {
                    name: l.name.clone(),
                    colour: l.colour.clone(),
                    share_pct: pct(l.share),
                    min_score: l.min_score,
                    last: i == last,
                })
                .collect(),
            abc_a: pct(p.abc.cuts[0]),
            abc_b: pct(p.abc.cuts[1]),
        }
    }
}

/// Reads the what-if form (`weight.NAME`, `tier.NAME.share` in percent, `tier.NAME.min_score`,
/// `abc.a` / `abc.b` in percent) into an adjustment naming every posted knob.
fn adjustment_from_form(fields: &[(String, String)]) -> Result<PolicyAdjustment, ApiError> {
    let mut adjustment = PolicyAdjustment::default();
    let mut abc = [None, None];
    for (key, raw) in fields {
        let number = || {
            raw.trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| ApiError::BadRequest(format!("{key}: '{raw}' is not a number")))
        };
        if let Some(name) = key.strip_prefix("weight.") {
            adjustment.weights.insert(name.to_owned(), number()?);
        } else if let Some(rest) = key.strip_prefix("tier.") {
            let (name, field) = rest
                .rsplit_once('.')
                .ok_or_else(|| ApiError::BadRequest(format!("unknown field '{key}'")))?;
            let cut: &mut TierCut = adjustment.tiers.entry(name.to_owned()).or_default();
            match field {
                "share" => cut.share = Some(number()? / 100.0),
                "min_score" => cut.min_score = Some(number()?),
                _ => return Err(ApiError::BadRequest(format!("unknown field '{key}'"))),
            }
        } else if key == "abc.a" {
            abc[0] = Some(number()? / 100.0);
        } else if key == "abc.b" {
            abc[1] = Some(number()? / 100.0);
        }
    }
    if let [Some(a), Some(b)] = abc {
        adjustment.abc_cuts = Some([a, b]);
    }
    Ok(adjustment)
}

/// One tier of a what-if result.
#[derive(Debug, Serialize)]
pub struct WhatIfTier {
    /// Tier name ([`NO_TIER`] for customers without one).
    pub name: String,
    /// Colour.
    pub colour: String,
    /// Customers in it now (published).
    pub current: u64,
    /// Customers in it under the candidate.
    pub candidate: u64,
}

/// A what-if result, laid out for the page and the API.
#[derive(Debug, Serialize)]
pub struct WhatIfView {
    /// The period re-graded.
    pub period: String,
    /// Policy in force.
    pub current_hash: String,
    /// The candidate.
    pub candidate_hash: String,
    /// The candidate as an adjustment over the configuration (what applying would store).
    pub changes: String,
    /// Customers graded.
    pub graded: u64,
    /// Customers whose tier would change, better, worse.
    pub moved: u64,
    /// … to a better tier.
    pub up: u64,
    /// … to a worse tier.
    pub down: u64,
    /// Per tier, best first, then "none".
    pub tiers: Vec<WhatIfTier>,
    /// `cells[from][to]` over `tiers`' order: published tier → candidate tier.
    pub cells: Vec<Vec<u64>>,
}

fn what_if_view(state: &AppState, w: &WhatIf, changes: String) -> WhatIfView {
    let none = tierwise_grading::Movement::default();
    let movement = w.report.movement.as_ref().unwrap_or(&none);
    let mut tiers: Vec<(String, String)> = state
        .policy
        .tiers
        .levels
        .iter()
        .map(|l| (l.name.clone(), l.colour.clone()))
        .collect();
    tiers.push((NO_TIER.to_owned(), "#c8ccd2".to_owned()));
    let names: Vec<&str> = tiers.iter().map(|(name, _)| name.as_str()).collect();
    let cells = crate::ops::matrix_cells(&names, &movement.matrix);
    WhatIfView {
        period: w.period.to_string(),
        current_hash: w.current_hash.clone(),
        candidate_hash: w.candidate_hash.clone(),
        changes,
        graded: w.report.summary.graded,
        moved: movement.moved,
        up: movement.up,
        down: movement.down,
        tiers: tiers
            .into_iter()
            .enumerate()
            .map(|(i, (name, colour))| WhatIfTier {
                current: cells[i].iter().sum(),
                candidate: cells.iter().map(|row| row[i]).sum(),
                name,
                colour,
            })
            .collect(),
        cells,
    }
}

/// Runs a what-if for `adjustment` (over the configuration) on the blocking pool.
async fn run_what_if(
    state: &web::Data<AppState>,
    adjustment: &PolicyAdjustment,
) -> Result<WhatIfView, ApiError> {
    let candidate = adjustment
        .apply(&state.policy)
        .map_err(|e| ApiError::BadRequest(format!("grading.{e}")))?;
    let changes = PolicyAdjustment::between(&state.policy, &candidate).to_string();
    let worker = state.clone();
    let result =
        web::block(move || tierwise_grading::what_if(&worker.db, &worker.policy, &candidate))
            .await
            .map_err(|_| ApiError::Internal)?
            .map_err(grading_error)?;
    Ok(what_if_view(state, &result, changes))
}

#[derive(Debug, Serialize)]
struct PolicyPage {
    state: PolicyState,
    knobs: Knobs,
    may_edit: bool,
    result: Option<WhatIfView>,
    /// The posted form, carried into the apply form.
    posted: Vec<(String, String)>,
    error: Option<String>,
    applied: Option<i64>,
}

/// `?applied=7` after applying.
#[derive(Debug, Deserialize)]
pub struct AppliedQuery {
    applied: Option<i64>,
}

fn page(
    state: &AppState,
    session: &Session,
    user: &CurrentUser,
    data: PolicyPage,
    status: actix_web::http::StatusCode,
) -> HttpResponse {
    let mut response = pages::render(state, session, Some(user), "policy.html", data);
    *response.status_mut() = status;
    response
}

/// `GET /policy`
pub async fn show(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    q: web::Query<AppliedQuery>,
) -> Result<HttpResponse, ApiError> {
    let policy_state = policy_state(&state).await?;
    let data = PolicyPage {
        knobs: Knobs::of(&policy_state.policy),
        state: policy_state,
        may_edit: user.role == Role::Admin,
        result: None,
        posted: Vec::new(),
        error: None,
        applied: q.applied,
    };
    Ok(page(
        &state,
        &session,
        &user,
        data,
        actix_web::http::StatusCode::OK,
    ))
}

/// Checks a posted policy form: its CSRF token, and that the user is an admin. Returns the
/// knobs and the reason (trimmed; empty when absent).
fn admin_form(
    session: &Session,
    user: &CurrentUser,
    fields: Vec<(String, String)>,
) -> Result<(Vec<(String, String)>, String), actix_web::Error> {
    let token = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    check_csrf(session, token.unwrap_or(""))?;
    if user.role != Role::Admin {
        return Err(AuthError::Forbidden.into());
    }
    let reason = fields
        .iter()
        .find(|(k, _)| k == "reason")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let knobs = fields
        .into_iter()
        .filter(|(k, _)| k != "csrf" && k != "reason")
        .collect();
    Ok((knobs, reason))
}

/// `POST /policy/what-if` (admins): the policy page with the what-if result below the form, or
/// the error, with the posted values kept.
pub async fn what_if(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, actix_web::Error> {
    let (posted, _) = admin_form(&session, &user, form.into_inner())?;
    let policy_state = policy_state(&state).await?;
    let outcome = match adjustment_from_form(&posted) {
        Ok(adjustment) => run_what_if(&state, &adjustment)
            .await
            .map(|r| (adjustment, r)),
        Err(e) => Err(e),
    };
    let (knobs, result, error, status) = match outcome {
        Ok((adjustment, result)) => {
            // Show the candidate's values in the form, so the next tweak starts from them.
            let knobs = adjustment
                .apply(&state.policy)
                .map_or_else(|_| Knobs::of(&policy_state.policy), |p| Knobs::of(&p));
            (knobs, Some(result), None, actix_web::http::StatusCode::OK)
        }
        Err(ApiError::Internal) => return Err(ApiError::Internal.into()),
        Err(e) => {
            let status = actix_web::ResponseError::status_code(&e);
            (
                Knobs::of(&policy_state.policy),
                None,
                Some(e.to_string()),
                status,
            )
        }
    };
    let data = PolicyPage {
        state: policy_state,
        knobs,
        may_edit: true,
        result,
        posted,
        error,
        applied: None,
    };
    Ok(page(&state, &session, &user, data, status))
}

/// `POST /policy/apply` (admins, with a reason): stores the posted knobs as the new policy
/// version, in force from the next grading run.
pub async fn apply(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    form: web::Form<Vec<(String, String)>>,
) -> Result<HttpResponse, actix_web::Error> {
    let (posted, reason) = admin_form(&session, &user, form.into_inner())?;
    if reason.is_empty() {
        return Err(ApiError::BadRequest("a reason is required to apply a policy".into()).into());
    }
    let adjustment = adjustment_from_form(&posted)?;
    let id = apply_adjustment(&state, &user, adjustment, reason).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", format!("/policy?applied={id}")))
        .finish())
}

async fn apply_adjustment(
    state: &web::Data<AppState>,
    user: &CurrentUser,
    adjustment: PolicyAdjustment,
    reason: String,
) -> Result<i64, ApiError> {
    let worker = state.clone();
    let author = user.username.clone();
    let (id, _) = web::block(move || {
        let mut conn = worker.db.conn().map_err(GradingError::from)?;
        tierwise_grading::apply_policy(&mut conn, &worker.policy, &adjustment, &author, &reason)
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(grading_error)?;
    Ok(id)
}

/// `GET /api/v1/policy`
pub async fn api_show(
    _user: CurrentUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(policy_state(&state).await?))
}

/// `POST /api/v1/policy/what-if` (admins): body a policy adjustment
/// (`{"weights": {"value": 0.5}, "tiers": {"A": {"share": 0.05}, …}, "abc_cuts": [0.7, 0.9]}`).
pub async fn api_what_if(
    user: CurrentUser,
    state: web::Data<AppState>,
    body: web::Json<PolicyAdjustment>,
) -> Result<HttpResponse, actix_web::Error> {
    if user.role != Role::Admin {
        return Err(AuthError::Forbidden.into());
    }
    Ok(HttpResponse::Ok().json(run_what_if(&state, &body).await?))
}

/// `POST /api/v1/policy` (admins): body `{"adjustment": {…}, "reason": "…"}`; applies it.
pub async fn api_apply(
    user: CurrentUser,
    state: web::Data<AppState>,
    body: web::Json<ApplyRequest>,
) -> Result<HttpResponse, actix_web::Error> {
    if user.role != Role::Admin {
        return Err(AuthError::Forbidden.into());
    }
    let ApplyRequest { adjustment, reason } = body.into_inner();
    let reason = reason.trim().to_owned();
    if reason.is_empty() {
        return Err(ApiError::BadRequest("a reason is required to apply a policy".into()).into());
    }
    let id = apply_adjustment(&state, &user, adjustment, reason).await?;
    Ok(HttpResponse::Created().json(serde_json::json!({ "version": id })))
}

/// Body of `POST /api/v1/policy`.
#[derive(Debug, Deserialize)]
pub struct ApplyRequest {
    adjustment: PolicyAdjustment,
    reason: String,
}
