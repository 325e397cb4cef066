//! Scheduler processes on one PostgreSQL database: every occurrence runs exactly once across
//! replicas, and a replica killed mid-job is replaced after its lease.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tierwise_store::jobs as store;
use tierwise_store::testing::{TestBackend, TestDb};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scheduler(db: &TestDb, jobs: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(["serve", "scheduler"])
        .env("TIERWISE__DATABASE__URL", db.url())
        .env("TIERWISE__SCHEDULER__JOBS_DIR", jobs)
        .env("TIERWISE__SCHEDULER__BIND", format!("127.0.0.1:{port}"))
        .env("TIERWISE__SCHEDULER__LEASE_SECS", "3")
        .env("TIERWISE__SCHEDULER__POLL_SECS", "1")
        .env("TIERWISE__SCHEDULER__SHUTDOWN_GRACE_SECS", "10")
        .env("TIERWISE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn terminate(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "graceful shutdown exits 0: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("the scheduler did not stop on SIGTERM");
}

fn http_get(port: u16, path: &str) -> String {
    for _ in 0..50 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("nothing listens on {port}");
}

#[test]
fn two_replicas_run_every_occurrence_exactly_once() {
    let db = TestDb::new(TestBackend::Postgres);
    let jobs = tempfile::tempdir().unwrap();
    std::fs::write(
        jobs.path().join("tick.toml"),
        "schedule = \"* * * * * *\"\nkind = \"probe\"\ncatch_up = false\n",
    )
    .unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let a = scheduler(&db, jobs.path(), port_a);
    let b = scheduler(&db, jobs.path(), port_b);
    let health = http_get(port_a, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains("\"status\":\"ok\""),
        "{health}"
    );
    std::thread::sleep(Duration::from_secs(30));
    // Whichever replica won occurrences counts them in its metrics.
    let metrics = http_get(port_a, "/metrics") + &http_get(port_b, "/metrics");
    assert!(
        metrics.contains("tierwise_job_runs_total{job=\"tick\",status=\"succeeded\"}"),
        "{metrics}"
    );
    terminate(a);
    terminate(b);

    let runs = store::history(&mut db.conn(), Some("tick"), 1000).unwrap();
    assert!(
        runs.len() >= 25,
        "a tick a second for 30 s, got {}",
        runs.len()
    );
    assert!(runs.iter().all(|r| r.status == "succeeded"), "{runs:?}");
    let mut occurrences: Vec<_> = runs.iter().map(|r| r.scheduled_for).collect();
    occurrences.sort();
    occurrences.dedup();
    assert_eq!(occurrences.len(), runs.len(), "an occurrence ran twice");
    // The job's own side effect: one probe per occurrence, by the run that claimed it.
    let probes = store::probes(&mut db.conn(), "tick").unwrap();
    let mut probed: Vec<_> = probes.iter().map(|p| p.0).collect();
    probed.dedup();
    assert_eq!(probes.len(), runs.len());
    assert_eq!(probed, occurrences);
    // Which replica wins each occurrence depends on the phase of its trigger clock, so one may
    // win them all; exactly-once is what matters.
}

#[test]
fn a_killed_replicas_job_is_finished_by_another_after_its_lease() {
    let db = TestDb::new(TestBackend::Postgres);
    let jobs = tempfile::tempdir().unwrap();
    std::fs::write(
        jobs.path().join("long.toml"),
        "schedule = \"0 0 0 1 1 *\"\nkind = \"probe\"\ncatch_up = false\n[args]\nsleep_ms = 4000\n",
    )
    .unwrap();
    let mut a = scheduler(&db, jobs.path(), free_port());
    let now = chrono::Utc::now().naive_utc();
    store::request_run(&mut db.conn(), "long", "{}", "test", now).unwrap();
    // Wait until a holds the run, then kill it mid-job.
    let deadline = Instant::now() + Duration::from_secs(20);
    let run = loop {
        let runs = store::history(&mut db.conn(), Some("long"), 10).unwrap();
        if let Some(r) = runs.into_iter().next() {
            break r;
        }
        assert!(Instant::now() < deadline, "a never claimed the request");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(run.replica.ends_with(&format!("-{}", a.id())), "{run:?}");
    a.kill().unwrap();
    a.wait().unwrap();
    let b = scheduler(&db, jobs.path(), free_port());
    let b_id = b.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let r = store::find_run(&mut db.conn(), run.id).unwrap().unwrap();
        if r.status != "running" {
            break r;
        }
        assert!(Instant::now() < deadline, "b never finished the run: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    terminate(b);
    assert_eq!(done.status, "succeeded", "{done:?}");
    assert!(done.replica.ends_with(&format!("-{b_id}")), "{done:?}");
    assert_eq!(done.fence, 2);
    let probes = store::probes(&mut db.conn(), "long").unwrap();
    assert_eq!(probes.len(), 1, "the result is written once: {probes:?}");
    assert!(probes[0].2.ends_with(&format!("-{b_id}")));
}

#[test]
fn a_bad_job_file_stops_start_up_naming_file_and_field() {
    let jobs = tempfile::tempdir().unwrap();
    std::fs::write(
        jobs.path().join("broken.toml"),
        "schedule = \"0 0 2 1 * *\"\ntimezone = \"Europe/Atlantis\"\nkind = \"grade\"\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(["serve", "scheduler"])
        .env("TIERWISE__DATABASE__URL", data.path().join("t.db"))
        .env("TIERWISE__SCHEDULER__JOBS_DIR", jobs.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.toml") && err.contains("timezone: 'Europe/Atlantis'"),
        "{err}"
    );
}

#[test]
fn jobs_run_here_and_history_on_sqlite() {
    let jobs = tempfile::tempdir().unwrap();
    std::fs::write(
        jobs.path().join("probe.toml"),
        "schedule = \"0 0 0 1 1 *\"\nkind = \"probe\"\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tierwise"))
            .args(args)
            .env("TIERWISE__DATABASE__URL", data.path().join("t.db"))
            .env("TIERWISE__SCHEDULER__JOBS_DIR", jobs.path())
            .output()
            .unwrap()
    };
    let out = run(&["jobs", "run", "probe", "--arg", "sleep_ms=10", "--here"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));
    let out = run(&["jobs", "run", "probe", "--arg", "sleep_ms=soon", "--here"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("args.sleep_ms"));
    let history = String::from_utf8_lossy(&run(&["jobs", "history"]).stdout).to_string();
    assert!(
        history.contains("probe") && history.contains("manual") && history.contains("succeeded"),
        "{history}"
    );
    let list = String::from_utf8_lossy(&run(&["jobs", "list"]).stdout).to_string();
    assert!(
        list.contains("0 0 0 1 1 *") && list.contains("succeeded"),
        "{list}"
    );
}

#[test]
fn users_are_added_listed_and_checked() {
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str], password: &str| {
        Command::new(env!("CARGO_BIN_EXE_tierwise"))
            .args(args)
            .env("TIERWISE__DATABASE__URL", data.path().join("t.db"))
            .env("TIERWISE_PASSWORD", password)
            .output()
            .unwrap()
    };
    let out = run(
        &["user", "add", "ops", "--role", "admin"],
        "long enough password",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &["user", "add", "ops", "--role", "admin"],
        "long enough password",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    let out = run(&["user", "add", "shorty", "--role", "viewer"], "short");
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 10"));
    let out = run(
        &["user", "add", "m", "--role", "manager"],
        "long enough password",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--owner"));
    let list = String::from_utf8_lossy(&run(&["user", "list"], "").stdout).to_string();
    assert!(
        list.contains("ops") && list.contains("admin") && !list.contains("shorty"),
        "{list}"
    );
    let out = run(&["user", "passwd", "nobody"], "long enough password");
    assert!(!out.status.success());
}
