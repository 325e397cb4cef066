//! Bulk loading of imported records, keyed by `(source, external_id)` (owners by email).
//!
//! Every `load_*` function takes one chunk of validated records and upserts it with `INSERT …
//! ON CONFLICT DO UPDATE … WHERE <changed>`, so loading the same data twice writes nothing the
//! second time. On PostgreSQL the chunk is staged by binary `COPY` and merged by one `INSERT …
//! SELECT`; on SQLite owners and customers are staged by multi-row `INSERT` and merged the same
//! way, while orders, invoices and activities go row by row through prepared statements
//! ([`sqlite`] says why). The caller owns the transaction: wrap a
//! whole file in [`transaction`](crate::transaction) so a failed import leaves nothing behind.

use std::collections::BTreeSet;
use std::hash::Hash;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use tierwise_domain::{
    Activity, Customer, EmailAddress, Invoice, Locale, Order, Owner, SourceName,
};

use crate::staging::{
    ActivityStagingRow, CustomerStagingRow, InvoiceStagingRow, OnUpdate, OrderStagingRow,
    OwnerStagingRow, activities_staging, customers_staging, invoices_staging, merge_sql,
    orders_staging, owners_staging, staging_ddl,
};
use crate::{DbConnection, ImportRunId, StoreResult, with_backend};

mod sqlite;

pub use sqlite::DeferredIndexes;

/// A map for per-row lookups on the load path: SipHash cost 2 % of a 1M-order import.
type FastMap<K, V> = foldhash::HashMap<K, V>;

/// What a chunk is loaded for: which source it comes from, which run writes it, and the
/// import policy.
#[derive(Debug, Clone)]
pub struct LoadContext {
    /// The source the records belong to (their external ids are unique within it).
    pub source: SourceName,
    /// The import run writing them.
    pub run: ImportRunId,
    /// Create a customer named in an order or invoice row when it is not yet known
    /// (otherwise such rows are reported back as unknown).
    pub create_missing_customers: bool,
    /// Locale of owners created from an email alone.
    pub default_locale: Locale,
    /// Customers seen to exist by earlier chunks of this import.
    pub known_customers: KnownCustomers,
    /// Secondary indexes a large SQLite load rebuilds at the end instead of updating row by
    /// row; off unless the caller calls [`finish_load`] before committing.
    pub deferred_indexes: DeferredIndexes,
}

/// Runs a bulk load (its whole transaction) with SQLite set up for it, and sets the connection
/// back afterwards; on PostgreSQL just runs it. Both settings can change only outside a
/// transaction.
/// - Temporary files on disk rather than in memory: the sorter of an index rebuilt by
///   [`DeferredIndexes`] writes its runs to them, and in memory those took 2.4 s for 1M orders
///   against 0.8 s on disk (where the OS caches them anyway).
/// - Foreign keys not enforced: with the check, SQLite keeps an undo journal for every
///   multi-row insert of customers, and with temporary files on disk that journal cost 450,000
///   write calls in a 1M-order import. The loader writes an owner id only as the result of
///   looking the owner up in the same statement, so the constraint holds without the check.
pub fn with_bulk_load_settings<T, E: From<crate::StoreError>>(
    conn: &mut DbConnection,
    load: impl FnOnce(&mut DbConnection) -> Result<T, E>,
) -> Result<T, E> {
    let DbConnection::Sqlite(c) = conn else {
        return load(conn);
    };
    c.batch_execute("PRAGMA temp_store = FILE; PRAGMA foreign_keys = OFF")
        .map_err(|e| E::from(e.into()))?;
    let result = load(conn);
    let restored = match conn {
        DbConnection::Sqlite(c) => {
            c.batch_execute("PRAGMA temp_store = MEMORY; PRAGMA foreign_keys = ON")
        }
        DbConnection::Postgresql(_) => Ok(()),
    };
    let value = result?;
    restored.map_err(|e| E::from(e.into()))?;
    Ok(value)
}

/// Ends a load in its transaction: rebuilds the indexes it deferred. Call it before committing
/// whenever [`LoadContext::deferred_indexes`] was enabled.
pub fn finish_load(conn: &mut DbConnection, ctx: &LoadContext) -> StoreResult<()> {
    if let DbConnection::Sqlite(c) = conn {
        ctx.deferred_indexes.rebuild(c)?;
    }
    Ok(())
}

/// Most customer ids remembered by one import; past it the memory is cleared and refilled, so
/// memory stays bounded however many customers a file names.
const MAX_KNOWN_CUSTOMERS: usize = 500_000;

/// Customers (of the context's source) known to exist, remembered across the chunks of one
/// import so that later chunks look up only customers they have not seen; with their row id
/// where the loader learned it (the SQLite path does). Belongs to one import, inside its
/// transaction: a rollback discards both the customers and this memory of them.
#[derive(Debug, Clone, Default)]
pub struct KnownCustomers(std::cell::RefCell<FastMap<String, Option<i64>>>);

impl KnownCustomers {
    fn contains(&self, external_id: &str) -> bool {
        self.0.borrow().contains_key(external_id)
    }

    /// The remembered row id of each customer, in order (`None` when not remembered).
    fn ids<'a>(&self, external_ids: impl Iterator<Item = &'a str>) -> Vec<Option<i64>> {
        let known = self.0.borrow();
        external_ids
            .map(|key| known.get(key).copied().flatten())
            .collect()
    }

    fn remember<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        self.remember_entries(ids.map(|id| (id, None)));
    }

    fn remember_ids<'a>(&self, ids: impl Iterator<Item = (&'a str, i64)>) {
        self.remember_entries(ids.map(|(key, id)| (key, Some(id))));
    }

    fn remember_entries<'a>(&self, entries: impl Iterator<Item = (&'a str, Option<i64>)>) {
        let mut known = self.0.borrow_mut();
        if known.len() > MAX_KNOWN_CUSTOMERS {
            known.clear();
        }
        for (key, id) in entries {
            match known.get_mut(key) {
                Some(known_id) => *known_id = known_id.or(id),
                None => {
                    known.insert(key.to_string(), id);
                }
            }
        }
    }
}

/// One record with the line it was read from.
#[derive(Debug, Clone)]
pub struct Staged<T> {
    /// 1-based line (or spreadsheet row) number in the input.
    pub line: u64,
    /// The validated record.
    pub record: T,
}

/// The customer columns an order or invoice row may carry, used to create an unknown customer.
#[derive(Debug, Clone, Default)]
pub struct CustomerRef {
    /// Customer name as written in the row.
    pub name: Option<String>,
    /// Owner's email as written in the row.
    pub owner_email: Option<EmailAddress>,
}

/// What loading one chunk did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// Rows inserted or changed (identical rows are not written again).
    pub written: u64,
    /// Rows superseded by a later row with the same key in the same chunk.
    pub superseded: u64,
    /// Customers created from order or invoice rows.
    pub customers_created: u64,
    /// Owners created from an email alone.
    pub owners_created: u64,
    /// Lines whose customer is unknown and could not be created; nothing was written for them.
    pub unknown_customer_lines: Vec<u64>,
}

/// Rows per multi-row INSERT on SQLite: its limit is 32,766 bound parameters and a staging
/// table has at most 16 columns (diesel's table size without the 32-column feature).
const SQLITE_ROWS_PER_INSERT: usize = 32_000 / 16;

fn line(l: u64) -> i64 {
    i64::try_from(l).unwrap_or(i64::MAX)
}

/// Keeps the last row for each key, preserving input order otherwise; returns how many were
/// dropped. A key may appear once per merge statement (PostgreSQL refuses to update a row twice).
fn keep_last_per_key<T, K: Hash + Eq>(rows: &mut Vec<T>, key: impl Fn(&T) -> K) -> u64 {
    let mut last: FastMap<K, usize> =
        FastMap::with_capacity_and_hasher(rows.len(), Default::default());
    for (i, row) in rows.iter().enumerate() {
        last.insert(key(row), i);
    }
    if last.len() == rows.len() {
        return 0;
    }
    let before = rows.len();
    let mut i = 0;
    rows.retain(|row| {
        let keep = last.get(&key(row)) == Some(&i);
        i += 1;
        keep
    });
    (before - rows.len()) as u64
}

fn prepare_staging(conn: &mut DbConnection, table: &str) -> StoreResult<()> {
    match conn {
        DbConnection::Postgresql(c) => {
            c.batch_execute(&staging_ddl(true))?;
            // TRUNCATE gives PostgreSQL a fresh file; DELETE would leave dead rows that every
            // later merge in the same transaction would have to scan past. More work_mem keeps
            // the merges' hashes in memory; sort-merge joins would sort the whole customers
            // table per chunk, so they are off (both SET LOCAL: they end with the transaction).
            c.batch_execute(&format!(
                "TRUNCATE {table}; SET LOCAL work_mem = '64MB'; SET LOCAL enable_mergejoin = off"
            ))?;
        }
        DbConnection::Sqlite(c) => {
            c.batch_execute(&staging_ddl(false))?;
            c.batch_execute(&format!("DELETE FROM {table}"))?;
        }
    }
    Ok(())
}

macro_rules! stage_rows {
    ($conn:expr, $table:ident, $rows:expr) => {{
        let rows = $rows;
        let started = std::time::Instant::now();
        match $conn {
            DbConnection::Postgresql(c) => {
                diesel::copy_from($table::table)
                    .from_insertable(rows)
                    .execute(c)?;
                analyze_once(c, stringify!($table))?;
            }
            DbConnection::Sqlite(c) => {
                for chunk in rows.chunks(SQLITE_ROWS_PER_INSERT) {
                    diesel::insert_into($table::table)
                        .values(chunk)
                        .execute(c)?;
                }
            }
        }
        tracing::debug!(
            rows = rows.len(),
            duration_ms = started.elapsed().as_millis() as u64,
            table = stringify!($table),
            "staged"
        );
    }};
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// A table whose records a source can report deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletableTable {
    /// Customers: kept with their grading history, no longer graded.
    Customers,
    /// Orders: no longer counted.
    Orders,
    /// Invoices: no longer owed.
    Invoices,
    /// Contact activities: no longer count as contacts.
    Activities,
}

/// A record the source reports deleted or merged away.
#[derive(Debug, Clone)]
pub struct Deletion<'a> {
    /// Its id in the source.
    pub external_id: &'a str,
    /// When the source deleted it (UTC).
    pub at: chrono::NaiveDateTime,
    /// Why, as the source says it (`deleted in zoho`, `merged into 0015g00000XyZ12AAB`).
    pub reason: &'a str,
}

/// Marks records of `source` deleted, keeping them; returns how many were live and are now
/// marked. Ids the store does not hold (deleted before they were ever imported) and records
/// already marked are left alone, so reading a deletion twice changes nothing.
pub fn mark_deleted(
    conn: &mut DbConnection,
    source: &SourceName,
    table: DeletableTable,
    deletions: &[Deletion<'_>],
) -> StoreResult<u64> {
    use crate::schema::{activities, customers, invoices, orders};
    // The same statement for each table (diesel's types differ per table).
    macro_rules! mark {
        ($table:ident, $d:expr) => {
            with_backend!(conn, c => diesel::update(
                $table::table
                    .filter($table::source.eq(source.as_str()))
                    .filter($table::external_id.eq($d.external_id))
                    .filter($table::deleted_at.is_null()),
            )
            .set(($table::deleted_at.eq($d.at), $table::deleted_reason.eq($d.reason)))
            .execute(c)?)
        };
    }
    let mut marked = 0;
    for d in deletions {
        marked += match table {
            DeletableTable::Customers => mark!(customers, d),
            DeletableTable::Orders => mark!(orders, d),
            DeletableTable::Invoices => mark!(invoices, d),
            DeletableTable::Activities => mark!(activities, d),
        } as u64;
    }
    Ok(marked)
}

/// A table that imports fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadedTable {
    /// Owners.
    Owners,
    /// Customers.
    Customers,
    /// Orders.
    Orders,
    /// Invoices.
    Invoices,
    /// Contact activities.
    Activities,
}

impl LoadedTable {
    fn name(self) -> &'static str {
        match self {
            Self::Owners => "owners",
            Self::Customers => "customers",
            Self::Orders => "orders",
            Self::Invoices => "invoices",
            Self::Activities => "activities",
        }
    }
}

/// Rows below which a load never triggers [`analyze_after_load`].
const ANALYZE_MIN_ROWS: u64 = 10_000;

/// Refreshes PostgreSQL's statistics of `table` after a load wrote `rows_written` rows, when
/// that is at least 10,000 rows and a tenth of what the statistics knew (autovacuum's rule, but
/// at once: until autovacuum comes round, the planner misjudges the new rows, e.g. 12,774
/// orders per customer instead of 4.5 after the first 4.5M-order import, and keeps re-planning
/// the dashboard's queries). Customers are vacuumed as they are analysed: that marks their
/// pages all-visible, so the next grading run reads their ids by an index-only scan rather than
/// visiting every row until autovacuum comes round. Returns whether it analysed. SQLite: nothing.
pub fn analyze_after_load(
    conn: &mut DbConnection,
    table: LoadedTable,
    rows_written: u64,
) -> StoreResult<bool> {
    let DbConnection::Postgresql(pg) = conn else {
        return Ok(false);
    };
    if rows_written < ANALYZE_MIN_ROWS {
        return Ok(false);
    }
    // reltuples is -1 before the first ANALYZE.
    let known: CountRow = diesel::sql_query(
        "SELECT GREATEST(reltuples, 0)::bigint AS n FROM pg_class WHERE oid = $1::regclass",
    )
    .bind::<diesel::sql_types::Text, _>(table.name())
    .get_result(pg)?;
    let small_change = known.n > 0 && u64::try_from(known.n).unwrap_or(0) / 10 > rows_written;
    if small_change {
        return Ok(false);
    }
    let command = match table {
        LoadedTable::Customers => "VACUUM (ANALYZE)",
        _ => "ANALYZE",
    };
    pg.batch_execute(&format!("{command} {}", table.name()))?;
    Ok(true)
}

/// Analyses a staging table the first time this connection fills it. Temporary tables have no
/// statistics until analysed and the planner then misjudges the merges; once analysed, column
/// statistics survive TRUNCATE and row counts come from the table's size, so later chunks skip
/// the ANALYZE (it cost about half of staging a 50k-row chunk).
fn analyze_once(conn: &mut diesel::pg::PgConnection, table: &str) -> StoreResult<()> {
    let analysed: CountRow = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_stats \
         WHERE schemaname = pg_my_temp_schema()::regnamespace::text AND tablename = $1",
    )
    .bind::<diesel::sql_types::Text, _>(table)
    .get_result(conn)?;
    if analysed.n == 0 {
        conn.batch_execute(&format!("ANALYZE {table}"))?;
    }
    Ok(())
}

fn execute(conn: &mut DbConnection, sql: &str) -> StoreResult<u64> {
    let started = std::time::Instant::now();
    let n = with_backend!(conn, c => diesel::sql_query(sql).execute(c)?);
    tracing::debug!(
        rows = n,
        duration_ms = started.elapsed().as_millis() as u64,
        sql = sql.get(..60).unwrap_or(sql),
        "statement"
    );
    Ok(n as u64)
}

#[derive(QueryableByName)]
struct LineRow {
    #[diesel(sql_type = BigInt)]
    line: i64,
}

/// Creates owners for emails not yet known (named after the email's local part).
fn ensure_owners<'a>(
    conn: &mut DbConnection,
    ctx: &LoadContext,
    emails: impl IntoIterator<Item = &'a EmailAddress>,
) -> StoreResult<u64> {
    let emails: BTreeSet<&EmailAddress> = emails.into_iter().collect();
    if emails.is_empty() {
        return Ok(0);
    }
    prepare_staging(conn, "owners_staging")?;
    let rows: Vec<OwnerStagingRow> = emails
        .into_iter()
        .map(|email| OwnerStagingRow {
            line: 0,
            source: ctx.source.as_str(),
            email: email.as_str(),
            name: email.local_part(),
            locale: ctx.default_locale.as_str(),
            external_id: None,
            import_run_id: ctx.run.0,
        })
        .collect();
    stage_rows!(conn, owners_staging, &rows);
    execute(
        conn,
        "INSERT INTO owners (email, name, locale, source, external_id, import_run_id) \
         SELECT email, name, locale, source, external_id, import_run_id FROM owners_staging s \
         WHERE NOT EXISTS (SELECT 1 FROM owners o WHERE o.email = s.email) \
         ON CONFLICT (email) DO NOTHING",
    )
}

/// For staging tables of rows that name a customer: creates the unknown customers (when the
/// policy allows) or removes and reports the rows whose customer is unknown.
fn resolve_customers(
    conn: &mut DbConnection,
    create_missing_customers: bool,
    staging: &str,
    outcome: &mut LoadOutcome,
) -> StoreResult<()> {
    let unknown = "NOT s.customer_known AND NOT EXISTS (SELECT 1 FROM customers c \
         WHERE c.source = s.source AND c.external_id = s.customer_external_id)";
    if create_missing_customers {
        outcome.customers_created += execute(
            conn,
            &format!(
                // Grouping first checks each distinct customer once, not once per row.
                "INSERT INTO customers (source, external_id, name, owner_id, attributes, import_run_id) \
                 SELECT s.source, s.customer_external_id, s.name, o.id, '{{}}', s.import_run_id \
                 FROM (SELECT source, customer_external_id, \
                              MIN(COALESCE(customer_name, customer_external_id)) AS name, \
                              MIN(owner_email) AS owner_email, MIN(import_run_id) AS import_run_id \
                       FROM {staging} WHERE NOT customer_known \
                       GROUP BY source, customer_external_id) s \
                 LEFT JOIN owners o ON o.email = s.owner_email \
                 WHERE NOT EXISTS (SELECT 1 FROM customers c \
                     WHERE c.source = s.source AND c.external_id = s.customer_external_id) \
                 ON CONFLICT (source, external_id) DO NOTHING"
            ),
        )?;
        return Ok(());
    }
    let select = format!("SELECT s.line FROM {staging} s WHERE {unknown} ORDER BY s.line");
    let lines: Vec<LineRow> = with_backend!(conn, c => diesel::sql_query(&select).load(c)?);
    if !lines.is_empty() {
        execute(conn, &format!("DELETE FROM {staging} AS s WHERE {unknown}"))?;
        outcome.unknown_customer_lines.extend(
            lines
                .into_iter()
                .map(|l| u64::try_from(l.line).unwrap_or(0)),
        );
    }
    Ok(())
}

/// The steps shared by every kind whose rows name a customer: stage the chunk, create or report
/// unknown customers, remember the customers that exist, and merge into the real table.
#[expect(
    clippy::too_many_arguments,
    reason = "one call per record kind, each argument differs"
)]
fn stage_resolve_merge<'a>(
    conn: &mut DbConnection,
    ctx: &LoadContext,
    staging: &str,
    create_missing_customers: bool,
    stage: impl FnOnce(&mut DbConnection) -> StoreResult<()>,
    customers: impl Iterator<Item = (i64, &'a str)>,
    merge: &str,
    outcome: &mut LoadOutcome,
) -> StoreResult<()> {
    prepare_staging(conn, staging)?;
    stage(conn)?;
    resolve_customers(conn, create_missing_customers, staging, outcome)?;
    remember_customers(ctx, customers, outcome);
    outcome.written = execute(conn, merge)?;
    Ok(())
}

/// Remembers the customers of the staged rows that were not reported unknown: they exist now.
fn remember_customers<'a>(
    ctx: &LoadContext,
    staged: impl Iterator<Item = (i64, &'a str)>,
    outcome: &LoadOutcome,
) {
    let unknown: std::collections::HashSet<u64> =
        outcome.unknown_customer_lines.iter().copied().collect();
    ctx.known_customers.remember(
        staged
            .filter(|(line, _)| !unknown.contains(&u64::try_from(*line).unwrap_or(0)))
            .map(|(_, id)| id),
    );
}

/// Upserts owners by email: name, locale and external id follow the latest import.
pub fn load_owners(
    conn: &mut DbConnection,
    ctx: &LoadContext,
    rows: &[Staged<Owner>],
) -> StoreResult<LoadOutcome> {
    let mut staged: Vec<OwnerStagingRow> = rows
        .iter()
        .map(|s| OwnerStagingRow {
            line: line(s.line),
            source: ctx.source.as_str(),
            email: s.record.email().as_str(),
            name: s.record.name(),
            locale: s.record.locale().as_str(),
            external_id: s.record.external_id().map(|e| e.as_str()),
            import_run_id: ctx.run.0,
        })
        .collect();
    let mut outcome = LoadOutcome {
        superseded: keep_last_per_key(&mut staged, |r| r.email),
        ..LoadOutcome::default()
    };
    if staged.is_empty() {
        return Ok(outcome);
    }
    prepare_staging(conn, "owners_staging")?;
    stage_rows!(conn, owners_staging, &staged);
    outcome.written = execute(
        conn,
        &merge_sql(
            "owners",
            "email, name, locale, source, external_id, import_run_id",
            "SELECT email, name, locale, source, external_id, import_run_id FROM owners_staging WHERE true",
            "email",
            &[
                OnUpdate::Replace("name"),
                OnUpdate::Replace("locale"),
                OnUpdate::KeepIfNull("external_id"),
            ],
        ),
    )?;
    Ok(outcome)
}

/// Upserts customers; an owner named by email is created if unknown. Columns the file left
/// empty keep their stored value.
pub fn load_customers(
    conn: &mut DbConnection,
    ctx: &LoadContext,
    rows: &[Staged<Customer>],
) -> StoreResult<LoadOutcome> {
    let mut outcome = LoadOutcome {
        owners_created: ensure_owners(
            conn,
            ctx,
            rows.iter().filter_map(|s| s.record.owner_email()),
        )?,
        ..LoadOutcome::default()
    };
    let mut staged = Vec::with_capacity(rows.len());
    for s in rows {
        let c = &s.record;
        staged.push(CustomerStagingRow {
            line: line(s.line),
            source: ctx.source.as_str(),
            external_id: c.external_id().as_str(),
            name: c.name(),
            contact_name: c.contact().name.as_deref(),
            contact_email: c.contact().email.as_ref().map(|e| e.as_str()),
            contact_phone: c.contact().phone.as_deref(),
            owner_email: c.owner_email().map(|e| e.as_str()),
            created_on: c.created_on(),
            prospect_rating: c.prospect_rating().map(i32::from),
            attributes: serde_json::to_string(c.attributes())
                .map_err(|e| crate::StoreError::Corrupt(e.to_string()))?,
            import_run_id: ctx.run.0,
        });
    }
    outcome.superseded = keep_last_per_key(&mut staged, |r| r.external_id);
    if staged.is_empty() {
        return Ok(outcome);
    }
    prepare_staging(conn, "customers_staging")?;
    stage_rows!(conn, customers_staging, &staged);
    outcome.written = execute(
        conn,
        &merge_sql(
            "customers",
            "source, external_id, name, contact_name, contact_email, contact_phone, owner_id, \
             created_on, prospect_rating, attributes, import_run_id",
            "SELECT s.source, s.external_id, s.name, s.contact_name, s.contact_email, \
             s.contact_phone, o.id, s.created_on, s.prospect_rating, s.attributes, s.import_run_id \
             FROM customers_staging s LEFT JOIN owners o ON o.email = s.owner_email WHERE true",
            "source, external_id",
            &[
                OnUpdate::Replace("name"),
                OnUpdate::KeepIfNull("contact_name"),
                OnUpdate::KeepIfNull("contact_email"),
                OnUpdate::KeepIfNull("contact_phone"),
                OnUpdate::KeepIfNull("owner_id"),
                OnUpdate::KeepIfNull("created_on"),
                OnUpdate::KeepIfNull("prospect_rating"),
                OnUpdate::KeepIfEmptyJson("attributes"),
                OnUpdate::Clear("deleted_at"),
                OnUpdate::Clear("deleted_reason"),
            ],
        ),
    )?;
    Ok(outcome)
}

/// Upserts orders. Rows naming an unknown customer create it (when allowed) or are returned in
/// [`LoadOutcome::unknown_customer_lines`].
pub fn load_orders(
    conn: &mut DbConnection,
    ctx: &LoadContext,
    rows: &[Staged<(Order, CustomerRef)>],
) -> StoreResult<LoadOutcome> {
    let mut outcome = LoadOutcome::default();
    if ctx.create_missing_customers {
        outcome.owners_created = ensure_owners(
            conn,
            ctx,
            rows.iter().filter_map(|s| s.record.1.owner_email.as_ref()),
        )?;
    }
    // Only the staging path reads `customer_known`; the SQLite path asks the memory itself.
    let staging_used = matches!(conn, DbConnection::Postgresql(_));
    let mut staged = Vec::with_capacity(rows.len());
    for s in rows {
        let (order, customer) = &s.record;
        staged.push(OrderStagingRow {
            line: line(s.line),
            source: ctx.source.as_str(),
            external_id: order.external_id().as_str(),
            customer_external_id: order.customer().as_str(),
            customer_known: staging_used && ctx.known_customers.contains(order.customer().as_str()),
            customer_name: customer.name.as_deref(),
            owner_email: customer.owner_email.as_ref().map(|e| e.as_str()),
            order_date: order.order_date(),
            amount_minor: order.amount().minor,
            cost_minor: order.cost().map(|c| c.minor),
            currency: order.currency().as_str(),
            quantity: order.quantity(),
            import_run_id: ctx.run.0,
        });
    }
    outcome.superseded = keep_last_per_key(&mut staged, |r| r.external_id);
    if staged.is_empty() {
        return Ok(outcome);
    }
    if let DbConnection::Sqlite(c) = conn {
        ctx.deferred_indexes
            .defer_if_worth_it(c, sqlite::DeferrableTable::Orders, staged.len())?;
        outcome.written = sqlite::write_with_customers(
            c,
            ctx,
            ctx.create_missing_customers,
            &staged,
            &mut outcome,
            |r, customer_id| sqlite::OrderValues {
                source: r.source,
                external_id: r.external_id,
                customer_id,
                order_date: sqlite::DateText::new(r.order_date),
                amount_minor: r.amount_minor,
                cost_minor: r.cost_minor,
                currency: r.currency,
                quantity: r.quantity,
                import_run_id: r.import_run_id,
            },
        )?;
        return Ok(outcome);
    }
    let merge = merge_sql(
        "orders",
        ORDER_COLUMNS,
        "SELECT s.source, s.external_id, c.id, s.order_date, s.amount_minor, s.cost_minor, \
             s.currency, s.quantity, s.import_run_id FROM orders_staging s \
             JOIN customers c ON c.source = s.source AND c.external_id = s.customer_external_id \
             WHERE true",
        "source, external_id",
        ORDER_UPDATES,
    );
    stage_resolve_merge(
        conn,
        ctx,
        "orders_staging",
        ctx.create_missing_customers,
        |c| {
            stage_rows!(c, orders_staging, &staged);
            Ok(())
        },
        staged.iter().map(|r| (r.line, r.customer_external_id)),
        &merge,
        &mut outcome,
    )?;
    Ok(outcome)
}

/// Upserts invoices; unknown customers as for [`load_orders`]. A paid date, once known, is kept
/// when a later file leaves it empty.
pub fn load_invoices(
    conn: &mut DbConnection,
    ctx: &LoadContext,
    rows: &[Staged<(Invoice, CustomerRef)>],
) -> StoreResult<LoadOutcome> {
    let mut outcome = LoadOutcome::default();
    if ctx.create_missing_customers {
        outcome.owners_created = ensure_owners(
            conn,
            ctx,
            rows.iter().filter_map(|s| s.record.1.owner_email.as_ref()),
        )?;
    }
    // Only the staging path reads `customer_known`; the SQLite path asks the memory itself.
    let staging_used = matches!(conn, DbConnection::Postgresql(_));
    let mut staged = Vec::with_capacity(rows.len());
    for s in rows {
        let (invoice, customer) = &s.record;
        staged.push(InvoiceStagingRow {
            line: line(s.line),
            source: ctx.source.as_str(),
            external_id: invoice.external_id().as_str(),
            customer_external_id: invoice.customer().as_str(),
            customer_known: staging_used
                && ctx.known_customers.contains(invoice.customer().as_str()),
            customer_name: customer.name.as_deref(),
            owner_email: customer.owner_email.as_ref().map(|e| e.as_str()),
            order_external_id: invoice.order().map(|o| o.as_str()),
            issued_on: invoice.issued_on(),
            due_on: invoice.due_on(),
            amount_minor: invoice.amount().minor,
            currency: invoice.currency().as_str(),
            paid_on: invoice.paid_on(),
            import_run_id: ctx.run.0,
        });
    }
    outcome.superseded = keep_last_per_key(&mut staged, |r| r.external_id);
    if staged.is_empty() {
        return Ok(outcome);
    }
    if let DbConnection::Sqlite(c) = conn {
        ctx.deferred_indexes.defer_if_worth_it(
            c,
            sqlite::DeferrableTable::Invoices,
            staged.len(),
        )?;
        outcome.written = sqlite::write_with_customers(
            c,
            ctx,
            ctx.create_missing_customers,
            &staged,
            &mut outcome,
            |r, customer_id| sqlite::InvoiceValues {
                source: r.source,
                external_id: r.external_id,
                customer_id,
                order_external_id: r.order_external_id,
                issued_on: sqlite::DateText::new(r.issued_on),
                due_on: sqlite::DateText::new(r.due_on),
                amount_minor: r.amount_minor,
                currency: r.currency,
                paid_on: r.paid_on.map(sqlite::DateText::new),
                import_run_id: r.import_run_id,
            },
        )?;
        return Ok(outcome);
    }
    let merge = merge_sql(
        "invoices",
        INVOICE_COLUMNS,
        "SELECT s.source, s.external_id, c.id, s.order_external_id, s.issued_on, s.due_on, \
             s.amount_minor, s.currency, s.paid_on, s.import_run_id FROM invoices_staging s \
             JOIN customers c ON c.source = s.source AND c.external_id = s.customer_external_id \
             WHERE true",
        "source, external_id",
        INVOICE_UPDATES,
    );
    stage_resolve_merge(
        conn,
        ctx,
        "invoices_staging",
        ctx.create_missing_customers,
        |c| {
            stage_rows!(c, invoices_staging, &staged);
            Ok(())
        },
        staged.iter().map(|r| (r.line, r.customer_external_id)),
        &merge,
        &mut outcome,
    )?;
    Ok(outcome)
}

/// Upserts activities. The customer must already exist (activity files carry no customer
/// details); rows naming an unknown customer are returned as unknown.
pub fn load_activities(
    conn: &mut DbConnection,
    ctx: &LoadContext,
    rows: &[Staged<Activity>],
) -> StoreResult<LoadOutcome> {
    let mut outcome = LoadOutcome {
        owners_created: ensure_owners(
            conn,
            ctx,
            rows.iter().filter_map(|s| s.record.owner_email.as_ref()),
        )?,
        ..LoadOutcome::default()
    };
    // Only the staging path reads `customer_known`; the SQLite path asks the memory itself.
    let staging_used = matches!(conn, DbConnection::Postgresql(_));
    let mut staged: Vec<ActivityStagingRow> = rows
        .iter()
        .map(|s| ActivityStagingRow {
            line: line(s.line),
            source: ctx.source.as_str(),
            external_id: s.record.external_id.as_str(),
            customer_external_id: s.record.customer.as_str(),
            customer_known: staging_used
                && ctx.known_customers.contains(s.record.customer.as_str()),
            owner_email: s.record.owner_email.as_ref().map(|e| e.as_str()),
            kind: s.record.kind.as_str(),
            occurred_at: s.record.occurred_at.naive_utc(),
            note: s.record.note.as_deref(),
            import_run_id: ctx.run.0,
        })
        .collect();
    outcome.superseded = keep_last_per_key(&mut staged, |r| r.external_id);
    if staged.is_empty() {
        return Ok(outcome);
    }
    if let DbConnection::Sqlite(c) = conn {
        outcome.written = sqlite::write_with_customers(
            c,
            ctx,
            false,
            &staged,
            &mut outcome,
            |r, customer_id| sqlite::ActivityValues {
                source: r.source,
                external_id: r.external_id,
                customer_id,
                owner_email: r.owner_email,
                kind: r.kind,
                occurred_at: r.occurred_at,
                note: r.note,
                import_run_id: r.import_run_id,
            },
        )?;
        return Ok(outcome);
    }
    let merge = merge_sql(
        "activities",
        ACTIVITY_COLUMNS,
        "SELECT s.source, s.external_id, c.id, o.id, s.kind, s.occurred_at, s.note, \
             s.import_run_id FROM activities_staging s \
             JOIN customers c ON c.source = s.source AND c.external_id = s.customer_external_id \
             LEFT JOIN owners o ON o.email = s.owner_email WHERE true",
        "source, external_id",
        ACTIVITY_UPDATES,
    );
    stage_resolve_merge(
        conn,
        ctx,
        "activities_staging",
        false,
        |c| {
            stage_rows!(c, activities_staging, &staged);
            Ok(())
        },
        staged.iter().map(|r| (r.line, r.customer_external_id)),
        &merge,
        &mut outcome,
    )?;
    Ok(outcome)
}

/// Columns an order upsert writes, and how each updates an existing order.
const ORDER_COLUMNS: &str = "source, external_id, customer_id, order_date, amount_minor, \
     cost_minor, currency, quantity, import_run_id";
const ORDER_UPDATES: &[OnUpdate] = &[
    OnUpdate::Replace("customer_id"),
    OnUpdate::Replace("order_date"),
    OnUpdate::Replace("amount_minor"),
    OnUpdate::KeepIfNull("cost_minor"),
    OnUpdate::Replace("currency"),
    OnUpdate::KeepIfNull("quantity"),
    OnUpdate::Clear("deleted_at"),
    OnUpdate::Clear("deleted_reason"),
];

/// Columns an invoice upsert writes; a paid date, once known, is kept when a later row leaves
/// it empty.
const INVOICE_COLUMNS: &str = "source, external_id, customer_id, order_external_id, issued_on, \
     due_on, amount_minor, currency, paid_on, import_run_id";
const INVOICE_UPDATES: &[OnUpdate] = &[
    OnUpdate::Replace("customer_id"),
    OnUpdate::KeepIfNull("order_external_id"),
    OnUpdate::Replace("issued_on"),
    OnUpdate::Replace("due_on"),
    OnUpdate::Replace("amount_minor"),
    OnUpdate::Replace("currency"),
    OnUpdate::KeepIfNull("paid_on"),
    OnUpdate::Clear("deleted_at"),
    OnUpdate::Clear("deleted_reason"),
];

/// Columns an activity upsert writes.
const ACTIVITY_COLUMNS: &str =
    "source, external_id, customer_id, owner_id, kind, occurred_at, note, import_run_id";
const ACTIVITY_UPDATES: &[OnUpdate] = &[
    OnUpdate::Replace("customer_id"),
    OnUpdate::KeepIfNull("owner_id"),
    OnUpdate::Replace("kind"),
    OnUpdate::Replace("occurred_at"),
    OnUpdate::KeepIfNull("note"),
    OnUpdate::Clear("deleted_at"),
    OnUpdate::Clear("deleted_reason"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_last_per_key_drops_earlier_duplicates() {
        let mut rows = vec![("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)];
        assert_eq!(keep_last_per_key(&mut rows, |r| r.0), 2);
        assert_eq!(rows, vec![("a", 3), ("c", 4), ("b", 5)]);
    }
}
