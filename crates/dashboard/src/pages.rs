//! Server-rendered pages: login, overview, customer list, customer drill-down with override
//! forms.

use actix_session::Session;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tierwise_domain::CustomerId;
use tierwise_domain::grading::{Override, OverrideKind};
use tierwise_store::users as users_store;

use crate::AppState;
use crate::api::{self, ApiError, CustomersQuery, PeriodQuery};
use crate::auth::{
    self, AuthError, CurrentUser, LOCK_MINUTES, MAX_FAILED_LOGINS, check_csrf, csrf_token,
};

#[derive(Debug, Serialize)]
struct Page<'a, T: Serialize> {
    user: Option<&'a CurrentUser>,
    csrf: String,
    data: T,
}

/// Renders a page for `user` in their language, with the session's CSRF token for its forms.
pub(crate) fn render<T: Serialize>(
    state: &AppState,
    session: &Session,
    user: Option<&CurrentUser>,
    template: &str,
    data: T,
) -> HttpResponse {
    let locale = user.map_or(state.default_locale.as_str(), |u| u.locale.as_str());
    let page = Page {
        user,
        csrf: csrf_token(session),
        data,
    };
    state.views.render(template, locale, &page)
}

/// `?next=/customers`
#[derive(Debug, Default, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
    lang: Option<String>,
}

#[derive(Debug, Serialize)]
struct LoginView {
    next: String,
    error: Option<&'static str>,
}

/// Only local paths: an open redirect would let a link send users elsewhere after logging in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

/// `GET /login`
pub async fn login_form(
    state: web::Data<AppState>,
    session: Session,
    q: web::Query<NextQuery>,
) -> HttpResponse {
    let view = LoginView {
        next: safe_next(q.next.as_deref()),
        error: None,
    };
    let locale = match q.lang.as_deref() {
        Some(lang @ ("en" | "zh-CN")) => lang,
        _ => state.default_locale.as_str(),
    };
    let page = Page {
        user: None,
        csrf: csrf_token(&session),
        data: view,
    };
    state.views.render("login.html", locale, &page)
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    csrf: String,
    next: Option<String>,
}

/// `POST /login`
pub async fn login(
    state: web::Data<AppState>,
    session: Session,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, AuthError> {
    check_csrf(&session, &form.csrf)?;
    let form = form.into_inner();
    let next = safe_next(form.next.as_deref());
    let name = form.username.trim().to_owned();
    let user = state
        .db
        .run(move |c| users_store::find_user(c, &name))
        .await
        .map_err(|_| AuthError::Internal)?;
    let now = Utc::now().naive_utc();
    let failed = |error: &'static str| {
        let page = Page {
            user: None,
            csrf: csrf_token(&session),
            data: LoginView {
                next: next.clone(),
                error: Some(error),
            },
        };
        let mut response = state
            .views
            .render("login.html", &state.default_locale, &page);
        *response.status_mut() = actix_web::http::StatusCode::UNAUTHORIZED;
        response
    };
    let Some(user) = user else {
        // Same answer and similar time as a wrong password.
        let password = form.password;
        let _ = web::block(move || auth::verify_against_dummy(&password)).await;
        return Ok(failed("wrong"));
    };
    if user.locked_until.is_some_and(|until| until > now) {
        return Ok(failed("locked"));
    }
    let (password, hash) = (form.password, user.password_hash.clone());
    let ok = web::block(move || auth::verify_password(&password, &hash))
        .await
        .map_err(|_| AuthError::Internal)?;
    let id = user.id;
    if !ok {
        let until = now + TimeDelta::minutes(LOCK_MINUTES);
        state
            .db
            .run(move |c| users_store::record_failed_login(c, id, MAX_FAILED_LOGINS, until))
            .await
            .map_err(|_| AuthError::Internal)?;
        tracing::warn!(user = %user.username, "failed login");
        return Ok(failed("wrong"));
    }
    state
        .db
        .run(move |c| users_store::record_login(c, id))
        .await
        .map_err(|_| AuthError::Internal)?;
    // A login reads the user afresh (a role changed from the CLI applies at once).
    state.users.forget(id);
    // A fresh session id at login (no fixation), with a fresh CSRF token.
    session.clear();
    session
        .insert("user_id", id)
        .map_err(|_| AuthError::Internal)?;
    csrf_token(&session);
    session.renew();
    tracing::info!(user = %user.username, "logged in");
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", next))
        .finish())
}

/// A form carrying only its CSRF token.
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub(crate) csrf: String,
}

/// The language switch in the header.
#[derive(Debug, Deserialize)]
pub struct LanguageForm {
    csrf: String,
    locale: String,
}

/// The local path of a same-site `Referer` (`http://host/customers?tier=A` → `/customers?tier=A`).
fn referer_path(req: &HttpRequest) -> Option<String> {
    let referer = req.headers().get("Referer")?.to_str().ok()?;
    let after_scheme = referer.split_once("://")?.1;
    let (host, path) = after_scheme.split_at(after_scheme.find('/')?);
    let own_host = req.connection_info().host().to_owned();
    (host == own_host).then(|| path.to_owned())
}

/// `POST /account/language`: the user's UI language, kept with the user.
pub async fn set_language(
    req: HttpRequest,
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    form: web::Form<LanguageForm>,
) -> Result<HttpResponse, actix_web::Error> {
    check_csrf(&session, &form.csrf)?;
    let form = form.into_inner();
    if !matches!(form.locale.as_str(), "zh-CN" | "en") {
        return Err(ApiError::BadRequest(format!("'{}' is not zh-CN or en", form.locale)).into());
    }
    let id = user.id;
    state
        .db
        .run(move |c| users_store::set_locale(c, id, &form.locale))
        .await
        .map_err(ApiError::from)?;
    state.users.forget(id);
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", safe_next(referer_path(&req).as_deref())))
        .finish())
}

/// `POST /logout`
pub async fn logout(
    session: Session,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, AuthError> {
    check_csrf(&session, &form.csrf)?;
    session.purge();
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", "/login"))
        .finish())
}

#[derive(Debug, Serialize)]
struct OverviewPage {
    overview: api::Overview,
    dist_chart: serde_json::Value,
    trend_chart: serde_json::Value,
}

/// Chart.js spec: customers by tier, this period beside the one before.
fn distribution_chart(o: &api::Overview) -> serde_json::Value {
    serde_json::json!({
        "type": "bar",
        "data": {
            "labels": o.tiers.iter().map(|t| &t.name).collect::<Vec<_>>(),
            "datasets": [
                {
                    "label": o.period,
                    "data": o.tiers.iter().map(|t| t.customers).collect::<Vec<_>>(),
                    "backgroundColor": o.tiers.iter().map(|t| &t.colour).collect::<Vec<_>>(),
                },
                {
                    "label": o.previous.clone().unwrap_or_else(|| "-".into()),
                    "data": o.tiers.iter().map(|t| t.customers_before).collect::<Vec<_>>(),
                    "backgroundColor": "#c8ccd2",
                },
            ],
        },
        "options": { "animation": false },
    })
}

/// Chart.js spec: tier sizes over the last periods.
fn trend_chart(o: &api::Overview) -> serde_json::Value {
    let datasets: Vec<serde_json::Value> = o
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({
                "label": t.name,
                "borderColor": t.colour,
                "backgroundColor": t.colour,
                "data": o.trend.iter().map(|(_, counts)| counts.get(i).copied().unwrap_or(0)).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({
        "type": "line",
        "data": { "labels": o.trend.iter().map(|(p, _)| p).collect::<Vec<_>>(), "datasets": datasets },
        "options": { "animation": false },
    })
}

/// `GET /`
pub async fn overview(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    q: web::Query<PeriodQuery>,
) -> Result<HttpResponse, ApiError> {
    let overview = api::overview_data(&state, q.period.as_deref()).await?;
    let data = OverviewPage {
        dist_chart: distribution_chart(&overview),
        trend_chart: trend_chart(&overview),
        overview,
    };
    Ok(render(&state, &session, Some(&user), "overview.html", data))
}

/// Owners listed in the filter's select; more make the page heavy, and a text field serves.
const OWNER_SELECT_MAX: usize = 200;

#[derive(Debug, Serialize)]
struct CustomersPage {
    #[serde(flatten)]
    list: api::CustomerList,
    /// (id, name, email) of every owner, for the owner filter (a select up to
    /// [`OWNER_SELECT_MAX`] owners; beyond, a text field for an email or id).
    owners: Vec<(i64, String, String)>,
    owner_select: bool,
    /// Tier names, best first.
    tiers: Vec<String>,
}

/// `GET /customers`
pub async fn customers(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    q: web::Query<CustomersQuery>,
) -> Result<HttpResponse, ApiError> {
    let list = api::customers_data(&state, q.into_inner()).await?;
    let owners = state.cache.owners(&state.db).await?;
    let owner_select = owners.len() <= OWNER_SELECT_MAX;
    let tiers = state.policy.tier_names();
    Ok(render(
        &state,
        &session,
        Some(&user),
        "customers.html",
        CustomersPage {
            list,
            owners: if owner_select {
                owners.as_ref().clone()
            } else {
                Vec::new()
            },
            owner_select,
            tiers,
        },
    ))
}

#[derive(Debug, Serialize)]
struct CustomerView {
    detail: api::CustomerDetail,
    tiers: Vec<String>,
}

/// `GET /customers/{id}`
pub async fn customer(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let detail = api::customer_data(&state, &user, id.into_inner()).await?;
    let tiers = state.policy.tier_names();
    Ok(render(
        &state,
        &session,
        Some(&user),
        "customer.html",
        CustomerView { detail, tiers },
    ))
}

/// The override form: pin (with a tier), block, or clear; always with a reason.
#[derive(Debug, Deserialize)]
pub struct OverrideForm {
    csrf: String,
    action: String,
    tier: Option<String>,
    reason: String,
    until: Option<String>,
}

/// `POST /customers/{id}/override`
pub async fn set_override(
    user: CurrentUser,
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<i64>,
    form: web::Form<OverrideForm>,
) -> Result<HttpResponse, actix_web::Error> {
    check_csrf(&session, &form.csrf)?;
    let id = id.into_inner();
    let owner = state
        .db
        .run(move |c| tierwise_store::dashboard::customer_owner(c, id))
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::NotFound(format!("no customer {id}")))?;
    if !user.may_override(owner) {
        return Err(AuthError::Forbidden.into());
    }
    let form = form.into_inner();
    let reason = form.reason.trim().to_owned();
    if reason.is_empty() {
        return Err(ApiError::BadRequest("a reason is required".into()).into());
    }
    let until = match form
        .until
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        Some(u) => Some(NaiveDate::parse_from_str(u, "%Y-%m-%d").map_err(|_| {
            ApiError::BadRequest(format!("until: '{u}' is not a date like 2027-03-31"))
        })?),
        None => None,
    };
    let author = user.username.clone();
    let kind = match form.action.as_str() {
        "pin" => {
            let tier = form.tier.unwrap_or_default();
            if state.policy.tier_index(&tier).is_none() {
                return Err(ApiError::BadRequest(format!("'{tier}' is not a tier")).into());
            }
            Some(OverrideKind::Pin { tier })
        }
        "block" => Some(OverrideKind::Block),
        "clear" => None,
        other => return Err(ApiError::BadRequest(format!("unknown action '{other}'")).into()),
    };
    state
        .db
        .run(move |c| match kind {
            Some(kind) => tierwise_store::grading::set_override(
                c,
                CustomerId(id),
                &Override {
                    kind,
                    reason,
                    author,
                    until,
                },
            ),
            None => tierwise_store::grading::clear_override(c, CustomerId(id), &author, &reason)
                .map(|_| ()),
        })
        .await
        .map_err(ApiError::from)?;
    Ok(HttpResponse::SeeOther()
        .insert_header(("Location", format!("/customers/{id}")))
        .finish())
}
