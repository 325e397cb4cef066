//! Import → grade two periods → tier changes and migration matrix, on both backends; plus
//! re-grading, dry runs, back-fill, overrides and crash recovery.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::path::{Path, PathBuf};

use tierwise_domain::Period;
use tierwise_domain::grading::{Override, OverrideKind, Policy};
use tierwise_grading::{Mode, grade_period, grade_range};
use tierwise_import::{ColumnMapping, FileImportOptions, ImportSettings, RecordKind, import_file};
use tierwise_store::backend_tests;
use tierwise_store::grading::{
    GradingStatus, count_grade_rows, find_run, for_each_graded_customer, published_run,
    set_override, start_run, tier_changes,
};
use tierwise_store::queries::find_customer;
use tierwise_store::testing::TestDb;

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn import_orders(db: &TestDb, dir: &Path, name: &str, csv: &str) {
    import_kind(db, dir, name, csv, RecordKind::Orders);
}

fn import_kind(db: &TestDb, dir: &Path, name: &str, csv: &str, kind: RecordKind) {
    let path = write(dir, name, csv);
    let options = FileImportOptions::from_settings(
        &ImportSettings::default(),
        kind,
        ColumnMapping::default(),
    )
    .unwrap();
    let report = import_file(&db.db, &path, &options).unwrap();
    assert_eq!(report.totals.rows_rejected, 0);
}

/// Ten customers, one order each on 2026-09-15: C01 1000 … C10 100, costs half the amount.
fn september() -> String {
    let mut csv = String::from("order_id,customer_id,order_date,amount,cost\n");
    for i in 1..=10 {
        let amount = 1100 - 100 * i;
        csv.push_str(&format!(
            "S{i:02},C{i:02},2026-09-15,{amount},{}\n",
            amount / 2
        ));
    }
    csv
}

/// October: C10 buys 5000 on 2026-10-10.
const OCTOBER: &str = "order_id,customer_id,order_date,amount,cost\nO10,C10,2026-10-10,5000,2500\n";

fn tiers(db: &TestDb, period: &str) -> Vec<(String, Option<String>, String)> {
    let mut out = Vec::new();
    for_each_graded_customer(&mut db.conn(), Period::parse(period).unwrap(), |c| {
        out.push((c.external_id, c.tier, c.tier_reason));
        Ok(())
    })
    .unwrap();
    out
}

fn p(s: &str) -> Period {
    Period::parse(s).unwrap()
}

/// The peer's answer for the fixture orders: customer → [recency_days, frequency, monetary,
/// r_score, f_score, m_score, rfm_segment, abc_class].
fn peer_answer() -> std::collections::HashMap<String, Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peer_rfm_duckdb.csv");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .skip(1)
        .map(|line| {
            let mut fields = line.split(',').map(str::to_owned);
            let id = fields.next().unwrap();
            (id, fields.collect())
        })
        .collect()
}

backend_tests! {
    fn rfm_segments_and_abc_equal_the_duckdb_peer(db) {
        // tests/fixtures: 400 customers' orders from ../shared/bench/gen_orders.py (seed 11) and
        // what ../shared/bench/rfm_duckdb.py computes from them as of 2026-10-31.
        let orders = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peer_orders.csv");
        let options = FileImportOptions::from_settings(
            &ImportSettings::default(),
            RecordKind::Orders,
            ColumnMapping::default(),
        )
        .unwrap();
        let report = import_file(&db.db, &orders, &options).unwrap();
        assert_eq!(report.totals.rows_written, 3166);
        grade_period(&db.db, p("2026-10"), &Policy::default(), Mode::Publish).unwrap();
        let peer = peer_answer();
        let mut compared = 0;
        for_each_graded_customer(&mut db.conn(), p("2026-10"), |c| {
            let theirs = peer.get(&c.external_id);
            if !c.graded {
                assert!(theirs.is_none(), "{} graded by the peer only", c.external_id);
                return Ok(());
            }
            let ours = vec![
                c.recency_days.unwrap().to_string(),
                c.frequency.to_string(),
                c.monetary.to_string(),
                c.r_score.unwrap().to_string(),
                c.f_score.unwrap().to_string(),
                c.m_score.unwrap().to_string(),
                c.segment.clone().unwrap(),
                c.abc_class.clone().unwrap(),
            ];
            assert_eq!(Some(&ours), theirs, "customer {}", c.external_id);
            compared += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(compared, peer.len());
        assert_eq!(compared, 333);
    }

    fn records_deleted_at_their_source_are_not_graded(db) {
        let dir = tempfile::tempdir().unwrap();
        import_orders(&db, dir.path(), "sep.csv", &september());
        import_orders(&db, dir.path(), "oct.csv", OCTOBER);
        let policy = Policy::default();
        grade_period(&db.db, p("2026-09"), &policy, Mode::Publish).unwrap();
        // An October order of C09 without a cost.
        import_orders(&db, dir.path(), "late.csv", "order_id,customer_id,order_date,amount,cost\nO11,C09,2026-10-12,700,\n");
        // The source deleted customer C05, C10's October order and C09's (no cost: on
        // PostgreSQL a NULL before the deletion mark once hid it).
        let source = tierwise_domain::SourceName::parse("file").unwrap();
        let at = chrono::NaiveDate::from_ymd_opt(2026, 10, 20).unwrap().and_hms_opt(9, 0, 0).unwrap();
        for (table, id) in [
            (tierwise_store::load::DeletableTable::Customers, "C05"),
            (tierwise_store::load::DeletableTable::Orders, "O10"),
            (tierwise_store::load::DeletableTable::Orders, "O11"),
        ] {
            let deletion = tierwise_store::load::Deletion { external_id: id, at, reason: "deleted in a test" };
            let marked = tierwise_store::load::mark_deleted(&mut db.conn(), &source, table, std::slice::from_ref(&deletion)).unwrap();
            assert_eq!(marked, 1);
            // Marking again changes nothing.
            assert_eq!(tierwise_store::load::mark_deleted(&mut db.conn(), &source, table, &[deletion]).unwrap(), 0);
        }
        let oct = grade_period(&db.db, p("2026-10"), &policy, Mode::Publish).unwrap();
        assert_eq!(oct.summary.graded, 9);
        let mut graded = Vec::new();
        for_each_graded_customer(&mut db.conn(), p("2026-10"), |c| {
            graded.push((c.external_id, c.frequency, c.monetary));
            Ok(())
        })
        .unwrap();
        assert!(graded.iter().all(|g| g.0 != "C05"), "{graded:?}");
        // C10 keeps only its September order: 1 purchase of 100.00; C09 only its 200.00.
        assert_eq!(graded.last().unwrap(), &("C10".to_owned(), 1, 10_000));
        assert!(graded.contains(&("C09".to_owned(), 1, 20_000)), "{graded:?}");
        // The deleted customer keeps its September grade.
        assert!(tiers(&db, "2026-09").iter().any(|t| t.0 == "C05"));

        // An invoice deleted at its source is no longer owed: C01's credit improves.
        import_kind(&db, dir.path(), "invoices.csv", "invoice_id,customer_id,issued_date,due_date,amount,paid_date\n\
I1,C01,2026-08-01,2026-08-31,100,2026-08-20\n\
I2,C01,2026-08-01,2026-08-31,100,\n", RecordKind::Invoices);
        let credit_of_c01 = |db: &TestDb| {
            grade_period(&db.db, p("2026-10"), &policy, Mode::Publish).unwrap();
            let mut credit = None;
            for_each_graded_customer(&mut db.conn(), p("2026-10"), |c| {
                if c.external_id == "C01" {
                    credit = Some((c.credit_score, c.credit_grade));
                }
                Ok(())
            })
            .unwrap();
            credit.unwrap()
        };
        let half_unpaid = credit_of_c01(&db);
        let deletion = tierwise_store::load::Deletion { external_id: "I2", at, reason: "voided in a test" };
        let marked = tierwise_store::load::mark_deleted(&mut db.conn(), &source, tierwise_store::load::DeletableTable::Invoices, &[deletion]).unwrap();
        assert_eq!(marked, 1);
        let all_paid = credit_of_c01(&db);
        assert!(all_paid.0.unwrap() > half_unpaid.0.unwrap(), "{half_unpaid:?} -> {all_paid:?}");
        assert_ne!(all_paid.1, half_unpaid.1);
    }

    fn two_periods_give_the_expected_changes_and_migration(db) {
        let dir = tempfile::tempdir().unwrap();
        import_orders(&db, dir.path(), "sep.csv", &september());
        import_orders(&db, dir.path(), "oct.csv", OCTOBER);
        let policy = Policy::default();

        // September: recency and frequency tie, composite ranks by value and profit:
        // C01 → A (1 of 10), C02–C03 → B, C04–C06 → C, C07–C10 → D.
        let sep = grade_period(&db.db, p("2026-09"), &policy, Mode::Publish).unwrap();
        assert_eq!(sep.summary.graded, 10);
        let got: Vec<Option<String>> = tiers(&db, "2026-09").into_iter().map(|t| t.1).collect();
        let want = ["A", "B", "B", "C", "C", "C", "D", "D", "D", "D"];
        assert_eq!(got, want.map(|t| Some(t.to_string())));

        // October: C10 tops every component → A at once (promotion). Computed order C10, C01,
        // C02, …: C01 computes B, C03 C and C06 D, but demotions wait two periods (held).
        let oct = grade_period(&db.db, p("2026-10"), &policy, Mode::Publish).unwrap();
        let got = tiers(&db, "2026-10");
        let assigned: Vec<&str> = got.iter().map(|t| t.1.as_deref().unwrap()).collect();
        assert_eq!(assigned, ["A", "B", "B", "C", "C", "C", "D", "D", "D", "A"]);
        let reasons: Vec<&str> = got.iter().map(|t| t.2.as_str()).collect();
        assert_eq!(reasons[0], "held");
        assert_eq!(reasons[2], "held");
        assert_eq!(reasons[5], "held");
        assert_eq!(reasons[9], "computed");

        // One tier change (C10 D → A); the migration matrix says the same.
        assert_eq!(oct.summary.tier_changes, 1);
        let changes = tier_changes(&mut db.conn(), p("2026-10")).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].from.as_deref(), changes[0].to.as_deref()), (Some("D"), Some("A")));
        let m = &oct.summary.migration;
        assert_eq!(m["A"]["A"], 1);
        assert_eq!(m["B"]["B"], 2);
        assert_eq!(m["C"]["C"], 3);
        assert_eq!(m["D"]["D"], 3);
        assert_eq!(m["D"]["A"], 1);
        let tier_a = &oct.summary.tiers[0];
        assert_eq!((tier_a.0.as_str(), tier_a.1.customers), ("A", 2));
        // Revenue share of A: (1000 + 5100) / (5500 + 5000) in window monetary.
        assert!((tier_a.1.revenue_share - 6100.0 / 10500.0).abs() < 1e-12);

        // The stored run carries its policy, counts and summary.
        let run = published_run(&mut db.conn(), p("2026-10")).unwrap().unwrap();
        assert_eq!(run.status, GradingStatus::Succeeded);
        assert_eq!((run.customers, run.graded, run.tier_changes), (10, 10, 1));
        assert_eq!(run.policy_hash, policy.hash());
        assert!(run.summary.unwrap().contains("\"migration\""));
    }

    fn regrading_replaces_the_period_and_dry_runs_write_nothing(db) {
        let dir = tempfile::tempdir().unwrap();
        import_orders(&db, dir.path(), "sep.csv", &september());
        import_orders(&db, dir.path(), "oct.csv", OCTOBER);
        let policy = Policy::default();
        grade_period(&db.db, p("2026-09"), &policy, Mode::Publish).unwrap();
        let first = grade_period(&db.db, p("2026-10"), &policy, Mode::Publish).unwrap();
        let before = tiers(&db, "2026-10");
        let again = grade_period(&db.db, p("2026-10"), &policy, Mode::Publish).unwrap();
        assert_eq!(again.replaced, first.run);
        assert_eq!(tiers(&db, "2026-10"), before);
        // Two published periods of ten customers; the replaced run's rows are gone.
        assert_eq!(count_grade_rows(&mut db.conn()).unwrap(), 20);
        let old = find_run(&mut db.conn(), first.run.unwrap()).unwrap().unwrap();
        assert_eq!(old.status, GradingStatus::Superseded);

        // Dry run with no demotion grace: the three held customers would drop a tier.
        let mut strict = Policy::default();
        strict.tiers.demotion_grace_periods = 1;
        let dry = grade_period(&db.db, p("2026-10"), &strict, Mode::DryRun).unwrap();
        let movement = dry.movement.unwrap();
        assert!(movement.compared);
        assert_eq!((movement.moved, movement.up, movement.down), (3, 0, 3));
        assert_eq!(dry.run, None);
        assert_eq!(count_grade_rows(&mut db.conn()).unwrap(), 20);
        assert_eq!(tiers(&db, "2026-10"), before);
    }

    fn backfill_grades_in_order_and_overrides_apply(db) {
        let dir = tempfile::tempdir().unwrap();
        import_orders(&db, dir.path(), "sep.csv", &september());
        import_orders(&db, dir.path(), "oct.csv", OCTOBER);
        let c09 = find_customer(&mut db.conn(), "file", "C09").unwrap().unwrap().id;
        let c02 = find_customer(&mut db.conn(), "file", "C02").unwrap().unwrap().id;
        set_override(&mut db.conn(), c09, &Override {
            kind: OverrideKind::Pin { tier: "A".into() },
            reason: "strategic".into(),
            author: "ops".into(),
            until: Some(chrono::NaiveDate::from_ymd_opt(2026, 9, 30).unwrap()),
        }).unwrap();
        set_override(&mut db.conn(), c02, &Override {
            kind: OverrideKind::Block,
            reason: "dispute".into(),
            author: "ops".into(),
            until: None,
        }).unwrap();
        let mut seen = Vec::new();
        let reports = grade_range(&db.db, p("2026-08"), p("2026-10"), &Policy::default(), |r| {
            seen.push(r.period);
        }).unwrap();
        assert_eq!(seen, vec![p("2026-08"), p("2026-09"), p("2026-10")]);
        // August: nobody had ordered yet.
        assert_eq!(reports[0].summary.graded, 0);
        let sep = tiers(&db, "2026-09");
        assert_eq!(sep[8], ("C09".into(), Some("A".into()), "pinned".into()));
        assert_eq!(sep[1], ("C02".into(), None, "blocked".into()));
        assert_eq!(reports[1].summary.graded, 9);
        // October: the pin expired on 2026-09-30; C09 computes D, and a demotion from a pinned
        // A is held like any other.
        let oct = tiers(&db, "2026-10");
        assert_eq!(oct[8].1.as_deref(), Some("A"));
        assert_eq!(oct[8].2, "held");
    }

    fn a_run_that_died_is_marked_failed_and_the_snapshot_survives(db) {
        let dir = tempfile::tempdir().unwrap();
        import_orders(&db, dir.path(), "sep.csv", &september());
        let policy = Policy::default();
        grade_period(&db.db, p("2026-09"), &policy, Mode::Publish).unwrap();
        let before = tiers(&db, "2026-09");
        // A run that started and never finished (its process was killed).
        let dead = start_run(&mut db.conn(), p("2026-09"), "dead", "{}").unwrap();
        assert_eq!(tiers(&db, "2026-09"), before);
        let next = grade_period(&db.db, p("2026-10"), &policy, Mode::Publish).unwrap();
        assert_eq!(next.abandoned, vec![dead]);
        let dead = find_run(&mut db.conn(), dead).unwrap().unwrap();
        assert_eq!(dead.status, GradingStatus::Failed);
        assert!(dead.error.unwrap().contains("abandoned"));
        assert_eq!(tiers(&db, "2026-09"), before);
    }

    fn a_second_concurrent_run_is_refused(db) {
        let _held = db.db.try_exclusive(tierwise_grading::GRADING_LOCK).unwrap();
        let err = grade_period(&db.db, p("2026-09"), &Policy::default(), Mode::Publish).unwrap_err();
        assert!(err.to_string().contains("another process holds the 'grading' lock"), "{err}");
    }
}
