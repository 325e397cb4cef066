//! Store behaviour on both backends: migrations, idempotent bulk upserts, unknown customers,
//! import runs and rejects.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test"
)]

use chrono::NaiveDate;
use tierwise_domain::{
    Activity, ActivityKind, Contact, Currency, Customer, EmailAddress, ExternalId, Invoice, Locale,
    Money, Order, Owner, SourceName,
};
use tierwise_store::load::{
    CustomerRef, LoadContext, Staged, load_activities, load_customers, load_invoices, load_orders,
    load_owners,
};
use tierwise_store::queries::{find_customer, orders_of_customer, table_counts};
use tierwise_store::runs::{
    Reject, RunStatus, RunTotals, find_import_run, finish_import_run, insert_rejects,
    recent_import_runs, rejects_of_run, start_import_run,
};
use tierwise_store::testing::data_snapshot;
use tierwise_store::{
    DbConnection, backend_tests, migration_status, revert_all_migrations, run_pending_migrations,
};

fn id(s: &str) -> ExternalId {
    ExternalId::parse("id", s).unwrap()
}
fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}
fn cny(minor: i64) -> Money {
    Money::from_minor(minor, Currency::parse("CNY").unwrap())
}
fn email(s: &str) -> EmailAddress {
    EmailAddress::parse(s).unwrap()
}

fn ctx(conn: &mut DbConnection, create_missing: bool) -> LoadContext {
    let source = SourceName::parse("file").unwrap();
    let run = start_import_run(conn, &source, "test", "memory").unwrap();
    LoadContext {
        source,
        run,
        create_missing_customers: create_missing,
        default_locale: Locale::ZhCn,
        known_customers: Default::default(),
        deferred_indexes: Default::default(),
    }
}

fn order(ext: &str, customer: &str, day: &str, minor: i64) -> Staged<(Order, CustomerRef)> {
    Staged {
        line: 2,
        record: (
            Order::new(
                id(ext),
                id(customer),
                date(day),
                cny(minor),
                Some(cny(minor / 2)),
                Some(1),
            )
            .unwrap(),
            CustomerRef::default(),
        ),
    }
}

fn sample_customers() -> Vec<Staged<Customer>> {
    let c1 = Customer::new(id("C1"), "Acme 有限公司")
        .unwrap()
        .with_contact(Contact {
            name: Some("王芳".into()),
            email: Some(email("wf@acme.cn")),
            phone: Some("+86 10 1234".into()),
        })
        .with_owner(Some(email("li@example.com")))
        .with_created_on(Some(date("2024-03-01")))
        .with_prospect_rating(Some(4))
        .unwrap()
        .with_attribute("nps", 42.0)
        .unwrap();
    let c2 = Customer::new(id("C2"), "Beta").unwrap();
    vec![
        Staged {
            line: 2,
            record: c1,
        },
        Staged {
            line: 3,
            record: c2,
        },
    ]
}

backend_tests! {
    fn facts_come_in_tie_break_order_source_then_external_id_as_bytes(db) {
        use tierwise_store::grading::{FactsRequest, load_facts};
        let mut conn = db.conn();
        // Byte order differs from any natural or locale order: capitals before small letters,
        // "a10" before "a9", non-ASCII last, and source "file-b" before "file_a" (a locale
        // ignoring punctuation puts "file_a" first).
        let ids = ["é", "b", "a9", "Z", "a10", "B"];
        for source in ["file_a", "file-b"] {
            let mut c = ctx(&mut conn, true);
            c.source = SourceName::parse(source).unwrap();
            let customers: Vec<Staged<Customer>> = ids
                .iter()
                .map(|ext| Staged { line: 2, record: Customer::new(id(ext), &format!("{source} {ext}")).unwrap() })
                .collect();
            assert_eq!(load_customers(&mut conn, &c, &customers).unwrap().written, 6);
        }
        let facts = load_facts(
            &db.db,
            &mut conn,
            &FactsRequest {
                period: tierwise_domain::Period::parse("2026-10").unwrap(),
                lookback_months: 24,
                grace_days: 0,
                attributes: &[],
                tiers: &[],
                segments: &[],
            },
        )
        .unwrap();
        let order: Vec<i64> = facts.customers.iter().map(|f| f.customer.0).collect();
        let expected: Vec<i64> = ["file-b", "file_a"]
            .iter()
            .flat_map(|source| ["B", "Z", "a10", "a9", "b", "é"].map(|ext| (*source, ext)))
            .map(|(source, ext)| find_customer(&mut conn, source, ext).unwrap().unwrap().id.0)
            .collect();
        assert_eq!(order, expected);
    }

    fn grades_written_in_several_commits_are_all_kept_and_a_failed_run_leaves_none(db) {
        use tierwise_store::grading::{count_grade_rows, fail_run, start_run, write_run_grades};
        let mut conn = db.conn();
        let period = tierwise_domain::Period::parse("2026-10").unwrap();
        // 160,000 rows: SQLite commits every 100,000 (two commits).
        let run = start_run(&mut conn, period, "h", "{}").unwrap();
        let batches = (0..4).map(|b| grade_rows(run, b * 40_000, 40_000));
        write_run_grades(&db.db, &mut conn, run, batches).unwrap();
        assert_eq!(count_grade_rows(&mut conn).unwrap(), 160_000);

        // A run whose second commit fails (a repeated customer): SQLite keeps the first
        // commit's rows until the failure is recorded, PostgreSQL none at all.
        let failing = start_run(&mut conn, period, "h", "{}").unwrap();
        let batches = [
            grade_rows(failing, 0, 100_000),
            grade_rows(failing, 100_000, 10),
            grade_rows(failing, 100_009, 1),
        ]
        .into_iter();
        let error = write_run_grades(&db.db, &mut conn, failing, batches).unwrap_err();
        assert!(error.to_string().to_lowercase().contains("unique") || error.to_string().contains("duplicate"), "{error}");
        let kept = count_grade_rows(&mut conn).unwrap() - 160_000;
        match db.backend() {
            tierwise_store::testing::TestBackend::Sqlite => assert_eq!(kept, 100_000),
            tierwise_store::testing::TestBackend::Postgres => assert_eq!(kept, 0),
        }
        fail_run(&mut conn, failing, &error.to_string()).unwrap();
        assert_eq!(count_grade_rows(&mut conn).unwrap(), 160_000);
    }

    fn migrations_go_up_down_and_redo(db) {
        let mut conn = db.conn();
        let status = migration_status(&mut conn).unwrap();
        assert!(!status.is_empty() && status.iter().all(|(_, applied)| *applied), "{status:?}");
        let reverted = revert_all_migrations(&mut conn).unwrap();
        assert_eq!(reverted.len(), status.len());
        assert!(migration_status(&mut conn).unwrap().iter().all(|(_, applied)| !applied));
        assert!(table_counts(&mut conn).is_err(), "tables must be gone after reverting");
        let applied = run_pending_migrations(&mut conn).unwrap();
        assert_eq!(applied.len(), status.len());
        assert_eq!(table_counts(&mut conn).unwrap().customers, 0);
        // A second run has nothing to do.
        assert!(run_pending_migrations(&mut conn).unwrap().is_empty());
    }

    fn loading_the_same_data_twice_changes_nothing(db) {
        let mut conn = db.conn();
        let c = ctx(&mut conn, true);
        let owners = vec![Staged { line: 2, record: Owner::new(email("li@example.com"), "李雷", Locale::ZhCn, Some(id("U1"))).unwrap() }];
        assert_eq!(load_owners(&mut conn, &c, &owners).unwrap().written, 1);
        assert_eq!(load_customers(&mut conn, &c, &sample_customers()).unwrap().written, 2);
        let orders = vec![order("O1", "C1", "2026-01-05", 10_000), order("O2", "C1", "2026-02-05", 20_000), order("O3", "C2", "2026-03-05", 5_000)];
        assert_eq!(load_orders(&mut conn, &c, &orders).unwrap().written, 3);
        let before = data_snapshot(&mut conn);

        let again = ctx(&mut conn, true);
        assert_eq!(load_owners(&mut conn, &again, &owners).unwrap().written, 0);
        assert_eq!(load_customers(&mut conn, &again, &sample_customers()).unwrap().written, 0);
        let outcome = load_orders(&mut conn, &again, &orders).unwrap();
        assert_eq!((outcome.written, outcome.customers_created), (0, 0));
        assert_eq!(data_snapshot(&mut conn), before, "a re-import must not touch any row");

        let stored = find_customer(&mut conn, "file", "C1").unwrap().unwrap();
        assert_eq!(stored.name, "Acme 有限公司");
        assert_eq!(stored.owner_email.as_deref(), Some("li@example.com"));
        assert_eq!(stored.attributes.get("nps"), Some(&42.0));
        assert_eq!(stored.prospect_rating, Some(4));
        let orders = orders_of_customer(&mut conn, stored.id).unwrap();
        assert_eq!(orders.iter().map(|o| o.amount_minor).collect::<Vec<_>>(), vec![10_000, 20_000]);
    }

    fn changed_rows_are_updated_and_empty_columns_keep_values(db) {
        let mut conn = db.conn();
        let c = ctx(&mut conn, true);
        load_customers(&mut conn, &c, &sample_customers()).unwrap();
        load_orders(&mut conn, &c, &[order("O1", "C1", "2026-01-05", 10_000)]).unwrap();
        // The same customer from a file without contact or owner columns, renamed.
        let renamed = vec![Staged { line: 2, record: Customer::new(id("C1"), "Acme Ltd").unwrap() }];
        assert_eq!(load_customers(&mut conn, &c, &renamed).unwrap().written, 1);
        let stored = find_customer(&mut conn, "file", "C1").unwrap().unwrap();
        assert_eq!(stored.name, "Acme Ltd");
        assert_eq!(stored.contact_name.as_deref(), Some("王芳"));
        assert_eq!(stored.owner_email.as_deref(), Some("li@example.com"));
        assert_eq!(stored.attributes.get("nps"), Some(&42.0));
        // A corrected amount is an update, not a second order.
        assert_eq!(load_orders(&mut conn, &c, &[order("O1", "C1", "2026-01-05", 12_345)]).unwrap().written, 1);
        let orders = orders_of_customer(&mut conn, stored.id).unwrap();
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].amount_minor, 12_345);
    }

    fn duplicate_ids_in_one_chunk_keep_the_last(db) {
        let mut conn = db.conn();
        let c = ctx(&mut conn, true);
        let rows = vec![order("O1", "C9", "2026-01-05", 100), order("O1", "C9", "2026-01-06", 200)];
        let outcome = load_orders(&mut conn, &c, &rows).unwrap();
        assert_eq!((outcome.written, outcome.superseded, outcome.customers_created), (1, 1, 1));
        let customer = find_customer(&mut conn, "file", "C9").unwrap().unwrap();
        assert_eq!(customer.name, "C9", "a customer created from an id alone is named by its id");
        let orders = orders_of_customer(&mut conn, customer.id).unwrap();
        assert_eq!(orders[0].amount_minor, 200);
    }

    fn unknown_customers_are_created_or_reported(db) {
        let mut conn = db.conn();
        let strict = ctx(&mut conn, false);
        let mut with_ref = order("O1", "NEW1", "2026-01-05", 100);
        with_ref.line = 7;
        with_ref.record.1 = CustomerRef { name: Some("New Co".into()), owner_email: Some(email("han@example.com")) };
        let outcome = load_orders(&mut conn, &strict, &[with_ref.clone()]).unwrap();
        assert_eq!(outcome.unknown_customer_lines, vec![7]);
        assert_eq!(outcome.written, 0);
        assert_eq!(table_counts(&mut conn).unwrap().orders, 0);

        let lenient = ctx(&mut conn, true);
        let outcome = load_orders(&mut conn, &lenient, &[with_ref]).unwrap();
        assert_eq!((outcome.written, outcome.customers_created, outcome.owners_created), (1, 1, 1));
        let customer = find_customer(&mut conn, "file", "NEW1").unwrap().unwrap();
        assert_eq!(customer.name, "New Co");
        assert_eq!(customer.owner_email.as_deref(), Some("han@example.com"));
    }

    fn a_customer_named_by_several_rows_takes_the_least_name_and_owner(db) {
        let mut conn = db.conn();
        let c = ctx(&mut conn, true);
        let named = |ext: &str, line: u64, name: Option<&str>, owner: Option<&str>| {
            let mut row = order(ext, "NEW2", "2026-01-05", 100);
            row.line = line;
            row.record.1 = CustomerRef { name: name.map(Into::into), owner_email: owner.map(email) };
            row
        };
        let chunk = vec![
            named("O1", 2, Some("Zeta 公司"), Some("zhao@example.com")),
            named("O2", 3, None, None),
            named("O3", 4, Some("Alpha 公司"), Some("qian@example.com")),
        ];
        let outcome = load_orders(&mut conn, &c, &chunk).unwrap();
        assert_eq!((outcome.written, outcome.customers_created, outcome.owners_created), (3, 1, 2));
        let customer = find_customer(&mut conn, "file", "NEW2").unwrap().unwrap();
        // "Alpha 公司" < "NEW2" (the id stands in for the unnamed row) < "Zeta 公司".
        assert_eq!(customer.name, "Alpha 公司");
        assert_eq!(customer.owner_email.as_deref(), Some("qian@example.com"));
        // A later chunk of the same import finds the customer it created.
        let outcome = load_orders(&mut conn, &c, &[named("O4", 5, Some("Other"), None)]).unwrap();
        assert_eq!((outcome.written, outcome.customers_created), (1, 0));
        assert_eq!(orders_of_customer(&mut conn, customer.id).unwrap().len(), 4);
        // A new import (nothing remembered) of a strict kind finds it too.
        let strict = ctx(&mut conn, false);
        let outcome = load_orders(&mut conn, &strict, &[named("O5", 6, None, None)]).unwrap();
        assert_eq!((outcome.written, outcome.unknown_customer_lines.len()), (1, 0));
        assert_eq!(find_customer(&mut conn, "file", "NEW2").unwrap().unwrap().name, "Alpha 公司");
    }

    fn invoices_and_activities_load_and_keep_paid_dates(db) {
        let mut conn = db.conn();
        let c = ctx(&mut conn, true);
        load_customers(&mut conn, &c, &sample_customers()).unwrap();
        let invoice = |paid: Option<&str>| Staged { line: 2, record: (
            Invoice::new(id("I1"), id("C1"), Some(id("O1")), date("2026-01-05"), date("2026-02-04"), cny(100), paid.map(date)).unwrap(),
            CustomerRef::default(),
        ) };
        assert_eq!(load_invoices(&mut conn, &c, &[invoice(Some("2026-02-01"))]).unwrap().written, 1);
        // A later export without the paid date does not "unpay" the invoice.
        assert_eq!(load_invoices(&mut conn, &c, &[invoice(None)]).unwrap().written, 0);
        let activity = |ext: &str, customer: &str| Staged { line: 3, record: Activity {
            external_id: id(ext),
            customer: id(customer),
            owner_email: Some(email("li@example.com")),
            kind: ActivityKind::Visit,
            occurred_at: "2026-02-01T09:30:00Z".parse().unwrap(),
            note: Some("季度拜访".into()),
        } };
        let outcome = load_activities(&mut conn, &c, &[activity("A1", "C1"), activity("A2", "NOPE")]).unwrap();
        assert_eq!(outcome.written, 1);
        assert_eq!(outcome.unknown_customer_lines, vec![3]);
        let counts = table_counts(&mut conn).unwrap();
        assert_eq!((counts.invoices, counts.activities, counts.owners), (1, 1, 1));
    }

    fn import_runs_and_rejects_are_recorded(db) {
        let mut conn = db.conn();
        let c = ctx(&mut conn, true);
        let rejects = vec![Reject { line: 4, field: Some("amount".into()), reason: "'abc' is not a number".into(), raw_record: "O4,C1,2026-01-01,abc".into() }];
        insert_rejects(&mut conn, c.run, "orders.csv", &rejects).unwrap();
        let totals = RunTotals { rows_read: 3, rows_written: 2, rows_unchanged: 0, rows_rejected: 1, customers_created: 1, unused_columns: vec!["备注".into()] };
        finish_import_run(&mut conn, c.run, RunStatus::CompletedWithRejects, &totals, None).unwrap();
        let run = find_import_run(&mut conn, c.run).unwrap().unwrap();
        assert_eq!(run.status, RunStatus::CompletedWithRejects);
        assert_eq!(run.totals, totals);
        assert!(run.finished_at.is_some());
        assert_eq!(recent_import_runs(&mut conn, 10).unwrap()[0].id, c.run);
        assert_eq!(rejects_of_run(&mut conn, c.run, 100).unwrap(), rejects);
    }

    fn async_callers_run_on_the_blocking_pool(db) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let on_runtime_thread = std::thread::current().id();
        let (counts, ran_on) = runtime
            .block_on(db.db.run(|conn| Ok((table_counts(conn)?, std::thread::current().id()))))
            .unwrap();
        assert_eq!(counts.customers, 0);
        assert_ne!(ran_on, on_runtime_thread, "database work must leave the async thread");
    }

    fn a_failed_transaction_leaves_nothing(db) {
        let mut conn = db.conn();
        let c = ctx(&mut conn, true);
        let result: Result<(), tierwise_store::StoreError> = tierwise_store::transaction(&mut conn, |tx| {
            load_orders(tx, &c, &[order("O1", "C1", "2026-01-05", 100)])?;
            Err(tierwise_store::StoreError::Task("simulated failure".into()))
        });
        assert!(result.is_err());
        let counts = table_counts(&mut conn).unwrap();
        assert_eq!((counts.orders, counts.customers), (0, 0));
    }

    fn a_connection_whose_holder_panicked_mid_transaction_leaves_the_pool(db) {
        use diesel::connection::SimpleConnection;
        let pool = db.db.clone();
        let panicked = std::thread::spawn(move || {
            let mut conn = pool.conn().unwrap();
            let _: Result<(), tierwise_store::StoreError> = tierwise_store::transaction(&mut conn, |tx| {
                tx.batch_execute("INSERT INTO owners (email, name, locale, source) VALUES ('lost@example.com', 'Lost', 'en', 'test')")
                    .unwrap();
                panic!("a job panics halfway");
            });
        })
        .join();
        assert!(panicked.is_err());
        // Had the connection gone back to the pool, it would still hold SQLite's write lock (this
        // insert would wait out the busy timeout and fail) and its half-done insert would be
        // committed by whoever took it next.
        for _ in 0..4 {
            let mut conn = db.conn();
            tierwise_store::transaction(&mut conn, |tx| -> Result<(), tierwise_store::StoreError> {
                tx.batch_execute("INSERT INTO owners (email, name, locale, source) VALUES ('next@example.com', 'Next', 'en', 'test') ON CONFLICT (email) DO NOTHING")?;
                Ok(())
            })
            .unwrap();
        }
        let mut conn = db.conn();
        assert_eq!(table_counts(&mut conn).unwrap().owners, 1, "only the second owner");
    }

    fn a_transaction_that_reads_then_writes_survives_a_commit_beside_it(db) {
        use diesel::connection::SimpleConnection;
        let add_owner = |conn: &mut DbConnection, name: &str| {
            conn.batch_execute(&format!(
                "INSERT INTO owners (email, name, locale, source) VALUES ('{name}@example.com', '{name}', 'en', 'test')"
            ))
        };
        let mut conn = db.conn();
        let mut beside = None;
        tierwise_store::transaction(&mut conn, |tx| -> Result<(), tierwise_store::StoreError> {
            // A read first (a digest being composed), then another connection writes and commits
            // (a scheduler renewing its lease). On SQLite a deferred transaction's snapshot is
            // now stale and its first write fails at once with "database is locked".
            assert_eq!(table_counts(tx)?.owners, 0);
            let pool = db.db.clone();
            beside = Some(std::thread::spawn(move || add_owner(&mut pool.conn().unwrap(), "lease")));
            std::thread::sleep(std::time::Duration::from_millis(300));
            add_owner(tx, "digest")?;
            Ok(())
        })
        .unwrap();
        beside.unwrap().join().unwrap().unwrap();
        assert_eq!(table_counts(&mut conn).unwrap().owners, 2);
    }
}

mod pooled_postgres_connections {
    //! The pool hands out a connection without a ping when a query succeeded on it within the
    //! last 500 ms; these check that a connection the server closed still leaves the pool.
    use std::time::Duration;

    use diesel::prelude::*;
    use tierwise_store::testing::{TestBackend, TestDb};
    use tierwise_store::{Database, DbConnection};

    fn backend_pid(conn: &mut DbConnection) -> QueryResult<i32> {
        match conn {
            DbConnection::Postgresql(pg) => diesel::select(diesel::dsl::sql::<
                diesel::sql_types::Integer,
            >("pg_backend_pid()"))
            .get_result(pg),
            DbConnection::Sqlite(_) => unreachable!("PostgreSQL only"),
        }
    }

    /// Ends backend `pid` from a connection outside the pool, as a server restart would.
    fn terminate(test: &TestDb, pid: i32) {
        let mut admin = PgConnection::establish(test.url()).unwrap();
        let ended: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "pg_terminate_backend({pid})"
        )))
        .get_result(&mut admin)
        .unwrap();
        assert!(ended);
    }

    /// Every connection the pool can hold, checked out at once, answers (so none is dead).
    fn every_pooled_connection_answers(db: &Database, killed: i32) {
        let mut held = Vec::new();
        for _ in 0..4 {
            let mut conn = db.conn().unwrap();
            let pid = backend_pid(&mut conn)
                .unwrap_or_else(|e| panic!("a pooled connection answers: {e}"));
            assert_ne!(pid, killed);
            held.push(conn);
        }
    }

    #[test]
    fn a_connection_that_failed_as_closed_is_not_handed_out_again() {
        let test = TestDb::new(TestBackend::Postgres);
        let mut conn = test.db.conn().unwrap();
        let pid = backend_pid(&mut conn).unwrap();
        terminate(&test, pid);
        std::thread::sleep(Duration::from_millis(100));
        assert!(backend_pid(&mut conn).is_err(), "the server closed it");
        drop(conn);
        // Within the no-ping window: only the failure's mark keeps it out.
        every_pooled_connection_answers(&test.db, pid);
    }

    #[test]
    fn an_idle_connection_the_server_closed_is_replaced_at_checkout() {
        let test = TestDb::new(TestBackend::Postgres);
        let pid = backend_pid(&mut test.db.conn().unwrap()).unwrap();
        terminate(&test, pid);
        // Past the no-ping window, checkout pings and replaces it: no caller sees an error.
        std::thread::sleep(Duration::from_millis(700));
        every_pooled_connection_answers(&test.db, pid);
    }
}

mod statistics_after_loads {
    use diesel::connection::SimpleConnection;
    use diesel::prelude::*;
    use tierwise_store::DbConnection;
    use tierwise_store::load::{LoadedTable, analyze_after_load};
    use tierwise_store::testing::{TestBackend, TestDb};

    fn known_rows(conn: &mut DbConnection) -> f32 {
        let DbConnection::Postgresql(pg) = conn else {
            unreachable!("PostgreSQL only")
        };
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Float>(
            "(SELECT reltuples FROM pg_class WHERE oid = 'owners'::regclass)",
        ))
        .get_result(pg)
        .unwrap()
    }

    fn add_owners(conn: &mut DbConnection, from: u32, to: u32) {
        conn.batch_execute(&format!(
            "INSERT INTO owners (email, name, locale, source) \
             SELECT 'o' || i || '@example.com', 'O' || i, 'en', 'test' \
             FROM generate_series({from}, {to}) AS i"
        ))
        .unwrap();
    }

    #[test]
    fn a_large_load_is_analysed_at_once_and_a_small_one_left_to_autovacuum() {
        let test = TestDb::new(TestBackend::Postgres);
        let mut pooled = test.conn();
        let conn = &mut *pooled;
        // Autovacuum must not analyse behind the test's back.
        conn.batch_execute("ALTER TABLE owners SET (autovacuum_enabled = false)")
            .unwrap();
        add_owners(conn, 1, 120_000);
        assert!(known_rows(conn) < 0.0, "never analysed");
        assert!(
            !analyze_after_load(conn, LoadedTable::Owners, 9_999).unwrap(),
            "too few rows"
        );
        assert!(analyze_after_load(conn, LoadedTable::Owners, 120_000).unwrap());
        assert_eq!(known_rows(conn), 120_000.0);
        // 10,000 more rows are under a tenth of the 120,000 known: autovacuum's business.
        add_owners(conn, 120_001, 130_000);
        assert!(!analyze_after_load(conn, LoadedTable::Owners, 10_000).unwrap());
        assert_eq!(known_rows(conn), 120_000.0);
        // 15,000 more are over a tenth of 120,000.
        add_owners(conn, 130_001, 145_000);
        assert!(analyze_after_load(conn, LoadedTable::Owners, 15_000).unwrap());
        assert_eq!(known_rows(conn), 145_000.0);
    }

    /// PostgreSQL's plan of the grading run's first read, run (so heap fetches are counted).
    fn plan_of_reading_customer_ids(conn: &mut DbConnection) -> String {
        #[derive(QueryableByName)]
        struct Line {
            #[diesel(sql_type = diesel::sql_types::Text, column_name = "QUERY PLAN")]
            line: String,
        }
        let DbConnection::Postgresql(pg) = conn else {
            unreachable!("PostgreSQL only")
        };
        diesel::sql_query(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) \
             SELECT id FROM customers ORDER BY source, external_id",
        )
        .load::<Line>(pg)
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect::<Vec<_>>()
        .join("\n")
    }

    #[test]
    fn customer_ids_are_read_from_the_index_alone_after_a_large_load() {
        let test = TestDb::new(TestBackend::Postgres);
        let mut pooled = test.conn();
        let conn = &mut *pooled;
        conn.batch_execute(
            "ALTER TABLE customers SET (autovacuum_enabled = false); \
             INSERT INTO customers (source, external_id, name) \
             SELECT 'file', 'C' || i, 'Customer ' || i FROM generate_series(1, 20000) AS i",
        )
        .unwrap();
        assert!(analyze_after_load(conn, LoadedTable::Customers, 20_000).unwrap());
        // The id rides in the unique index (migration 000012) and the pages are all-visible
        // (the load vacuumed them): the rows themselves are not visited.
        let plan = plan_of_reading_customer_ids(conn);
        assert!(
            plan.contains("Index Only Scan using customers_source_external_id_key"),
            "{plan}"
        );
        // 0 here; a transaction elsewhere holding the horizon back may leave a few pages
        // unmarked, while without the VACUUM every one of the 20,000 rows is fetched.
        let heap_fetches: u64 = plan
            .split("Heap Fetches: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(heap_fetches < 1_000, "{plan}");
    }

    #[test]
    fn sqlite_reads_customer_ids_from_the_index_alone() {
        #[derive(QueryableByName)]
        struct Step {
            #[diesel(sql_type = diesel::sql_types::Text)]
            detail: String,
        }
        let test = TestDb::new(TestBackend::Sqlite);
        let mut pooled = test.conn();
        let DbConnection::Sqlite(conn) = &mut *pooled else {
            unreachable!("SQLite")
        };
        let plan: Vec<String> = diesel::sql_query(
            "EXPLAIN QUERY PLAN SELECT id FROM customers ORDER BY source, external_id",
        )
        .load::<Step>(conn)
        .unwrap()
        .into_iter()
        .map(|s| s.detail)
        .collect();
        assert!(
            plan.iter().any(|s| s.contains("USING COVERING INDEX"))
                && !plan.iter().any(|s| s.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }

    #[test]
    fn sqlite_needs_no_statistics_step() {
        let test = TestDb::new(TestBackend::Sqlite);
        assert!(
            !analyze_after_load(&mut test.db.conn().unwrap(), LoadedTable::Orders, 1_000_000)
                .unwrap()
        );
    }
}

/// `n` plain grade rows of `run` for customers `from..from + n`, with their explanations.
fn grade_rows(
    run: tierwise_store::grading::GradingRunId,
    from: i64,
    n: i64,
) -> (
    Vec<tierwise_store::grading::NewGrade>,
    Vec<tierwise_store::grading::NewExplanation>,
) {
    use tierwise_store::grading::{NewExplanation, NewGrade};
    let rows: Vec<NewGrade> = (from..from + n)
        .map(|customer_id| NewGrade {
            run_id: run.0,
            customer_id,
            graded: true,
            recency_days: Some(3),
            frequency: 2,
            monetary: 1_000,
            r_score: Some(5),
            f_score: Some(4),
            m_score: Some(3),
            segment: Some("champions"),
            abc_class: Some("A"),
            credit_score: None,
            credit_grade: "unrated",
            profit: None,
            composite: Some(0.5),
            computed_tier: Some("gold"),
            tier: Some("gold"),
            tier_reason: "computed",
            periods_below: 0,
            loyalty: None,
            lifecycle: "active",
            clv: None,
            tier_since: None,
            p_alive: None,
            expected_purchases_90d: None,
            expected_purchases_12m: None,
            expected_order_value: None,
            clv_model: None,
        })
        .collect();
    let explanations = rows
        .iter()
        .map(|g| NewExplanation {
            run_id: g.run_id,
            customer_id: g.customer_id,
            explanation: "{}".into(),
        })
        .collect();
    (rows, explanations)
}
