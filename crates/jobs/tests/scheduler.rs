//! The scheduler in process, on both backends: catch-up after an outage, the monthly grade at a
//! month boundary in the job's time zone and while another run holds the grading lock, manual
//! requests, and leases with fencing.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use tierwise_domain::Period;
use tierwise_domain::grading::Policy;
use tierwise_jobs::{FixedClock, JobDefinition, JobEnv, Scheduler, SchedulerOptions};
use tierwise_store::backend_tests;
use tierwise_store::jobs::{self as store, Claim, trigger};
use tierwise_store::testing::TestDb;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn naive(s: &str) -> NaiveDateTime {
    at(s).naive_utc()
}

fn def(name: &str, text: &str) -> JobDefinition {
    JobDefinition::parse(Path::new(&format!("jobs/{name}.toml")), text, Tz::UTC).unwrap()
}

fn env(db: &TestDb, clock: Arc<FixedClock>, replica: &str) -> Arc<JobEnv> {
    Arc::new(JobEnv {
        db: db.db.clone(),
        policy: Policy::default(),
        import: tierwise_import::ImportSettings::default(),
        mapping: tierwise_import::ColumnMapping::default(),
        crm: tierwise_import::crm::CrmSettings::default(),
        notify: tierwise_notify::NotifySettings::default(),
        smtp: tierwise_notify::SmtpSettings::default(),
        templates: tierwise_notify::Templates::load(None).unwrap(),
        clock,
        replica: replica.into(),
    })
}

fn options() -> SchedulerOptions {
    SchedulerOptions {
        lease: Duration::from_secs(3),
        poll: Duration::from_millis(200),
        catch_up_horizon: Duration::from_secs(3 * 24 * 3600),
        shutdown_grace: Duration::from_secs(5),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until `job` has `n` finished runs.
async fn finished_runs(db: &TestDb, job: &str, n: usize) -> Vec<store::JobRun> {
    // Up to 30 s: a loaded CI machine grades and publishes slowly.
    for _ in 0..300 {
        let runs: Vec<store::JobRun> = store::history(&mut db.conn(), Some(job), 100)
            .unwrap()
            .into_iter()
            .filter(|r| r.status != store::status::RUNNING)
            .collect();
        if runs.len() >= n {
            return runs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{job} did not finish {n} runs");
}

/// Two customers with an order each (November and October 2026).
fn import_two_customers(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let orders = dir.path().join("orders.csv");
    std::fs::write(
        &orders,
        "order_id,customer_id,order_date,amount\nO1,C1,2026-11-20,100\nO2,C2,2026-10-05,50\n",
    )
    .unwrap();
    let options = tierwise_import::FileImportOptions::from_settings(
        &tierwise_import::ImportSettings::default(),
        tierwise_import::RecordKind::Orders,
        tierwise_import::ColumnMapping::default(),
    )
    .unwrap();
    tierwise_import::import_file(&db.db, &orders, &options).unwrap();
}

backend_tests! {
    fn a_missed_occurrence_runs_once_on_start(db) {
        // Every scheduler was down at 02:00 on the 1st; one starts at 03:00.
        let clock = Arc::new(FixedClock::new(at("2026-12-01T03:00:00Z")));
        let defs = vec![
            def("monthly", "schedule = \"0 0 2 1 * *\"\nkind = \"probe\""),
            def("no-catch-up", "schedule = \"0 0 2 1 * *\"\nkind = \"probe\"\ncatch_up = false"),
            // Its last occurrence is older than the horizon.
            def("yearly", "schedule = \"0 0 2 1 1 *\"\nkind = \"probe\""),
        ];
        let rt = runtime();
        rt.block_on(async {
            let s = Scheduler::start(env(&db, clock.clone(), "r1"), defs.clone(), options()).await.unwrap();
            let runs = finished_runs(&db, "monthly", 1).await;
            s.shutdown().await.unwrap();
            assert_eq!(runs.len(), 1);
            assert_eq!(runs[0].scheduled_for, naive("2026-12-01T02:00:00Z"));
            assert_eq!((runs[0].trigger.as_str(), runs[0].status.as_str()), ("catch_up", "succeeded"));
            // Starting again (another replica, or a restart) does not run it twice.
            let s = Scheduler::start(env(&db, clock.clone(), "r2"), defs, options()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            s.shutdown().await.unwrap();
        });
        assert_eq!(store::history(&mut db.conn(), Some("monthly"), 10).unwrap().len(), 1);
        assert_eq!(store::probes(&mut db.conn(), "monthly").unwrap().len(), 1);
        assert!(store::history(&mut db.conn(), Some("no-catch-up"), 10).unwrap().is_empty());
        assert!(store::history(&mut db.conn(), Some("yearly"), 10).unwrap().is_empty());
    }

    fn the_monthly_grade_grades_the_previous_month_in_its_time_zone(db) {
        import_two_customers(&db);
        // 02:00 on Dec 1 in Shanghai is 18:00 on Nov 30 in UTC: still November in UTC, but the
        // job's month is December, so it grades November.
        let clock = Arc::new(FixedClock::new(at("2026-11-30T18:00:05Z")));
        let defs = vec![def(
            "monthly-grade",
            "schedule = \"0 0 2 1 * *\"\ntimezone = \"Asia/Shanghai\"\nkind = \"grade\"\n[args]\nperiod = \"previous\"",
        )];
        let rt = runtime();
        let runs = rt.block_on(async {
            let s = Scheduler::start(env(&db, clock, "r1"), defs, options()).await.unwrap();
            let runs = finished_runs(&db, "monthly-grade", 1).await;
            s.shutdown().await.unwrap();
            runs
        });
        assert_eq!(runs[0].status, "succeeded", "{:?}", runs[0].error);
        assert_eq!(runs[0].scheduled_for, naive("2026-11-30T18:00:00Z"));
        let outcome: serde_json::Value = serde_json::from_str(runs[0].outcome.as_deref().unwrap()).unwrap();
        assert_eq!(outcome["period"], "2026-11");
        assert_eq!(outcome["graded"], 2);
        let published = tierwise_store::grading::published_run(&mut db.conn(), Period::parse("2026-11").unwrap()).unwrap();
        assert!(published.is_some());
    }

    fn a_scheduled_grade_waits_while_another_run_holds_the_grading_lock(db) {
        import_two_customers(&db);
        // A what-if on the dashboard (or a manual `tierwise grade`) is running at 02:00.
        let what_if = db.db.try_exclusive(tierwise_grading::GRADING_LOCK).unwrap();
        let clock = Arc::new(FixedClock::new(at("2026-12-01T02:00:05Z")));
        let defs = vec![
            def("monthly-grade", "schedule = \"0 0 2 1 * *\"\nkind = \"grade\""),
            // Told not to wait: fails at once, with the holder's message.
            def("impatient-grade", "schedule = \"0 0 2 1 * *\"\nkind = \"grade\"\n[args]\nlock_wait_secs = 0"),
        ];
        let rt = runtime();
        let runs = rt.block_on(async {
            let s = Scheduler::start(env(&db, clock.clone(), "r1"), defs, options()).await.unwrap();
            let impatient = finished_runs(&db, "impatient-grade", 1).await;
            assert_eq!(impatient[0].status, "failed");
            assert!(impatient[0].error.as_deref().unwrap_or_default().contains("'grading' lock"), "{:?}", impatient[0].error);
            // Longer than the 3 s lease, with time passing: the waiting job is not taken over
            // and does not give up.
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                clock.advance(TimeDelta::seconds(1));
            }
            let waiting = store::history(&mut db.conn(), Some("monthly-grade"), 10).unwrap();
            assert_eq!(waiting.len(), 1, "taken over or run twice: {waiting:?}");
            assert_eq!((waiting[0].status.as_str(), waiting[0].fence), (store::status::RUNNING, 1));
            drop(what_if);
            let runs = finished_runs(&db, "monthly-grade", 1).await;
            s.shutdown().await.unwrap();
            runs
        });
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, "succeeded", "{:?}", runs[0].error);
        let published = tierwise_store::grading::published_run(&mut db.conn(), Period::parse("2026-11").unwrap()).unwrap();
        assert!(published.is_some());
    }

    fn a_replica_does_not_take_over_a_run_it_is_still_working_on(db) {
        // The lease runs out while the job works, without a renewal in between (on SQLite a long
        // import's transaction holds renewals up): the process is alive and keeps the run.
        let clock = Arc::new(FixedClock::new(at("2026-12-01T02:00:00Z")));
        let defs = vec![def("slow", "schedule = \"0 0 2 1 * *\"\nkind = \"probe\"\n[args]\nsleep_ms = 2500")];
        let rt = runtime();
        let runs = rt.block_on(async {
            let s = Scheduler::start(env(&db, clock.clone(), "r1"), defs, options()).await.unwrap();
            // Once the run is claimed (and a moment more, to be in hand), time jumps.
            while store::history(&mut db.conn(), Some("slow"), 1).unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            clock.advance(TimeDelta::seconds(10));
            let runs = finished_runs(&db, "slow", 1).await;
            s.shutdown().await.unwrap();
            runs
        });
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].status.as_str(), runs[0].fence), ("succeeded", 1), "{runs:?}");
        assert_eq!(store::probes(&mut db.conn(), "slow").unwrap().len(), 1, "ran twice");
    }

    fn a_manual_request_is_picked_up_with_its_arguments(db) {
        let clock = Arc::new(FixedClock::new(at("2026-11-10T09:00:00Z")));
        let defs = vec![def("probe", "schedule = \"0 0 0 1 1 *\"\nkind = \"probe\"\ncatch_up = false")];
        let id = store::request_run(&mut db.conn(), "probe", "{\"sleep_ms\":\"50\"}", "tester", naive("2026-11-10T09:00:00Z")).unwrap();
        let rt = runtime();
        let runs = rt.block_on(async {
            let s = Scheduler::start(env(&db, clock, "r1"), defs, options()).await.unwrap();
            let runs = finished_runs(&db, "probe", 1).await;
            s.shutdown().await.unwrap();
            runs
        });
        assert_eq!((runs[0].trigger.as_str(), runs[0].status.as_str()), ("manual", "succeeded"));
        assert!(runs[0].args.contains("sleep_ms"));
        let request = store::find_request(&mut db.conn(), id).unwrap().unwrap();
        assert_eq!(request.run_id, Some(runs[0].id));
        assert!(store::claim_requests(&mut db.conn(), Utc::now().naive_utc()).unwrap().is_empty());
    }

    fn a_run_is_kept_by_the_process_working_under_its_current_fence_only(db) {
        let t0 = naive("2026-11-10T09:00:00Z");
        let at = |secs: i64| t0 + TimeDelta::seconds(secs);
        let mut conn = db.conn();
        let claim = Claim {
            job: "probe",
            scheduled_for: t0,
            trigger: trigger::SCHEDULE,
            replica: "a",
            args: "{}",
            now: t0,
            lease_until: at(3),
        };
        let first = store::claim(&mut conn, claim).unwrap().unwrap();
        // a still works under fence 1, but b took the run over (fence 2) and then died.
        let taken = store::take_over_expired(&mut conn, "b", at(4), at(7), &[]).unwrap();
        assert_eq!(taken[0].1.fence, 2);
        // a's stale lease does not keep the run from being taken over again...
        let taken = store::take_over_expired(&mut conn, "a", at(8), at(11), &[first]).unwrap();
        assert_eq!(taken.len(), 1);
        let current = taken[0].1;
        assert_eq!(current.fence, 3);
        // ...but the current one does: its holder is alive, only late renewing.
        assert!(store::take_over_expired(&mut conn, "a", at(12), at(15), &[current]).unwrap().is_empty());
        assert_eq!(store::take_over_expired(&mut conn, "c", at(12), at(15), &[]).unwrap().len(), 1);
    }

    fn an_expired_lease_is_taken_over_and_the_old_holder_fenced_out(db) {
        let t0 = naive("2026-11-10T09:00:00Z");
        let claim = |replica: &'static str| Claim {
            job: "probe",
            scheduled_for: t0,
            trigger: trigger::SCHEDULE,
            replica,
            args: "{}",
            now: t0,
            lease_until: t0 + TimeDelta::seconds(3),
        };
        let mut conn = db.conn();
        let first = store::claim(&mut conn, claim("a")).unwrap().unwrap();
        assert!(store::claim(&mut conn, claim("b")).unwrap().is_none(), "one winner per occurrence");
        // Within the lease nobody takes it; after it, b does.
        assert!(store::take_over_expired(&mut conn, "b", t0 + TimeDelta::seconds(2), t0, &[]).unwrap().is_empty());
        let later = t0 + TimeDelta::seconds(4);
        let taken = store::take_over_expired(&mut conn, "b", later, later + TimeDelta::seconds(3), &[]).unwrap();
        assert_eq!(taken.len(), 1);
        let second = taken[0].1;
        assert_eq!(second.fence, first.fence + 1);
        // a wakes up: its renewal, its side effect and its result are refused.
        assert!(!store::renew(&mut conn, first, later + TimeDelta::seconds(60)).unwrap());
        assert!(!store::record_probe(&mut conn, first, "probe", t0, "a", later).unwrap());
        assert!(!store::finish(&mut conn, first, true, None, None, later).unwrap());
        // b's go through, once.
        assert!(store::record_probe(&mut conn, second, "probe", t0, "b", later).unwrap());
        assert!(store::finish(&mut conn, second, true, Some("{}"), None, later).unwrap());
        assert!(!store::finish(&mut conn, second, true, Some("{}"), None, later).unwrap());
        let probes = store::probes(&mut conn, "probe").unwrap();
        assert_eq!(probes, vec![(t0, first.run_id, "b".to_string())]);
        let run = store::find_run(&mut conn, first.run_id).unwrap().unwrap();
        assert_eq!((run.replica.as_str(), run.fence, run.status.as_str()), ("b", 2, "succeeded"));
    }
}
