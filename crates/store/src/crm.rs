//! Where each CRM connector stands (per source and entity): the watermark of completed runs and
//! the committed position of a run in progress; and the owner lookup connectors map records by.

use std::collections::HashMap;

use chrono::{NaiveDateTime, Utc};
use diesel::prelude::*;

use crate::schema::{crm_sync_state, owners};
use crate::{DbConnection, StoreResult, with_backend};

/// A connector's position for one entity of one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Queryable, Insertable, AsChangeset)]
#[diesel(table_name = crm_sync_state)]
pub struct SyncState {
    /// Source (`pipedrive`, `hubspot`, ...).
    pub source: String,
    /// Entity (`owners`, `customers`, `orders`, ...).
    pub entity: String,
    /// Newest change a completed run imported (UTC); None before the first completed run.
    pub watermark: Option<NaiveDateTime>,
    /// A run is in progress (or died): resume it rather than start over.
    pub in_progress: bool,
    /// The run's lower bound (None: everything).
    pub run_since: Option<NaiveDateTime>,
    /// When the run started: the watermark never passes it.
    pub run_started: Option<NaiveDateTime>,
    /// The run's next page, as the API's cursor (None: the first page).
    pub run_cursor: Option<String>,
    /// Newest change the run has seen so far.
    pub run_max_seen: Option<NaiveDateTime>,
    /// Pages the run has committed.
    pub run_pages: i64,
    /// When this row last changed.
    pub updated_at: NaiveDateTime,
}

/// `source`/`entity`'s state; a fresh one (nothing imported yet) when it has none.
pub fn sync_state(conn: &mut DbConnection, source: &str, entity: &str) -> StoreResult<SyncState> {
    let found: Option<SyncState> = with_backend!(conn, c => crm_sync_state::table
        .find((source, entity))
        .first(c)
        .optional()?);
    Ok(found.unwrap_or_else(|| SyncState {
        source: source.to_owned(),
        entity: entity.to_owned(),
        updated_at: Utc::now().naive_utc(),
        ..SyncState::default()
    }))
}

/// Stores `state` (call it inside the transaction that writes the page it describes).
pub fn save_sync_state(conn: &mut DbConnection, state: &SyncState) -> StoreResult<()> {
    let mut state = state.clone();
    state.updated_at = Utc::now().naive_utc();
    with_backend!(conn, c => diesel::insert_into(crm_sync_state::table)
        .values(&state)
        .on_conflict((crm_sync_state::source, crm_sync_state::entity))
        .do_update()
        .set(&state)
        .execute(c)?);
    Ok(())
}

/// Every stored state, by source and entity.
pub fn sync_states(conn: &mut DbConnection) -> StoreResult<Vec<SyncState>> {
    Ok(with_backend!(conn, c => crm_sync_state::table
        .order((crm_sync_state::source, crm_sync_state::entity))
        .load(c)?))
}

/// Owners' emails by their id in `source` (records name their owner by that id).
pub fn owner_emails(conn: &mut DbConnection, source: &str) -> StoreResult<HashMap<String, String>> {
    let rows: Vec<(Option<String>, String)> = with_backend!(conn, c => owners::table
        .filter(owners::source.eq(source))
        .filter(owners::external_id.is_not_null())
        .select((owners::external_id, owners::email))
        .load(c)?);
    Ok(rows
        .into_iter()
        .filter_map(|(id, email)| Some((id?, email)))
        .collect())
}
