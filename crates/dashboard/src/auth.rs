//! Login, sessions, roles and CSRF tokens.
//!
//! Sessions live in a signed and encrypted cookie (HttpOnly, SameSite=Strict, Secure behind TLS)
//! holding the user id and the session's CSRF token; every page and API handler takes a
//! [`CurrentUser`], so no route is reachable without a login. Passwords are argon2id hashes;
//! five failed logins lock an account for fifteen minutes.

use std::future::Future;
use std::pin::Pin;

use actix_session::{Session, SessionExt};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, http::StatusCode, web};
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rand::RngCore;
use serde::Serialize;
use tierwise_store::users::{self as store, User};

use crate::AppState;

/// Failed logins before an account is locked.
pub const MAX_FAILED_LOGINS: i32 = 5;
/// How long a lock lasts, in minutes.
pub const LOCK_MINUTES: i64 = 15;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Read everything; pin or block their own customers.
    Manager,
    /// Read only.
    Viewer,
}

impl Role {
    /// Parses a stored role.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "admin" => Some(Self::Admin),
            "manager" => Some(Self::Manager),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
    }

    /// Its key.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Manager => "manager",
            Self::Viewer => "viewer",
        }
    }
}

/// Hashes a password (argon2id, random salt) to a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Verifies against a fixed hash, so that an unknown user name costs as much as a wrong password.
pub fn verify_against_dummy(password: &str) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = DUMMY.get_or_init(|| hash_password("not a password").unwrap_or_default());
    verify_password(password, hash)
}

/// A random token, hex.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session's CSRF token, created on first use.
pub fn csrf_token(session: &Session) -> String {
    if let Ok(Some(token)) = session.get::<String>("csrf") {
        return token;
    }
    let token = random_token(32);
    let _ = session.insert("csrf", &token);
    token
}

/// Checks a submitted CSRF token against the session's.
pub fn check_csrf(session: &Session, submitted: &str) -> Result<(), AuthError> {
    match session.get::<String>("csrf") {
        Ok(Some(token)) if !submitted.is_empty() && constant_time_eq(&token, submitted) => Ok(()),
        _ => Err(AuthError::Csrf),
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Not logged in (pages: redirected to the login page).
    #[error("login required")]
    Login {
        /// Where to come back to.
        next: String,
        /// An API route (answers 401 instead of redirecting).
        api: bool,
    },
    /// Logged in, but the role does not allow it.
    #[error("not allowed for your role")]
    Forbidden,
    /// A form without the session's CSRF token.
    #[error("the form expired or did not come from this site; reload the page and try again")]
    Csrf,
    /// The database failed.
    #[error("internal error")]
    Internal,
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Login { api: true, .. } => StatusCode::UNAUTHORIZED,
            Self::Login { api: false, .. } => StatusCode::SEE_OTHER,
            Self::Forbidden | Self::Csrf => StatusCode::FORBIDDEN,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Login { next, api: false } => HttpResponse::SeeOther()
                .insert_header((
                    "Location",
                    format!("/login?next={}", url_encode(next, true)),
                ))
                .finish(),
            other => HttpResponse::build(other.status_code())
                .json(serde_json::json!({ "error": other.to_string() })),
        }
    }
}

/// Percent-encodes a query value, keeping unreserved characters (and `/` when `keep_slash`,
/// so a local path stays readable in `?next=`).
pub fn url_encode(s: &str, keep_slash: bool) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b'/' if keep_slash => "/".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Users looked up by session, kept for [`UserCache::TTL`]: every request names its user, and
/// without this each page would spend a query on it. A role or lock changed from the CLI takes
/// effect within the TTL; this process forgets a user at once when it changes them itself.
#[derive(Debug, Default)]
pub struct UserCache(
    std::sync::Mutex<std::collections::HashMap<i64, (std::time::Instant, CurrentUser)>>,
);

impl UserCache {
    /// How long a looked-up user is trusted.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(30);
    /// Entries kept at most (then the cache starts over).
    const MAX: usize = 10_000;

    fn get(&self, id: i64) -> Option<CurrentUser> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&id)
            .filter(|(at, _)| at.elapsed() < Self::TTL)
            .map(|(_, user)| user.clone())
    }

    fn put(&self, user: CurrentUser) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert(user.id, (std::time::Instant::now(), user));
    }

    /// Forgets user `id` (after changing it).
    pub fn forget(&self, id: i64) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }
}

/// The logged-in user of a request.
#[derive(Debug, Clone, Serialize)]
pub struct CurrentUser {
    /// User id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// Role.
    pub role: Role,
    /// Linked owner (managers).
    pub owner_id: Option<i64>,
    /// UI language.
    pub locale: String,
}

impl CurrentUser {
    fn from_user(u: User) -> Option<Self> {
        Some(Self {
            id: u.id,
            role: Role::parse(&u.role)?,
            username: u.username,
            owner_id: u.owner_id,
            locale: u.locale,
        })
    }

    /// Whether this user may pin, block or clear a customer owned by `owner`.
    pub fn may_override(&self, owner: Option<i64>) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Manager => self.owner_id.is_some() && self.owner_id == owner,
            Role::Viewer => false,
        }
    }
}

impl FromRequest for CurrentUser {
    type Error = AuthError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let session = req.get_session();
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let api = req.path().starts_with("/api/");
        Box::pin(async move {
            let login = || AuthError::Login {
                next: path.clone(),
                api,
            };
            let Some(state) = state else {
                return Err(AuthError::Internal);
            };
            let Ok(Some(id)) = session.get::<i64>("user_id") else {
                return Err(login());
            };
            if let Some(user) = state.users.get(id) {
                return Ok(user);
            }
            let user = state
                .db
                .run(move |c| store::get_user(c, id))
                .await
                .map_err(|_| AuthError::Internal)?;
            let user = user.and_then(CurrentUser::from_user).ok_or_else(login)?;
            state.users.put(user.clone());
            Ok(user)
        })
    }
}
