//! The SQLite path for rows that name a customer (orders, invoices, activities): multi-row
//! upserts with the customer's id resolved in Rust.
//!
//! Why not stage and merge as on PostgreSQL: SQLite runs in-process, so a prepared statement
//! costs a bind and a step, while staging paid for a multi-row `INSERT` that SQLite re-parsed on
//! every chunk, a second B-tree (the staging table) and an index seek into `customers` for every
//! row. Measured on 1,000,000 orders: staging 3.3 s + customer resolution 0.8 s + merge 4.9 s.
//! The statements are the same `INSERT … ON CONFLICT DO UPDATE … WHERE <changed>` as the merge,
//! with `VALUES (?, …), …` in place of the `SELECT`, so both backends keep one meaning.

use std::sync::LazyLock;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::{IsNull, Output, ToSql};
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
use diesel::sqlite::{Sqlite, SqliteConnection};

use super::{LoadContext, LoadOutcome};
use crate::StoreResult;
use crate::staging::{ActivityStagingRow, InvoiceStagingRow, OrderStagingRow, merge_sql};

/// Rows a multi-row statement writes at once: one statement step per block instead of one per
/// row (the per-statement work, reset, halt and statement journal, was a fifth of an order
/// upsert's cost). A chunk's remainder goes one row a statement, so each row type has exactly
/// two statements, each prepared once per connection.
pub(super) const BLOCK: usize = 64;

/// One row of a multi-row statement: the statement's SQL and the row's values.
pub(super) trait BlockRow {
    /// The row type with its borrows made `'static`: part of the statement's cache key.
    type Key: 'static;
    /// The statement for `rows` rows (1 or [`BLOCK`]), split at its placeholders.
    fn sql(rows: usize) -> &'static [String];
    /// Binds this row's values, each followed by the SQL up to the next placeholder.
    fn bind<'b>(
        &'b self,
        out: &mut AstPass<'_, 'b, Sqlite>,
        between: &mut std::slice::Iter<'static, String>,
    ) -> QueryResult<()>;
}

/// Declares a row type for multi-row statements: its fields with their SQL types, the SQL of
/// one row's values, and the statement around `VALUES …`.
macro_rules! block_row {
    (
        $(#[$doc:meta])*
        $name:ident { $($field:ident : $ty:ty => $sql_ty:ty),* $(,)? }
        values = $row:expr;
        sql = |$values:ident| $sql:expr;
    ) => {
        $(#[$doc])*
        pub(super) struct $name<'a> {
            $(pub $field: $ty,)*
        }

        impl BlockRow for $name<'_> {
            type Key = $name<'static>;

            fn sql(rows: usize) -> &'static [String] {
                fn build(rows: usize) -> Vec<String> {
                    let $values = format!("VALUES {}", vec![$row; rows].join(", "));
                    let sql: String = $sql;
                    sql.split('?').map(str::to_string).collect()
                }
                static ONE: LazyLock<Vec<String>> = LazyLock::new(|| build(1));
                static MANY: LazyLock<Vec<String>> = LazyLock::new(|| build(BLOCK));
                if rows == 1 { &ONE } else { &MANY }
            }

            fn bind<'b>(
                &'b self,
                out: &mut AstPass<'_, 'b, Sqlite>,
                between: &mut std::slice::Iter<'static, String>,
            ) -> QueryResult<()> {
                $(
                    out.push_bind_param::<$sql_ty, _>(&self.$field)?;
                    out.push_sql(between.next().map_or("", String::as_str));
                )*
                Ok(())
            }
        }
    };
}

/// `N` rows (1 or [`BLOCK`]) in one statement. Its SQL is fixed for the row type and `N`, so
/// diesel prepares it once per connection and reuses it.
struct Rows<'r, R, const N: usize>(&'r [R]);

impl<R: BlockRow, const N: usize> QueryId for Rows<'_, R, N> {
    type QueryId = (R::Key, [(); N]);
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<R: BlockRow, const N: usize> QueryFragment<Sqlite> for Rows<'_, R, N> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        if self.0.len() != N || (N != 1 && N != BLOCK) {
            return Err(diesel::result::Error::QueryBuilderError(
                format!("a statement of {N} rows was given {} rows", self.0.len()).into(),
            ));
        }
        let mut between = R::sql(N).iter();
        out.push_sql(between.next().map_or("", String::as_str));
        for row in self.0 {
            row.bind(&mut out, &mut between)?;
        }
        debug_assert!(between.next().is_none(), "more placeholders than binds");
        Ok(())
    }
}

impl<R, const N: usize> RunQueryDsl<SqliteConnection> for Rows<'_, R, N> {}

impl<const N: usize> Query for Rows<'_, NewCustomer<'_>, N> {
    type SqlType = (BigInt, Text);
}

/// Writes `rows` (with distinct keys), [`BLOCK`] rows a statement and the remainder one at a
/// time; returns how many were inserted or changed.
pub(super) fn write_rows<R: BlockRow>(conn: &mut SqliteConnection, rows: &[R]) -> QueryResult<u64> {
    let blocks = rows.chunks_exact(BLOCK);
    let rest = blocks.remainder();
    let mut written = 0u64;
    for block in blocks {
        written += Rows::<R, BLOCK>(block).execute(conn)? as u64;
    }
    for row in rest {
        written += Rows::<R, 1>(std::slice::from_ref(row)).execute(conn)? as u64;
    }
    Ok(written)
}

/// Resolves the customer of each staged row (see [`customer_ids`]), builds the value row of each
/// one whose customer is known with `value`, and writes them (see [`write_rows`]); returns how
/// many were inserted or changed.
pub(super) fn write_with_customers<'s, S: NamesCustomer, R: BlockRow>(
    conn: &mut SqliteConnection,
    ctx: &LoadContext,
    create: bool,
    staged: &'s [S],
    outcome: &mut LoadOutcome,
    value: impl Fn(&'s S, i64) -> R,
) -> StoreResult<u64> {
    let ids = customer_ids(conn, ctx, create, staged, outcome)?;
    let values: Vec<R> = staged
        .iter()
        .zip(&ids)
        .filter_map(|(row, id)| id.map(|customer_id| value(row, customer_id)))
        .collect();
    Ok(write_rows(conn, &values)?)
}

/// Creates the customers that do not exist yet, in the given order; returns the created ones'
/// ids and keys.
fn create_customers(
    conn: &mut SqliteConnection,
    rows: &[NewCustomer<'_>],
) -> QueryResult<Vec<(i64, String)>> {
    let blocks = rows.chunks_exact(BLOCK);
    let rest = blocks.remainder();
    let mut created = Vec::new();
    for block in blocks {
        created.extend(Rows::<_, BLOCK>(block).load::<(i64, String)>(conn)?);
    }
    for row in rest {
        created.extend(Rows::<_, 1>(std::slice::from_ref(row)).load::<(i64, String)>(conn)?);
    }
    Ok(created)
}

/// The id of a customer by its key. Fixed SQL with a static query id, so diesel prepares it
/// once per connection (raw `sql_query` is never cached).
struct CustomerIdByKey<'a> {
    source: &'a str,
    external_id: &'a str,
}

impl QueryId for CustomerIdByKey<'_> {
    type QueryId = CustomerIdByKey<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Sqlite> for CustomerIdByKey<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("SELECT id FROM customers WHERE source = ");
        out.push_bind_param::<Text, _>(&self.source)?;
        out.push_sql(" AND external_id = ");
        out.push_bind_param::<Text, _>(&self.external_id)?;
        Ok(())
    }
}

impl Query for CustomerIdByKey<'_> {
    type SqlType = BigInt;
}

impl RunQueryDsl<SqliteConnection> for CustomerIdByKey<'_> {}

block_row! {
    /// A customer named by an order or invoice row, created unless it exists. `OR FAIL`: a
    /// failing row leaves the statement's earlier rows in place instead of undoing them, which
    /// spares SQLite a statement journal; any failure aborts the whole load's transaction.
    NewCustomer {
        source: &'a str => Text,
        external_id: &'a str => Text,
        name: &'a str => Text,
        owner_email: Option<&'a str> => Nullable<Text>,
        import_run_id: i64 => BigInt,
    }
    values = "(?, ?, ?, (SELECT id FROM owners WHERE email = ?), '{}', ?)";
    sql = |values| format!(
        "INSERT OR FAIL INTO customers \
         (source, external_id, name, owner_id, attributes, import_run_id) \
         {values} ON CONFLICT (source, external_id) DO NOTHING RETURNING id, external_id"
    );
}

block_row! {
    /// One order to upsert.
    OrderValues {
        source: &'a str => Text,
        external_id: &'a str => Text,
        customer_id: i64 => BigInt,
        order_date: DateText => Text,
        amount_minor: i64 => BigInt,
        cost_minor: Option<i64> => Nullable<BigInt>,
        currency: &'a str => Text,
        quantity: Option<i64> => Nullable<BigInt>,
        import_run_id: i64 => BigInt,
    }
    values = "(?, ?, ?, ?, ?, ?, ?, ?, ?)";
    sql = |values| merge_sql(
        "orders",
        super::ORDER_COLUMNS,
        &values,
        "source, external_id",
        super::ORDER_UPDATES,
    );
}

block_row! {
    /// One invoice to upsert.
    InvoiceValues {
        source: &'a str => Text,
        external_id: &'a str => Text,
        customer_id: i64 => BigInt,
        order_external_id: Option<&'a str> => Nullable<Text>,
        issued_on: DateText => Text,
        due_on: DateText => Text,
        amount_minor: i64 => BigInt,
        currency: &'a str => Text,
        paid_on: Option<DateText> => Nullable<Text>,
        import_run_id: i64 => BigInt,
    }
    values = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    sql = |values| merge_sql(
        "invoices",
        super::INVOICE_COLUMNS,
        &values,
        "source, external_id",
        super::INVOICE_UPDATES,
    );
}

block_row! {
    /// One activity to upsert; its owner is looked up by email.
    ActivityValues {
        source: &'a str => Text,
        external_id: &'a str => Text,
        customer_id: i64 => BigInt,
        owner_email: Option<&'a str> => Nullable<Text>,
        kind: &'a str => Text,
        occurred_at: chrono::NaiveDateTime => Timestamp,
        note: Option<&'a str> => Nullable<Text>,
        import_run_id: i64 => BigInt,
    }
    values = "(?, ?, ?, (SELECT id FROM owners WHERE email = ?), ?, ?, ?, ?)";
    sql = |values| merge_sql(
        "activities",
        super::ACTIVITY_COLUMNS,
        &values,
        "source, external_id",
        super::ACTIVITY_UPDATES,
    );
}

/// A table whose secondary index a large load may rebuild instead of updating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeferrableTable {
    Orders,
    Invoices,
}

impl DeferrableTable {
    /// The index by customer the grading and dashboard reads use, exactly as the migration
    /// creates it (a test compares the two).
    fn index(self) -> (&'static str, &'static str) {
        match self {
            Self::Orders => (
                "orders_customer_date_idx",
                "CREATE INDEX orders_customer_date_idx ON orders (customer_id, order_date)",
            ),
            Self::Invoices => (
                "invoices_customer_due_idx",
                "CREATE INDEX invoices_customer_due_idx ON invoices (customer_id, due_on)",
            ),
        }
    }

    /// An upper bound of the rows in the table: its largest row id (one B-tree descent, where
    /// `count(*)` reads the whole table).
    fn rows_at_most(self, conn: &mut SqliteConnection) -> QueryResult<i64> {
        use crate::schema::{invoices, orders};
        use diesel::dsl::max;
        let largest: Option<i64> = match self {
            Self::Orders => orders::table.select(max(orders::id)).first(conn)?,
            Self::Invoices => invoices::table.select(max(invoices::id)).first(conn)?,
        };
        Ok(largest.unwrap_or(0))
    }
}

/// Secondary indexes a large SQLite load drops at its first big chunk and builds again at its
/// end, inside its transaction (readers keep the committed snapshot, indexes included).
///
/// Why: orders arrive in file order, so each row's insert into the index by customer lands on
/// a random page. Measured on 1,000,000 orders into an empty table: 11.2 s with the index kept
/// up to date, 5.9 s without it, plus 1.0 s to build it from the loaded rows. A build costs
/// time in proportion to the whole table, so a load defers only when the table holds at most
/// [`Self::EXISTING_ROWS_PER_CHUNK_ROW`] times the rows of its first big chunk: an initial
/// import, or one of the same order as what is there, never a small top-up of a big table.
#[derive(Debug, Default)]
pub struct DeferredIndexes {
    /// Chunks of at least this many rows may defer; 0 never defers.
    min_chunk_rows: usize,
    /// Indexes dropped and not yet rebuilt.
    dropped: std::cell::RefCell<Vec<DeferrableTable>>,
    /// Tables already judged by this load (deferred or not).
    judged: std::cell::RefCell<Vec<DeferrableTable>>,
    /// Indexes built again at the end.
    rebuilt: std::cell::Cell<usize>,
}

impl Clone for DeferredIndexes {
    /// A copy for another load: the same setting, nothing dropped yet.
    fn clone(&self) -> Self {
        Self::from_chunk_rows(self.min_chunk_rows)
    }
}

impl DeferredIndexes {
    /// How many existing rows per row of the first big chunk a table may hold and still be
    /// rebuilt rather than updated.
    pub const EXISTING_ROWS_PER_CHUNK_ROW: i64 = 4;

    /// Defers for chunks of at least `min_chunk_rows` rows (the file importer's chunks are
    /// 50,000 rows); 0 never defers.
    pub fn from_chunk_rows(min_chunk_rows: usize) -> Self {
        Self {
            min_chunk_rows,
            ..Self::default()
        }
    }

    /// Indexes this load dropped and built again at its end.
    pub fn rebuilt(&self) -> usize {
        self.rebuilt.get()
    }

    pub(super) fn defer_if_worth_it(
        &self,
        conn: &mut SqliteConnection,
        table: DeferrableTable,
        chunk_rows: usize,
    ) -> QueryResult<()> {
        if self.min_chunk_rows == 0
            || chunk_rows < self.min_chunk_rows
            || self.judged.borrow().contains(&table)
        {
            return Ok(());
        }
        self.judged.borrow_mut().push(table);
        let limit = i64::try_from(chunk_rows)
            .unwrap_or(i64::MAX)
            .saturating_mul(Self::EXISTING_ROWS_PER_CHUNK_ROW);
        if table.rows_at_most(conn)? > limit {
            return Ok(());
        }
        let (name, _) = table.index();
        conn.batch_execute(&format!("DROP INDEX IF EXISTS {name}"))?;
        self.dropped.borrow_mut().push(table);
        tracing::debug!(index = name, "index deferred to the end of the load");
        Ok(())
    }

    pub(super) fn rebuild(&self, conn: &mut SqliteConnection) -> QueryResult<()> {
        if self.dropped.borrow().is_empty() {
            return Ok(());
        }
        // SQLite's sorter runs fastest in small runs merged by a second thread: building the
        // index over 1M orders took 0.8 s so against 1.6 s with the 32 MiB page cache.
        conn.batch_execute("PRAGMA cache_size = -2000; PRAGMA threads = 2;")?;
        let built = self.build_dropped(conn);
        conn.batch_execute(&format!(
            "PRAGMA cache_size = -{}; PRAGMA threads = 0;",
            crate::db::SQLITE_CACHE_KIB
        ))?;
        built
    }

    fn build_dropped(&self, conn: &mut SqliteConnection) -> QueryResult<()> {
        // Taken one at a time, so a failure leaves the rest recorded as pending.
        loop {
            let Some(table) = self.dropped.borrow().last().copied() else {
                return Ok(());
            };
            conn.batch_execute(table.index().1)?;
            self.dropped.borrow_mut().pop();
            self.rebuilt.set(self.rebuilt.get() + 1);
        }
    }
}

/// A date as diesel writes a DATE on SQLite (`%Y-%m-%d`), without chrono's format machinery,
/// which took 2 % of a 1M-order import's samples.
#[derive(Debug)]
pub(super) struct DateText {
    ascii: [u8; 10],
    /// Years outside 0..=9999 are rare enough to go through chrono.
    other: Option<String>,
}

impl DateText {
    pub(super) fn new(date: chrono::NaiveDate) -> Self {
        use chrono::Datelike;
        let mut ascii = *b"0000-00-00";
        let Ok(year) = u32::try_from(date.year()) else {
            return Self::formatted(date);
        };
        if year > 9999 {
            return Self::formatted(date);
        }
        for (at, value, digits) in [(0, year, 4), (5, date.month(), 2), (8, date.day(), 2)] {
            let mut rest = value;
            for slot in ascii[at..at + digits].iter_mut().rev() {
                *slot = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
        }
        Self { ascii, other: None }
    }

    fn formatted(date: chrono::NaiveDate) -> Self {
        Self {
            ascii: [0; 10],
            other: Some(date.format("%Y-%m-%d").to_string()),
        }
    }

    pub(super) fn as_str(&self) -> &str {
        match &self.other {
            Some(text) => text,
            // Only ASCII digits and dashes were written.
            None => std::str::from_utf8(&self.ascii).unwrap_or_default(),
        }
    }
}

impl ToSql<Text, Sqlite> for DateText {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Sqlite>) -> diesel::serialize::Result {
        out.set_value(self.as_str());
        Ok(IsNull::No)
    }
}

/// What a staged row says about the customer it belongs to.
pub(super) trait NamesCustomer {
    fn line(&self) -> i64;
    fn customer_external_id(&self) -> &str;
    fn customer_name(&self) -> Option<&str>;
    fn owner_email(&self) -> Option<&str>;
}

macro_rules! names_customer {
    ($row:ident, name = |$r:ident| $name:expr) => {
        impl NamesCustomer for $row<'_> {
            fn line(&self) -> i64 {
                self.line
            }
            fn customer_external_id(&self) -> &str {
                self.customer_external_id
            }
            fn customer_name(&self) -> Option<&str> {
                let $r = self;
                $name
            }
            fn owner_email(&self) -> Option<&str> {
                self.owner_email
            }
        }
    };
}

names_customer!(OrderStagingRow, name = |r| r.customer_name);
names_customer!(InvoiceStagingRow, name = |r| r.customer_name);
names_customer!(ActivityStagingRow, name = |_r| None);

/// Resolves each row's customer id: from the import's memory, else by key, else by creating
/// the customer (when `create` allows; named like the PostgreSQL merge names it: the least name
/// of its rows, or its id when no row names it, and the least owner email). Rows whose customer
/// stays unknown get `None` and their lines go to [`LoadOutcome::unknown_customer_lines`].
pub(super) fn customer_ids<R: NamesCustomer>(
    conn: &mut SqliteConnection,
    ctx: &LoadContext,
    create: bool,
    rows: &[R],
    outcome: &mut LoadOutcome,
) -> StoreResult<Vec<Option<i64>>> {
    let mut ids = ctx
        .known_customers
        .ids(rows.iter().map(NamesCustomer::customer_external_id));
    // Customers this import has not met yet, in first-seen order so the same file always
    // creates them in the same order.
    let mut unseen: super::FastMap<&str, usize> = super::FastMap::default();
    let mut first_seen: Vec<(&str, Option<i64>, &str, Option<&str>)> = Vec::new();
    for (row, id) in rows.iter().zip(&ids) {
        if id.is_some() {
            continue;
        }
        let key = row.customer_external_id();
        let name = row.customer_name().unwrap_or(key);
        match unseen.get(key) {
            Some(&at) => {
                let entry = &mut first_seen[at];
                entry.2 = entry.2.min(name);
                entry.3 = match (entry.3, row.owner_email()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            None => {
                unseen.insert(key, first_seen.len());
                first_seen.push((key, None, name, row.owner_email()));
            }
        }
    }
    if first_seen.is_empty() {
        return Ok(ids);
    }
    let source = ctx.source.as_str();
    if create {
        let new: Vec<NewCustomer> = first_seen
            .iter()
            .map(|&(external_id, _, name, owner_email)| NewCustomer {
                source,
                external_id,
                name,
                owner_email,
                import_run_id: ctx.run.0,
            })
            .collect();
        for (id, key) in create_customers(conn, &new)? {
            if let Some(&at) = unseen.get(key.as_str()) {
                first_seen[at].1 = Some(id);
                outcome.customers_created += 1;
            }
        }
    }
    // Customers that existed already (created by another import, or not ours to create).
    for (key, id, ..) in first_seen.iter_mut().filter(|entry| entry.1.is_none()) {
        *id = CustomerIdByKey {
            source,
            external_id: key,
        }
        .get_result::<i64>(conn)
        .optional()?;
    }
    ctx.known_customers.remember_ids(
        first_seen
            .iter()
            .filter_map(|(key, id, ..)| id.map(|id| (*key, id))),
    );
    for (row, id) in rows.iter().zip(ids.iter_mut()) {
        if id.is_none() {
            *id = unseen
                .get(row.customer_external_id())
                .and_then(|&at| first_seen[at].1);
        }
        if id.is_none() {
            outcome
                .unknown_customer_lines
                .push(u64::try_from(row.line()).unwrap_or(0));
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::DateText;
    use chrono::NaiveDate;

    #[test]
    fn date_text_is_what_diesel_writes() {
        for (y, m, d) in [
            (2026, 1, 5),
            (1, 12, 31),
            (999, 2, 28),
            (9999, 12, 31),
            (10_000, 1, 1),
        ] {
            let date = NaiveDate::from_ymd_opt(y, m, d).expect("valid date");
            assert_eq!(DateText::new(date).as_str(), date.format("%F").to_string());
        }
        let before_year_zero = NaiveDate::from_ymd_opt(-1, 3, 1).expect("valid date");
        assert_eq!(
            DateText::new(before_year_zero).as_str(),
            before_year_zero.format("%F").to_string()
        );
    }
}
