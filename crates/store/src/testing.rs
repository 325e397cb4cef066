//! Test fixtures: an isolated database per test on either backend, and a macro that runs the
//! same test body on both. PostgreSQL tests use `TIERWISE_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); when it is unreachable they fail, loudly,
//! rather than skip.

use std::sync::atomic::{AtomicU32, Ordering};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;

use crate::schema::{
    activities, customers, grades, grading_periods, grading_runs, invoices, orders, owners,
};
use crate::{Database, DbConnection, PooledConnection, StoreResult, with_backend};

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBackend {
    /// A fresh SQLite file in a temporary folder.
    Sqlite,
    /// A fresh PostgreSQL database, dropped afterwards.
    Postgres,
}

/// Sets one customer's stored P(alive) in a period's published run (to stage a fall in it).
pub fn set_published_p_alive(
    conn: &mut DbConnection,
    period: tierwise_domain::Period,
    external_id: &str,
    p_alive: Option<f64>,
) -> StoreResult<usize> {
    let Some(run) = crate::grading::published_run_id(conn, period)? else {
        return Ok(0);
    };
    let customer: i64 = with_backend!(conn, c => customers::table
        .filter(customers::external_id.eq(external_id))
        .select(customers::id)
        .first(c)?);
    Ok(with_backend!(conn, c => diesel::update(
        grades::table
            .filter(grades::run_id.eq(run))
            .filter(grades::customer_id.eq(customer)),
    )
    .set(grades::p_alive.eq(p_alive))
    .execute(c)?))
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TIERWISE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// Removes the published grades of `period` and every run of it, so the next run of that period
/// is a first run (benchmarks measure the monthly case, not a re-grade).
pub fn clear_period(
    conn: &mut DbConnection,
    period: tierwise_domain::Period,
) -> crate::StoreResult<()> {
    let key = period.to_string();
    let runs: Vec<i64> = with_backend!(conn, c => {
        let runs: Vec<i64> = grading_runs::table
            .filter(grading_runs::period.eq(&key))
            .select(grading_runs::id)
            .load(c)?;
        diesel::delete(grading_periods::table.filter(grading_periods::period.eq(&key))).execute(c)?;
        runs
    });
    for &run in &runs {
        crate::grading::delete_run_grades(conn, crate::grading::GradingRunId(run))?;
    }
    with_backend!(conn, c => {
        diesel::delete(grading_runs::table.filter(grading_runs::id.eq_any(&runs))).execute(c)?;
    });
    Ok(())
}

/// Empties the outbox and marks every notification event processed (benchmarks re-queue).
pub fn clear_outbox(conn: &mut DbConnection) -> StoreResult<()> {
    use crate::schema::{notification_events, outbox};
    with_backend!(conn, c => {
        diesel::delete(outbox::table).execute(c)?;
        diesel::update(notification_events::table)
            .set(notification_events::processed_at.eq(Some(chrono::Utc::now().naive_utc())))
            .execute(c)?;
    });
    Ok(())
}

/// Benchmarks: runs this executable again with `--child ARGS…` (so a measurement's peak RSS is
/// its own), passes its stderr through and returns its trimmed stdout.
pub fn bench_child(args: &[&str]) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .arg("--child")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "child {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Benchmarks: runs one SQL statement with `psql` against `url`; returns its trimmed output.
pub fn bench_psql(url: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args(["-qtA", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql failed: {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Benchmarks: the median of `v` (the upper one of an even count; NaN when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Peak resident memory of this process in KiB (Linux `VmHWM`; 0 where unavailable), for
/// benchmark reports.
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// `url` with its database name replaced by `name`.
pub fn with_database_name(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{name}{query}")
}

/// An isolated, migrated database for one test.
#[derive(Debug)]
pub struct TestDb {
    /// The pool over the test database.
    pub db: Database,
    url: String,
    backend: TestBackend,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

#[expect(
    clippy::expect_used,
    reason = "test fixture: a setup failure must fail the test"
)]
impl TestDb {
    /// A fresh database with every migration applied.
    pub fn new(backend: TestBackend) -> Self {
        let test = Self::unmigrated(backend);
        test.db
            .migrate()
            .expect("migrations apply to a fresh database");
        test
    }

    /// A fresh, empty database (for migration tests).
    pub fn unmigrated(backend: TestBackend) -> Self {
        match backend {
            TestBackend::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary folder");
                let url = dir.path().join("test.db").to_string_lossy().into_owned();
                let db = Database::open(&url, 2).expect("open SQLite test database");
                Self {
                    db,
                    url,
                    backend,
                    _dir: Some(dir),
                    pg_name: None,
                }
            }
            TestBackend::Postgres => {
                let admin = postgres_admin_url();
                let name = format!(
                    "tierwise_test_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    chrono::Utc::now().timestamp_subsec_nanos()
                );
                let mut conn = PgConnection::establish(&admin).unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL tests need a server at {admin} (TIERWISE_TEST_DATABASE_URL): {e}. \
                         Start it with `pg_ctlcluster 15 main start`."
                    )
                });
                conn.batch_execute(&format!("CREATE DATABASE {name}"))
                    .expect("create test database");
                let url = with_database_name(&admin, &name);
                let db = Database::open(&url, 4).expect("open PostgreSQL test database");
                Self {
                    db,
                    url,
                    backend,
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// A pooled connection.
    pub fn conn(&self) -> PooledConnection {
        self.db.conn().expect("test database connection")
    }

    /// The database URL (to point a spawned `tierwise` at this database).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The backend.
    pub fn backend(&self) -> TestBackend {
        self.backend
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name
            && let Ok(mut conn) = PgConnection::establish(&postgres_admin_url())
        {
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// The definitions of `table`'s indexes, by name (SQLite's `CREATE INDEX` text, PostgreSQL's
/// `indexdef`), to check that a load left them as the migrations made them.
#[expect(clippy::expect_used, reason = "test helper")]
pub fn index_definitions(conn: &mut DbConnection, table: &str) -> Vec<String> {
    use diesel::sql_types::Text;
    #[derive(QueryableByName)]
    struct Definition {
        #[diesel(sql_type = Text)]
        definition: String,
    }
    let rows: Vec<Definition> = match conn {
        DbConnection::Sqlite(c) => diesel::sql_query(
            "SELECT name || ': ' || COALESCE(sql, '(constraint)') AS definition \
             FROM sqlite_master WHERE type = 'index' AND tbl_name = ? ORDER BY name",
        )
        .bind::<Text, _>(table)
        .load(c),
        DbConnection::Postgresql(c) => diesel::sql_query(
            "SELECT indexname || ': ' || indexdef AS definition FROM pg_indexes \
             WHERE tablename = $1 ORDER BY indexname",
        )
        .bind::<Text, _>(table)
        .load(c),
    }
    .expect("index definitions");
    rows.into_iter().map(|r| r.definition).collect()
}

/// Every row of the data tables, rendered in key order: equal snapshots mean equal data.
#[expect(clippy::expect_used, reason = "test helper")]
#[expect(clippy::type_complexity, reason = "one tuple per table row, used once")]
pub fn data_snapshot(conn: &mut DbConnection) -> Vec<String> {
    let mut out = Vec::new();
    with_backend!(conn, c => {
        let o: Vec<(i64, String, String, String, Option<String>, Option<i64>)> = owners::table
            .order(owners::email)
            .select((owners::id, owners::email, owners::name, owners::locale, owners::external_id, owners::import_run_id))
            .load(c).expect("owners");
        out.extend(o.iter().map(|r| format!("owner {r:?}")));
        let cu: Vec<(i64, String, String, String, Option<String>, Option<String>, Option<String>, Option<i64>, Option<chrono::NaiveDate>, Option<i32>, String, Option<i64>)> = customers::table
            .order((customers::source, customers::external_id))
            .select((customers::id, customers::source, customers::external_id, customers::name, customers::contact_name, customers::contact_email, customers::contact_phone, customers::owner_id, customers::created_on, customers::prospect_rating, customers::attributes, customers::import_run_id))
            .load(c).expect("customers");
        out.extend(cu.iter().map(|r| format!("customer {r:?}")));
        let or: Vec<(i64, String, String, i64, chrono::NaiveDate, i64, Option<i64>, String, Option<i64>, Option<i64>)> = orders::table
            .order((orders::source, orders::external_id))
            .select((orders::id, orders::source, orders::external_id, orders::customer_id, orders::order_date, orders::amount_minor, orders::cost_minor, orders::currency, orders::quantity, orders::import_run_id))
            .load(c).expect("orders");
        out.extend(or.iter().map(|r| format!("order {r:?}")));
        let inv: Vec<(i64, String, i64, Option<String>, chrono::NaiveDate, chrono::NaiveDate, i64, String, Option<chrono::NaiveDate>, Option<i64>)> = invoices::table
            .order((invoices::source, invoices::external_id))
            .select((invoices::id, invoices::external_id, invoices::customer_id, invoices::order_external_id, invoices::issued_on, invoices::due_on, invoices::amount_minor, invoices::currency, invoices::paid_on, invoices::import_run_id))
            .load(c).expect("invoices");
        out.extend(inv.iter().map(|r| format!("invoice {r:?}")));
        let act: Vec<(i64, String, i64, Option<i64>, String, chrono::NaiveDateTime, Option<String>, Option<i64>)> = activities::table
            .order((activities::source, activities::external_id))
            .select((activities::id, activities::external_id, activities::customer_id, activities::owner_id, activities::kind, activities::occurred_at, activities::note, activities::import_run_id))
            .load(c).expect("activities");
        out.extend(act.iter().map(|r| format!("activity {r:?}")));
    });
    out
}

/// The owners and the live (not deleted) customers and orders of `source` by content alone: no
/// internal ids or import runs, owners and customers named by email and external id. Two stores
/// that imported the same records by different routes (a resumed run, an uninterrupted one)
/// have equal snapshots. [`deleted_snapshot`] lists the rest.
#[expect(clippy::expect_used, reason = "test helper")]
pub fn source_snapshot(conn: &mut DbConnection, source: &str) -> Vec<String> {
    let mut out = Vec::new();
    with_backend!(conn, c => {
        let o: Vec<(String, String, String, Option<String>)> = owners::table
            .filter(owners::source.eq(source))
            .order(owners::email)
            .select((owners::email, owners::name, owners::locale, owners::external_id))
            .load(c).expect("owners");
        out.extend(o.iter().map(|r| format!("owner {r:?}")));
        let cu: Vec<(String, String, Option<String>, Option<chrono::NaiveDate>)> = customers::table
            .left_join(owners::table.on(customers::owner_id.eq(owners::id.nullable())))
            .filter(customers::source.eq(source))
            .filter(customers::deleted_at.is_null())
            .order(customers::external_id)
            .select((customers::external_id, customers::name, owners::email.nullable(), customers::created_on))
            .load(c).expect("customers");
        out.extend(cu.iter().map(|r| format!("customer {r:?}")));
        let or: Vec<(String, String, chrono::NaiveDate, i64, Option<i64>, String)> = orders::table
            .inner_join(customers::table)
            .filter(orders::source.eq(source))
            .filter(orders::deleted_at.is_null())
            .order(orders::external_id)
            .select((orders::external_id, customers::external_id, orders::order_date, orders::amount_minor, orders::cost_minor, orders::currency))
            .load(c).expect("orders");
        out.extend(or.iter().map(|r| format!("order {r:?}")));
    });
    out
}

/// The live (not deleted) activities of `source` by content: `activity (id, customer id, owner email, kind,
/// occurred at, note)`, in id order.
#[expect(clippy::expect_used, reason = "test helper")]
#[expect(clippy::type_complexity, reason = "one tuple per activity, used once")]
pub fn activity_snapshot(conn: &mut DbConnection, source: &str) -> Vec<String> {
    with_backend!(conn, c => {
        let rows: Vec<(String, String, Option<String>, String, chrono::NaiveDateTime, Option<String>)> = activities::table
            .inner_join(customers::table)
            .left_join(owners::table.on(activities::owner_id.eq(owners::id.nullable())))
            .filter(activities::source.eq(source))
            .filter(activities::deleted_at.is_null())
            .order(activities::external_id)
            .select((activities::external_id, customers::external_id, owners::email.nullable(), activities::kind, activities::occurred_at, activities::note))
            .load(c).expect("activities");
        rows.iter().map(|r| format!("activity {r:?}")).collect()
    })
}

/// The live (not deleted) invoices of `source` by content: `invoice (id, customer id, order id,
/// issued, due, amount, currency, paid)`, in id order.
#[expect(clippy::expect_used, reason = "test helper")]
#[expect(clippy::type_complexity, reason = "one tuple per invoice, used once")]
pub fn invoice_snapshot(conn: &mut DbConnection, source: &str) -> Vec<String> {
    with_backend!(conn, c => {
        let rows: Vec<(String, String, Option<String>, chrono::NaiveDate, chrono::NaiveDate, i64, String, Option<chrono::NaiveDate>)> = invoices::table
            .inner_join(customers::table)
            .filter(invoices::source.eq(source))
            .filter(invoices::deleted_at.is_null())
            .order(invoices::external_id)
            .select((invoices::external_id, customers::external_id, invoices::order_external_id, invoices::issued_on, invoices::due_on, invoices::amount_minor, invoices::currency, invoices::paid_on))
            .load(c).expect("invoices");
        rows.iter().map(|r| format!("invoice {r:?}")).collect()
    })
}

/// The customers, orders, invoices and activities of `source` marked deleted, as
/// `customer <id>: <reason>`, `order …`, `invoice …` and `activity …`, in id order.
#[expect(clippy::expect_used, reason = "test helper")]
pub fn deleted_snapshot(conn: &mut DbConnection, source: &str) -> Vec<String> {
    let mut out = Vec::new();
    // One query per table, the same but for the table and its label.
    macro_rules! deleted_of {
        ($c:expr, $table:ident, $label:literal) => {
            $table::table
                .filter($table::source.eq(source))
                .filter($table::deleted_at.is_not_null())
                .order($table::external_id)
                .select(($table::external_id, $table::deleted_reason))
                .load::<(String, Option<String>)>($c)
                .map(|rows| {
                    rows.iter()
                        .map(|(id, why)| {
                            format!(concat!($label, " {}: {}"), id, why.as_deref().unwrap_or(""))
                        })
                        .collect::<Vec<_>>()
                })
        };
    }
    with_backend!(conn, c => {
        out.extend(deleted_of!(c, customers, "customer").expect("customers"));
        out.extend(deleted_of!(c, orders, "order").expect("orders"));
        out.extend(deleted_of!(c, invoices, "invoice").expect("invoices"));
        out.extend(deleted_of!(c, activities, "activity").expect("activities"));
    });
    out
}

/// Fails unless `store` and `source` hold the same rows, naming up to ten rows only one side
/// has (whole lists run to thousands of rows).
pub fn assert_same_rows(store: &[String], source: &[String], what: &str) {
    let missing: Vec<&String> = source
        .iter()
        .filter(|r| !store.contains(r))
        .take(10)
        .collect();
    let extra: Vec<&String> = store
        .iter()
        .filter(|r| !source.contains(r))
        .take(10)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && store.len() == source.len(),
        "{what}: {} rows in the store, {} at the source; missing {missing:#?}; extra {extra:#?}",
        store.len(),
        source.len()
    );
}

/// Defines each test twice, in modules `sqlite` and `postgres`, binding a fresh migrated
/// [`TestDb`] to the given name:
///
/// ```text
/// backend_tests! {
///     fn counts_start_at_zero(db) { assert_eq!(table_counts(&mut db.conn()).unwrap().orders, 0); }
/// }
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($( $(#[$meta:meta])* fn $name:ident($db:ident) $body:block )*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$meta])* #[test] fn $name() {
                let $db = $crate::testing::TestDb::new($crate::testing::TestBackend::Sqlite);
                $body
            } )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$meta])* #[test] fn $name() {
                let $db = $crate::testing::TestDb::new($crate::testing::TestBackend::Postgres);
                $body
            } )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_database_name() {
        assert_eq!(
            with_database_name("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database_name("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
    }
}
