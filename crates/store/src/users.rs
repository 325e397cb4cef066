//! Dashboard users (the caller hashes passwords; this module stores the hash) and the
//! application's own secrets.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use crate::schema::{app_secrets, users};
use crate::{DbConnection, StoreResult, with_backend};

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct User {
    /// Id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// argon2 PHC string (never shown).
    #[serde(skip)]
    pub password_hash: String,
    /// admin | manager | viewer.
    pub role: String,
    /// The owner whose customers a manager manages.
    pub owner_id: Option<i64>,
    /// UI language (`zh-CN`, `en`).
    pub locale: String,
    /// Created (UTC).
    pub created_at: NaiveDateTime,
    /// Failed logins since the last success.
    pub failed_logins: i32,
    /// No login accepted before this (UTC).
    pub locked_until: Option<NaiveDateTime>,
}

/// A user to create.
#[derive(Debug, Clone, Copy)]
pub struct NewUser<'a> {
    /// Login name.
    pub username: &'a str,
    /// argon2 PHC string.
    pub password_hash: &'a str,
    /// admin | manager | viewer.
    pub role: &'a str,
    /// Linked owner.
    pub owner_id: Option<i64>,
    /// UI language.
    pub locale: &'a str,
    /// Now (UTC).
    pub now: NaiveDateTime,
}

/// Creates a user; None when the name is taken.
pub fn add_user(conn: &mut DbConnection, u: NewUser<'_>) -> StoreResult<Option<i64>> {
    Ok(with_backend!(conn, c => diesel::insert_into(users::table)
        .values((
            users::username.eq(u.username),
            users::password_hash.eq(u.password_hash),
            users::role.eq(u.role),
            users::owner_id.eq(u.owner_id),
            users::locale.eq(u.locale),
            users::created_at.eq(u.now),
        ))
        .on_conflict(users::username)
        .do_nothing()
        .returning(users::id)
        .get_result(c)
        .optional()?))
}

/// A user by login name.
pub fn find_user(conn: &mut DbConnection, username: &str) -> StoreResult<Option<User>> {
    Ok(with_backend!(conn, c => users::table
        .filter(users::username.eq(username))
        .first(c)
        .optional()?))
}

/// A user by id.
pub fn get_user(conn: &mut DbConnection, id: i64) -> StoreResult<Option<User>> {
    Ok(with_backend!(conn, c => users::table.find(id).first(c).optional()?))
}

/// Every user, by name.
pub fn list_users(conn: &mut DbConnection) -> StoreResult<Vec<User>> {
    Ok(with_backend!(conn, c => users::table.order(users::username).load(c)?))
}

/// Replaces a password hash (and clears the lock). False when there is no such user.
pub fn set_password(conn: &mut DbConnection, username: &str, hash: &str) -> StoreResult<bool> {
    let n = with_backend!(conn, c => diesel::update(users::table.filter(users::username.eq(username)))
        .set((
            users::password_hash.eq(hash),
            users::failed_logins.eq(0),
            users::locked_until.eq(None::<NaiveDateTime>),
        ))
        .execute(c)?);
    Ok(n == 1)
}

/// Sets a user's UI language; false when there is no such user.
pub fn set_locale(conn: &mut DbConnection, id: i64, locale: &str) -> StoreResult<bool> {
    let n = with_backend!(conn, c => diesel::update(users::table.find(id))
        .set(users::locale.eq(locale))
        .execute(c)?);
    Ok(n == 1)
}

/// Counts a failed login; locks the account until `lock_until` once `max_failures` is reached.
pub fn record_failed_login(
    conn: &mut DbConnection,
    id: i64,
    max_failures: i32,
    lock_until: NaiveDateTime,
) -> StoreResult<()> {
    with_backend!(conn, c => {
        diesel::update(users::table.find(id))
            .set(users::failed_logins.eq(users::failed_logins + 1))
            .execute(c)?;
        diesel::update(
            users::table
                .find(id)
                .filter(users::failed_logins.ge(max_failures)),
        )
        .set((users::locked_until.eq(Some(lock_until)), users::failed_logins.eq(0)))
        .execute(c)?;
    });
    Ok(())
}

/// Clears failed logins after a success.
pub fn record_login(conn: &mut DbConnection, id: i64) -> StoreResult<()> {
    with_backend!(conn, c => diesel::update(users::table.find(id))
        .set((users::failed_logins.eq(0), users::locked_until.eq(None::<NaiveDateTime>)))
        .execute(c)?);
    Ok(())
}

/// The secret called `name`, created with `make` the first time (the first replica to insert
/// wins; the others read its value).
pub fn secret(
    conn: &mut DbConnection,
    name: &str,
    make: impl FnOnce() -> String,
    now: NaiveDateTime,
) -> StoreResult<String> {
    let value = make();
    with_backend!(conn, c => diesel::insert_into(app_secrets::table)
        .values((
            app_secrets::name.eq(name),
            app_secrets::value.eq(&value),
            app_secrets::created_at.eq(now),
        ))
        .on_conflict(app_secrets::name)
        .do_nothing()
        .execute(c)?);
    Ok(with_backend!(conn, c => app_secrets::table
        .find(name)
        .select(app_secrets::value)
        .first(c)?))
}
