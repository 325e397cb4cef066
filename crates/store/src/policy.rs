//! Policy versions: adjustments applied over the configured grading policy from the dashboard,
//! each row also the audit entry of who applied it, when and why. The newest row is in force.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;
use tierwise_domain::grading::PolicyAdjustment;

use crate::schema::policy_versions;
use crate::{DbConnection, StoreError, StoreResult, with_backend};

/// A stored policy version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyVersion {
    /// Version number (increasing).
    pub id: i64,
    /// When it was applied (UTC).
    pub created_at: NaiveDateTime,
    /// Who applied it.
    pub author: String,
    /// Why.
    pub reason: String,
    /// The knobs it sets over the configured policy.
    pub adjustment: PolicyAdjustment,
    /// Effective policy hash before it was applied.
    pub previous_hash: String,
    /// Effective policy hash it produced.
    pub policy_hash: String,
}

/// A version to store.
#[derive(Debug, Clone, Copy)]
pub struct NewPolicyVersion<'a> {
    /// Who applies it.
    pub author: &'a str,
    /// Why (required by the dashboard).
    pub reason: &'a str,
    /// The knobs.
    pub adjustment: &'a PolicyAdjustment,
    /// Effective policy hash before.
    pub previous_hash: &'a str,
    /// Effective policy hash after.
    pub policy_hash: &'a str,
    /// Now (UTC).
    pub now: NaiveDateTime,
}

type Row = (i64, NaiveDateTime, String, String, String, String, String);

fn from_row(r: Row) -> StoreResult<PolicyVersion> {
    let adjustment = serde_json::from_str(&r.4).map_err(|e| {
        StoreError::Corrupt(format!("policy_versions row {}: adjustment: {e}", r.0))
    })?;
    Ok(PolicyVersion {
        id: r.0,
        created_at: r.1,
        author: r.2,
        reason: r.3,
        adjustment,
        previous_hash: r.5,
        policy_hash: r.6,
    })
}

/// Stores a new version (it is in force from now on); returns its id.
pub fn add_version(conn: &mut DbConnection, v: NewPolicyVersion<'_>) -> StoreResult<i64> {
    let json = serde_json::to_string(v.adjustment)
        .map_err(|e| StoreError::Corrupt(format!("policy adjustment: {e}")))?;
    Ok(
        with_backend!(conn, c => diesel::insert_into(policy_versions::table)
        .values((
            policy_versions::created_at.eq(v.now),
            policy_versions::author.eq(v.author),
            policy_versions::reason.eq(v.reason),
            policy_versions::adjustment.eq(&json),
            policy_versions::previous_hash.eq(v.previous_hash),
            policy_versions::policy_hash.eq(v.policy_hash),
        ))
        .returning(policy_versions::id)
        .get_result(c)?),
    )
}

/// The version in force (the newest), if any was ever applied.
pub fn current_version(conn: &mut DbConnection) -> StoreResult<Option<PolicyVersion>> {
    let row: Option<Row> = with_backend!(conn, c => policy_versions::table
        .order(policy_versions::id.desc())
        .first(c)
        .optional()?);
    row.map(from_row).transpose()
}

/// The newest `limit` versions, newest first.
pub fn history(conn: &mut DbConnection, limit: i64) -> StoreResult<Vec<PolicyVersion>> {
    let rows: Vec<Row> = with_backend!(conn, c => policy_versions::table
        .order(policy_versions::id.desc())
        .limit(limit)
        .load(c)?);
    rows.into_iter().map(from_row).collect()
}
