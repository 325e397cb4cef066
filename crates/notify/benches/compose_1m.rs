//! Notification benchmark: compose the digests of 1,000 owners over 1,000,000 graded customers
//! (two graded months, so tier changes, movers and churn alerts are real), queue them, and send
//! them to an SMTP server on loopback (mailin-embedded, in-process).
//!
//! ```text
//! cargo bench -p tierwise-notify --bench compose_1m                       # SQLite and PostgreSQL
//! cargo bench -p tierwise-notify --bench compose_1m -- --customers 100000 --backend sqlite
//! ```
//! Targets (issue 4): composing ≤ 10 s and ≤ 500 MB peak RSS. Data is generated once (seeded)
//! into target/bench-notify as CSV, imported through the real importer and graded for 2026-09
//! and 2026-10; databases are reused. Each measurement runs in a child process so its peak RSS
//! is its own. PostgreSQL comes from TIERWISE_BENCH_DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres) and needs `psql`. The report is printed and
//! written to target/bench-report/compose_1m.md.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use mailin_embedded::{Handler, Response, Server, SslConfig, response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tierwise_domain::Period;
use tierwise_domain::grading::Policy;
use tierwise_grading::{Mode, grade_period};
use tierwise_import::{ColumnMapping, FileImportOptions, ImportSettings, RecordKind, import_file};
use tierwise_notify::compose::{Owners, compose_period};
use tierwise_notify::send::drain_blocking;
use tierwise_notify::{
    Composer, NotifySettings, SendingSettings, SmtpSecurity, SmtpSettings, Templates,
};
use tierwise_store::Database;
use tierwise_store::notify::{enqueue, outbox_counts};
use tierwise_store::testing::{clear_outbox, median, peak_rss_kb, with_database_name};

const PERIODS: [&str; 2] = ["2026-09", "2026-10"];

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 2).unwrap_or_default()
}

struct Args {
    customers: u64,
    owners: u64,
    repeat: usize,
    backends: Vec<String>,
    child: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        customers: 1_000_000,
        owners: 1_000,
        repeat: 3,
        backends: vec!["sqlite".into(), "postgres".into()],
        child: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--customers" => args.customers = it.next().context("--customers N")?.parse()?,
            "--owners" => args.owners = it.next().context("--owners N")?.parse()?,
            "--repeat" => args.repeat = it.next().context("--repeat N")?.parse()?,
            "--backend" => args.backends = vec![it.next().context("--backend sqlite|postgres")?],
            "--child" => args.child = it.by_ref().collect(),
            _ => {}
        }
    }
    Ok(args)
}

/// Writes the seeded CSV files (owners, customers, orders, activities) unless present.
fn generate(dir: &Path, customers: u64, owners: u64) -> Result<[PathBuf; 4]> {
    let names = [
        "owners.csv",
        "customers.csv",
        "orders.csv",
        "activities.csv",
    ];
    let paths = names.map(|n| dir.join(n));
    if paths.iter().all(|p| p.exists()) {
        return Ok(paths);
    }
    std::fs::create_dir_all(dir)?;
    let mut rng = StdRng::seed_from_u64(4);
    let file = |i: usize, header: &str| -> Result<std::io::BufWriter<std::fs::File>> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&paths[i])?);
        writeln!(w, "{header}")?;
        Ok(w)
    };
    let mut w = file(0, "email,name,locale")?;
    for o in 0..owners {
        let locale = if o % 2 == 0 { "zh-CN" } else { "en" };
        writeln!(w, "owner{o}@bench.example,Owner {o},{locale}")?;
    }
    w.flush()?;
    let mut cw = file(1, "customer_id,name,owner_email")?;
    let mut ow = file(2, "order_id,customer_id,order_date,amount")?;
    let mut aw = file(3, "activity_id,customer_id,kind,occurred_at")?;
    let start = NaiveDate::from_ymd_opt(2024, 11, 1).unwrap_or_default();
    let span = (NaiveDate::from_ymd_opt(2026, 10, 31).unwrap_or_default() - start).num_days();
    let (mut order_id, mut activity_id) = (0u64, 0u64);
    for c in 0..customers {
        writeln!(
            cw,
            "C{c:07},Customer {c} & Co,owner{}@bench.example",
            c % owners
        )?;
        // 1–8 orders over two years, amounts spread over three orders of magnitude.
        for _ in 0..rng.random_range(1..=8) {
            order_id += 1;
            let day = start + chrono::TimeDelta::days(rng.random_range(0..=span));
            let amount = 10f64.powf(rng.random_range(2.0..5.0)).round();
            writeln!(ow, "O{order_id},C{c:07},{day},{amount}")?;
        }
        for kind in ["call", "visit"] {
            if rng.random_bool(0.4) {
                activity_id += 1;
                let day = start + chrono::TimeDelta::days(rng.random_range(0..=span));
                writeln!(aw, "A{activity_id},C{c:07},{kind},{day}T10:00:00Z")?;
            }
        }
    }
    cw.flush()?;
    ow.flush()?;
    aw.flush()?;
    Ok(paths)
}

/// Child: imports the CSV files and grades both months, unless done before.
fn child_setup(url: &str, dir: &Path) -> Result<()> {
    let db = Database::open(url, 4)?;
    db.migrate()?;
    let last = Period::parse(PERIODS[1])?;
    if tierwise_store::grading::published_run(&mut *db.conn()?, last)?.is_some() {
        return Ok(());
    }
    let kinds = [
        ("owners.csv", RecordKind::Owners),
        ("customers.csv", RecordKind::Customers),
        ("orders.csv", RecordKind::Orders),
        ("activities.csv", RecordKind::Activities),
    ];
    for (file, kind) in kinds {
        let options = FileImportOptions::from_settings(
            &ImportSettings::default(),
            kind,
            ColumnMapping::default(),
        )?;
        let report = import_file(&db, &dir.join(file), &options)?;
        eprintln!(
            "  imported {file}: {} rows in {:.1}s",
            report.totals.rows_written,
            report.elapsed.as_secs_f64()
        );
    }
    for p in PERIODS {
        let started = Instant::now();
        let r = grade_period(&db, Period::parse(p)?, &Policy::default(), Mode::Publish)?;
        eprintln!(
            "  graded {p}: {} customers in {:.1}s",
            r.summary.graded,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn settings() -> NotifySettings {
    NotifySettings {
        admins: vec!["ops@bench.example".into()],
        ..NotifySettings::default()
    }
}

/// Child: one measured composition (no writes), then queueing what it composed. Prints
/// `compose_s enqueue_s peak_kb messages html_bytes`.
fn child_compose(url: &str) -> Result<()> {
    let db = Database::open(url, 4)?;
    let mut conn = db.conn()?;
    clear_outbox(&mut conn)?;
    let policy = Policy::default();
    let settings = settings();
    let templates = Templates::load(None)?;
    let composer = Composer {
        policy: &policy,
        settings: &settings,
        templates: &templates,
        mail_domain: "bench.example",
        today: today(),
    };
    let started = Instant::now();
    let messages = compose_period(
        &mut conn,
        &composer,
        Period::parse(PERIODS[1])?,
        Owners::All,
    )?
    .context("the period is not graded")?;
    let compose_s = started.elapsed().as_secs_f64();
    let html: usize = messages.iter().map(|m| m.body_html.len()).sum();
    let started = Instant::now();
    let queued = tierwise_store::transaction(&mut conn, |c| {
        enqueue(c, &messages, chrono::Utc::now().naive_utc())
    })?;
    let enqueue_s = started.elapsed().as_secs_f64();
    println!("{compose_s} {enqueue_s} {} {queued} {html}", peak_rss_kb());
    Ok(())
}

#[derive(Clone)]
struct Counter(Arc<AtomicUsize>);

impl Handler for Counter {
    fn data_end(&mut self) -> Response {
        self.0.fetch_add(1, Ordering::Relaxed);
        response::OK
    }
}

/// Child: sends the queued messages to an in-process SMTP server. Prints `seconds sent`.
fn child_send(url: &str) -> Result<()> {
    let db = Database::open(url, 4)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let received = Arc::new(AtomicUsize::new(0));
    let mut server = Server::new(Counter(Arc::clone(&received)));
    server
        .with_name("bench")
        .with_ssl(SslConfig::None)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_num_threads(8)
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    let smtp = SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        from: "tierwise <noreply@bench.example>".into(),
        ..SmtpSettings::default()
    };
    let sending = SendingSettings::default();
    let started = Instant::now();
    let report = drain_blocking(&db, &smtp, &sending)?;
    let secs = started.elapsed().as_secs_f64();
    if report.sent != received.load(Ordering::Relaxed) {
        bail!(
            "sent {} but the server received {}",
            report.sent,
            received.load(Ordering::Relaxed)
        );
    }
    let counts = outbox_counts(&mut *db.conn()?)?;
    eprintln!("  outbox after sending: {counts:?}");
    println!("{secs} {}", report.sent);
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let [what, url, rest @ ..] = args.child.as_slice() {
        return match what.as_str() {
            "setup" => child_setup(url, Path::new(rest.first().context("data dir")?)),
            "compose" => child_compose(url),
            "send" => child_send(url),
            other => bail!("unknown child {other}"),
        };
    }
    let (n, owners) = (args.customers, args.owners);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let dir = target.join("bench-notify").join(format!("{n}_{owners}"));
    eprintln!(
        "generating data for {n} customers and {owners} owners in {}",
        dir.display()
    );
    generate(&dir, n, owners)?;
    let dir_s = dir.to_string_lossy().to_string();

    let mut backends = Vec::new();
    for b in &args.backends {
        match b.as_str() {
            "sqlite" => backends.push((
                "SQLite",
                dir.join("notify.db").to_string_lossy().to_string(),
            )),
            "postgres" => {
                let admin = std::env::var("TIERWISE_BENCH_DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                let name = format!("tierwise_bench_notify_{n}_{owners}");
                if psql(
                    &admin,
                    &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
                )?
                .is_empty()
                {
                    psql(&admin, &format!("CREATE DATABASE {name}"))?;
                }
                backends.push(("PostgreSQL", with_database_name(&admin, &name)));
            }
            other => bail!("--backend {other}: use sqlite or postgres"),
        }
    }

    let mut report = String::new();
    writeln!(
        report,
        "# compose_1m: digests for {owners} owners over {n} customers\n"
    )?;
    writeln!(
        report,
        "Median of {} runs; each run in its own process (peak RSS is the process's VmHWM).\n",
        args.repeat
    )?;
    writeln!(
        report,
        "| backend | compose s | peak RSS MiB | queue s | messages | HTML MiB | send s | sent/s |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    for (name, url) in &backends {
        eprintln!("{name}: setting up (once)");
        child(&["setup", url, &dir_s])?;
        let (mut compose, mut rss, mut queue, mut msgs, mut html) =
            (Vec::new(), Vec::new(), Vec::new(), 0, 0.0);
        for round in 0..args.repeat {
            let out = child(&["compose", url])?;
            let f: Vec<f64> = out
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let [c, q, kb, m, h] = f[..] else {
                bail!("unexpected child output: {out}")
            };
            eprintln!(
                "{name} {}/{}: compose {c:.2}s, {:.0} MiB, queue {q:.2}s, {m} messages",
                round + 1,
                args.repeat,
                kb / 1024.0
            );
            compose.push(c);
            rss.push(kb / 1024.0);
            queue.push(q);
            msgs = m as u64;
            html = h / 1_048_576.0;
        }
        let out = child(&["send", url])?;
        let f: Vec<f64> = out
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [send_s, sent] = f[..] else {
            bail!("unexpected child output: {out}")
        };
        writeln!(
            report,
            "| {name} | {:.2} | {:.0} | {:.2} | {msgs} | {html:.1} | {send_s:.2} | {:.0} |",
            median(compose),
            median(rss),
            median(queue),
            sent / send_s
        )?;
    }
    writeln!(
        report,
        "\nTargets: compose ≤ 10 s and ≤ 500 MB peak RSS (issue 4). Sending goes to an in-process \
         SMTP server on loopback with [notify.sending] defaults (4 connections)."
    )?;
    println!("{report}");
    let out = target.join("bench-report");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("compose_1m.md"), &report)?;
    Ok(())
}

fn child(args: &[&str]) -> Result<String> {
    tierwise_store::testing::bench_child(args).map_err(anyhow::Error::msg)
}

fn psql(url: &str, sql: &str) -> Result<String> {
    tierwise_store::testing::bench_psql(url, sql).map_err(anyhow::Error::msg)
}
