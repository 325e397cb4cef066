//! The tierwise admin dashboard: server-rendered pages (minijinja, auto-escaped) and a JSON API
//! under `/api/v1` over actix-web, behind a login with roles (admin, manager, viewer), session
//! cookies and CSRF tokens. Chart.js is vendored and served from the binary.
//!
//! The CLI builds an [`AppState`], wraps [`configure`] in the session middleware from
//! [`session_middleware`] and serves it (`tierwise serve dashboard`, `tierwise serve all`).

pub mod api;
pub mod auth;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod policy;
pub mod views;

use actix_session::SessionMiddleware;
use actix_session::storage::CookieSessionStore;
use actix_web::cookie::{Key, SameSite};
use std::sync::Arc;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use tierwise_domain::Period;
use tierwise_domain::grading::Policy;
use tierwise_store::dashboard::PublishedRun;
use tierwise_store::{Database, DbConnection};

pub use auth::{Role, hash_password, verify_password};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The database.
    pub db: Database,
    /// The grading policy (tier names and colours).
    pub policy: Policy,
    /// Language of the login page (`zh-CN` or `en`); users have their own.
    pub default_locale: String,
    /// Templates and words.
    pub views: views::Views,
    /// The scheduler's job definitions (for the jobs page and "run now").
    pub jobs: Vec<tierwise_jobs::JobDefinition>,
    /// Logged-in users, briefly cached.
    pub users: auth::UserCache,
    /// Owners, the newest published run and runs' policies, cached (shared with the blocking
    /// closures that read the database).
    pub cache: Arc<Cache>,
}

/// (id, name, email) of every owner, by id.
pub type Owners = Arc<Vec<(i64, String, String)>>;

/// What pages read often and changes rarely.
#[derive(Debug, Default)]
pub struct Cache {
    /// (id, name, email) of every owner, with when it was read; owners change only by imports.
    owners: std::sync::Mutex<Option<(Instant, Owners)>>,
    /// The newest published run, with when it was read.
    newest: std::sync::Mutex<Option<(Instant, Option<PublishedRun>)>>,
    /// The policy each run graded with, by run id (a run's policy never changes).
    run_policies: std::sync::Mutex<HashMap<i64, Option<Arc<Policy>>>>,
}

/// A published run as [`Cache::published`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLookup {
    /// The run (None: nothing published, or not the period asked for).
    pub run: Option<PublishedRun>,
    /// Whether it came from the cache, so may be up to [`Cache::NEWEST_TTL`] old.
    pub cached: bool,
}

fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Cache {
    /// How long the owner list is trusted.
    const OWNERS_TTL: Duration = Duration::from_secs(60);
    /// How long the newest published run is trusted: a new period shows within this time.
    pub const NEWEST_TTL: Duration = Duration::from_secs(2);
    /// Run policies kept; more are dropped all at once (pages mostly show the newest runs).
    const RUN_POLICIES_MAX: usize = 64;

    /// Every owner as (id, name, email), by id.
    pub async fn owners(&self, db: &Database) -> Result<Owners, tierwise_store::StoreError> {
        if let Some((at, owners)) = locked(&self.owners).as_ref()
            && at.elapsed() < Self::OWNERS_TTL
        {
            return Ok(owners.clone());
        }
        let owners: Owners = Arc::new(
            db.run(tierwise_store::notify::owners)
                .await?
                .into_iter()
                .map(|o| (o.id, o.name, o.email))
                .collect(),
        );
        *locked(&self.owners) = Some((Instant::now(), owners.clone()));
        Ok(owners)
    }

    /// `period`'s published run, or the newest one when `period` is None. The newest is read at
    /// most every [`Cache::NEWEST_TTL`]; a caller that finds nothing in a cached run calls
    /// [`Cache::newest_again`], since re-grading a period replaces its run and deletes the old
    /// run's grades.
    pub fn published(
        &self,
        conn: &mut DbConnection,
        period: Option<Period>,
    ) -> Result<RunLookup, tierwise_store::StoreError> {
        if period.is_some() {
            return Ok(RunLookup {
                run: tierwise_store::dashboard::published(conn, period)?,
                cached: false,
            });
        }
        if let Some((at, run)) = *locked(&self.newest)
            && at.elapsed() < Self::NEWEST_TTL
        {
            return Ok(RunLookup { run, cached: true });
        }
        self.newest_again(conn)
    }

    /// Reads the newest published run from the database and remembers it.
    pub fn newest_again(
        &self,
        conn: &mut DbConnection,
    ) -> Result<RunLookup, tierwise_store::StoreError> {
        let run = tierwise_store::dashboard::published(conn, None)?;
        *locked(&self.newest) = Some((Instant::now(), run));
        Ok(RunLookup { run, cached: false })
    }

    /// The policy run `run_id` graded with; None when the run has none stored or it does not
    /// parse (runs from before policies were stored with them).
    pub fn run_policy(
        &self,
        conn: &mut DbConnection,
        run_id: i64,
    ) -> Result<Option<Arc<Policy>>, tierwise_store::StoreError> {
        if let Some(policy) = locked(&self.run_policies).get(&run_id) {
            return Ok(policy.clone());
        }
        let policy = tierwise_store::dashboard::run_policy_json(conn, run_id)?
            .and_then(|json| serde_json::from_str::<Policy>(&json).ok())
            .map(Arc::new);
        let mut policies = locked(&self.run_policies);
        if policies.len() >= Self::RUN_POLICIES_MAX {
            policies.clear();
        }
        policies.insert(run_id, policy.clone());
        Ok(policy)
    }
}

/// Session middleware: the session lives in a private (signed and encrypted) cookie, HttpOnly,
/// SameSite=Strict, and Secure when `secure` (behind TLS).
pub fn session_middleware(key: &[u8], secure: bool) -> SessionMiddleware<CookieSessionStore> {
    SessionMiddleware::builder(CookieSessionStore::default(), Key::derive_from(key))
        .cookie_name("tierwise_session".into())
        .cookie_http_only(true)
        .cookie_same_site(SameSite::Strict)
        .cookie_secure(secure)
        .build()
}

/// The content security policy of every dashboard response: scripts, styles, fonts and
/// requests from the dashboard itself only (the vendored chart library included); inline style
/// attributes are allowed because they carry the configured tier colours; no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; \
     base-uri 'self'; form-action 'self'";

/// Headers every dashboard response carries: the [`CONTENT_SECURITY_POLICY`], no MIME sniffing,
/// no framing by other sites (clickjacking), and no referrer beyond the dashboard's own origin.
pub fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "same-origin"))
}

/// The session key shared by every replica: generated once and kept in the database.
pub fn session_key(db: &Database) -> Result<Vec<u8>, tierwise_store::StoreError> {
    let hex = tierwise_store::users::secret(
        &mut *db.conn()?,
        "session_key",
        || auth::random_token(64),
        chrono::Utc::now().naive_utc(),
    )?;
    Ok(hex.into_bytes())
}

const CHART_JS: &[u8] = include_bytes!("../static/vendor/chart.umd.min.js");
const APP_CSS: &str = include_str!("../static/app.css");
const APP_JS: &str = include_str!("../static/app.js");

async fn asset(path: web::Path<String>) -> HttpResponse {
    let cached = ("Cache-Control", "public, max-age=86400");
    match path.as_str() {
        "vendor/chart.umd.min.js" => HttpResponse::Ok()
            .content_type("text/javascript; charset=utf-8")
            .insert_header(cached)
            .body(CHART_JS),
        "app.css" => HttpResponse::Ok()
            .content_type("text/css; charset=utf-8")
            .insert_header(cached)
            .body(APP_CSS),
        "app.js" => HttpResponse::Ok()
            .content_type("text/javascript; charset=utf-8")
            .insert_header(cached)
            .body(APP_JS),
        _ => HttpResponse::NotFound().finish(),
    }
}

/// Registers every dashboard route. Static assets and the login page are the only routes
/// reachable without a session.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/static/{path:.*}", web::get().to(asset))
        .route("/login", web::get().to(pages::login_form))
        .route("/login", web::post().to(pages::login))
        .route("/logout", web::post().to(pages::logout))
        .route("/account/language", web::post().to(pages::set_language))
        .route("/", web::get().to(pages::overview))
        .route("/customers", web::get().to(pages::customers))
        .route("/customers/{id}", web::get().to(pages::customer))
        .route(
            "/customers/{id}/override",
            web::post().to(pages::set_override),
        )
        .route("/customers.csv", web::get().to(ops::export_csv))
        .route("/customers.xlsx", web::get().to(ops::export_xlsx))
        .route("/migrations", web::get().to(ops::migrations))
        .route("/imports", web::get().to(ops::imports))
        .route("/imports/{id}", web::get().to(ops::import_rejects))
        .route("/jobs", web::get().to(ops::jobs))
        .route("/jobs/{name}/run", web::post().to(ops::run_job))
        .route("/outbox", web::get().to(ops::outbox))
        .route("/policy", web::get().to(policy::show))
        .route("/policy/what-if", web::post().to(policy::what_if))
        .route("/policy/apply", web::post().to(policy::apply))
        .route("/api/v1/policy", web::get().to(policy::api_show))
        .route("/api/v1/policy", web::post().to(policy::api_apply))
        .route(
            "/api/v1/policy/what-if",
            web::post().to(policy::api_what_if),
        )
        .route("/api/v1/migrations", web::get().to(ops::api_migrations))
        .route("/api/v1/imports", web::get().to(ops::api_imports))
        .route(
            "/api/v1/imports/{id}/rejects",
            web::get().to(ops::api_import_rejects),
        )
        .route("/api/v1/jobs", web::get().to(ops::api_jobs))
        .route("/api/v1/outbox", web::get().to(ops::api_outbox))
        .route("/api/openapi.json", web::get().to(openapi::openapi))
        .route("/api/docs", web::get().to(openapi::docs))
        .route("/api/v1/overview", web::get().to(api::overview))
        .route("/api/v1/customers", web::get().to(api::customers))
        .route("/api/v1/customers/{id}", web::get().to(api::customer));
}
