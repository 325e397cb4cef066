//! Grading benchmark: 1,000,000 customers (~8.6M orders and as many invoices) graded end to end —
//! stored orders and invoices → stored, published grades — on SQLite and on PostgreSQL, against
//! the DuckDB peer (../shared/bench/rfm_duckdb.py) computing RFM scores, rfm8 segments and ABC
//! classes over the same orders from CSV, with the polars peer (rfm_polars.py) beside it. The
//! same run checks that tierwise's RFM, segment and ABC columns equal DuckDB's for every customer
//! and, at 1M customers, sets every time against the peers' published baselines.
//!
//! ```text
//! cargo bench -p tierwise-grading --bench grade_1m                     # 1M customers, median of 3
//! cargo bench -p tierwise-grading --bench grade_1m -- --customers 100000 --repeat 1
//! cargo bench -p tierwise-grading --bench grade_1m -- --only sqlite        # or postgres
//! ```
//! Needs a Python with numpy, polars and duckdb (`TIERWISE_BENCH_PYTHON`, default `python3`;
//! `python3 -m venv .venv && .venv/bin/pip install duckdb polars numpy`), `/usr/bin/time` and
//! `psql`. PostgreSQL comes from TIERWISE_BENCH_DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres). Data and databases are kept in
//! target/bench-grade and reused; each measurement runs in a child process so its peak RSS is
//! its own. The report is printed and written to target/bench-report/grade_1m.md.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tierwise_domain::Period;
use tierwise_domain::grading::Policy;
use tierwise_grading::{Mode, grade_period};
use tierwise_import::{ColumnMapping, FileImportOptions, ImportSettings, RecordKind, import_file};
use tierwise_store::Database;
use tierwise_store::grading::for_each_graded_customer;
use tierwise_store::queries::table_counts;
use tierwise_store::testing::{clear_period, median, peak_rss_kb, with_database_name};

/// The peers' published times at 1M customers (../shared/bench/README.md): DuckDB, polars.
const PUBLISHED_PEER_SECS: (f64, f64) = (12.3, 8.4);

const PERIOD: &str = "2026-10";
const AS_OF: &str = "2026-10-31";

struct Args {
    customers: u64,
    repeat: usize,
    python: String,
    /// Backends to measure (`--only sqlite` or `--only postgres`; both by default).
    only: Option<String>,
    child: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        customers: 1_000_000,
        repeat: 3,
        python: std::env::var("TIERWISE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into()),
        only: None,
        child: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--customers" => args.customers = it.next().context("--customers N")?.parse()?,
            "--repeat" => args.repeat = it.next().context("--repeat N")?.parse()?,
            "--python" => args.python = it.next().context("--python PATH")?,
            "--only" => {
                let only = it.next().context("--only sqlite|postgres")?.to_lowercase();
                if !matches!(only.as_str(), "sqlite" | "postgres") {
                    bail!("--only takes sqlite or postgres, not {only}");
                }
                args.only = Some(only);
            }
            "--child" => args.child = it.by_ref().collect(),
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    Ok(args)
}

fn period() -> Period {
    Period::parse(PERIOD).unwrap_or_else(|_| unreachable!("constant period"))
}

/// Child: load the CSV as orders and invoices unless already loaded, then grade the month before
/// (so the measured run has a previous period, as a monthly run does).
fn child_setup(url: &str, csv: &Path, expected_orders: u64) -> Result<()> {
    let db = Database::open(url, 2)?;
    db.migrate()?;
    let counts = table_counts(&mut *db.conn()?)?;
    if counts.orders != expected_orders || counts.invoices != expected_orders {
        if counts.orders != 0 {
            bail!(
                "{url} holds {} orders, not {expected_orders}: delete it and run again",
                counts.orders
            );
        }
        let mapping: ColumnMapping = toml::from_str(
            "[invoices.columns]\ninvoice_id = \"order_id\"\nissued_date = \"order_date\"\n",
        )?;
        for kind in [RecordKind::Orders, RecordKind::Invoices] {
            let options = FileImportOptions::from_settings(
                &ImportSettings::default(),
                kind,
                mapping.clone(),
            )?;
            let started = Instant::now();
            let report = import_file(&db, csv, &options)?;
            eprintln!(
                "  loaded {} {kind:?} in {:.0}s",
                report.totals.rows_written,
                started.elapsed().as_secs_f64()
            );
        }
    }
    if tierwise_store::grading::published_run(&mut *db.conn()?, period().prev())?.is_none() {
        grade_period(&db, period().prev(), &Policy::default(), Mode::Publish)?;
    }
    Ok(())
}

/// Child: one measured grading run, printed as `seconds peak_rss_kb timings-json`.
fn child_grade(url: &str) -> Result<()> {
    let db = Database::open(url, 2)?;
    clear_period(&mut *db.conn()?, period())?;
    let baseline = peak_rss_kb();
    let started = Instant::now();
    let report = grade_period(&db, period(), &Policy::default(), Mode::Publish)?;
    let secs = started.elapsed().as_secs_f64();
    let timings: Vec<String> = report
        .timings
        .iter()
        .map(|(k, ms)| format!("{k} {:.1}", *ms as f64 / 1000.0))
        .collect();
    println!(
        "{secs} {} {baseline} {} {}|{}",
        peak_rss_kb(),
        report.summary.graded,
        report.orders_read,
        timings.join(", ")
    );
    Ok(())
}

/// Child: compares tierwise's published RFM, segment and ABC with DuckDB's output.
fn child_check(url: &str, duckdb_csv: &Path) -> Result<()> {
    let mut peer: HashMap<String, Vec<String>> = HashMap::new();
    let mut reader = csv::Reader::from_path(duckdb_csv)?;
    for row in reader.records() {
        let row = row?;
        let fields: Vec<String> = row.iter().map(str::to_owned).collect();
        peer.insert(fields[0].clone(), fields[1..].to_vec());
    }
    let db = Database::open(url, 2)?;
    let (mut same, mut different, mut graded) = (0u64, 0u64, 0u64);
    let mut first_difference = None;
    for_each_graded_customer(&mut *db.conn()?, period(), |c| {
        if !c.graded {
            return Ok(());
        }
        graded += 1;
        let ours = vec![
            c.recency_days.map(|v| v.to_string()).unwrap_or_default(),
            c.frequency.to_string(),
            c.monetary.to_string(),
            c.r_score.map(|v| v.to_string()).unwrap_or_default(),
            c.f_score.map(|v| v.to_string()).unwrap_or_default(),
            c.m_score.map(|v| v.to_string()).unwrap_or_default(),
            c.segment.clone().unwrap_or_default(),
            c.abc_class.clone().unwrap_or_default(),
        ];
        match peer.get(&c.external_id) {
            Some(theirs) if *theirs == ours => same += 1,
            theirs => {
                different += 1;
                first_difference.get_or_insert(format!(
                    "{}: tierwise {ours:?}, duckdb {theirs:?}",
                    c.external_id
                ));
            }
        }
        Ok(())
    })?;
    println!(
        "{same} {different} {graded} {} {}",
        peer.len(),
        first_difference.unwrap_or_default()
    );
    Ok(())
}

/// Runs a command under /usr/bin/time; returns (wall seconds, peak RSS KiB).
fn timed(program: &str, args: &[&str]) -> Result<(f64, u64)> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "TIME %e %M", program])
        .args(args)
        .output()
        .context("running /usr/bin/time (apt-get install time)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{program} {args:?} failed: {stderr}");
    }
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("TIME "))
        .context("no timing line")?;
    let mut parts = line.split_whitespace().skip(1);
    let secs: f64 = parts.next().context("secs")?.parse()?;
    let kb: u64 = parts.next().context("rss")?.parse()?;
    Ok((secs, kb))
}

struct Run {
    secs: f64,
    rss_kb: u64,
    graded: u64,
    orders: u64,
    timings: String,
}

fn parse_run(line: &str) -> Result<Run> {
    let (head, timings) = line.split_once('|').context("timings")?;
    let mut parts = head.split_whitespace();
    let secs = parts.next().context("secs")?.parse()?;
    let rss_kb = parts.next().context("rss")?.parse()?;
    let _baseline: u64 = parts.next().context("baseline")?.parse()?;
    let graded = parts.next().context("graded")?.parse()?;
    let orders = parts.next().context("orders")?.parse()?;
    Ok(Run {
        secs,
        rss_kb,
        graded,
        orders,
        timings: timings.to_owned(),
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let Some(command) = args.child.first() {
        let rest: Vec<&str> = args.child.iter().skip(1).map(String::as_str).collect();
        return match (command.as_str(), rest.as_slice()) {
            ("setup", [url, csv, n]) => child_setup(url, Path::new(csv), n.parse()?),
            ("grade", [url]) => child_grade(url),
            ("check", [url, peer]) => child_check(url, Path::new(peer)),
            _ => bail!("unknown child command {:?}", args.child),
        };
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shared = root.join("../shared/bench");
    let dir = root.join("target/bench-grade");
    std::fs::create_dir_all(&dir)?;
    let n = args.customers;
    let csv = dir.join(format!("orders_{n}.csv"));
    if !csv.exists() {
        eprintln!("generating orders for {n} customers with gen_orders.py");
        let status = Command::new(&args.python)
            .arg(shared.join("gen_orders.py"))
            .args(["--customers", &n.to_string(), "--seed", "7", "--out"])
            .arg(&csv)
            .status()?;
        if !status.success() {
            bail!(
                "gen_orders.py failed; does {} have numpy and polars?",
                args.python
            );
        }
    }
    let csv = csv.canonicalize()?;
    let orders = {
        let text = std::fs::read(&csv)?;
        text.iter().filter(|&&b| b == b'\n').count() as u64 - 1
    };
    let csv_s = csv.to_string_lossy().to_string();

    // The peers: DuckDB (the one the targets name) and polars, the same job on the same CSV.
    let run_peer = |peer: &str| -> Result<(Vec<(f64, u64)>, std::path::PathBuf)> {
        let script = shared
            .join(format!("rfm_{peer}.py"))
            .to_string_lossy()
            .to_string();
        let out = dir.join(format!("rfm_{peer}_{n}.csv"));
        let out_s = out.to_string_lossy().to_string();
        let mut runs = Vec::new();
        for round in 0..args.repeat {
            eprintln!("{peer} {}/{}", round + 1, args.repeat);
            runs.push(timed(
                &args.python,
                &[&script, &csv_s, &out_s, "--asof", AS_OF, "--months", "24"],
            )?);
        }
        Ok((runs, out))
    };
    let (duckdb, peer_out) = run_peer("duckdb")?;
    let peer_s = peer_out.to_string_lossy().to_string();
    let (polars, polars_out) = run_peer("polars")?;
    // The peer scripts are meant to agree to the byte (../shared/bench/README.md).
    let peers_agree = std::fs::read(&peer_out)? == std::fs::read(&polars_out)?;

    let admin = std::env::var("TIERWISE_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
    let pg_name = format!("tierwise_bench_grade_{n}");
    if psql(
        &admin,
        &format!("SELECT 1 FROM pg_database WHERE datname = '{pg_name}'"),
    )?
    .is_empty()
    {
        psql(&admin, &format!("CREATE DATABASE {pg_name}"))?;
    }
    let backends = [
        (
            "SQLite",
            dir.join(format!("grade_{n}.db"))
                .to_string_lossy()
                .to_string(),
        ),
        ("PostgreSQL", with_database_name(&admin, &pg_name)),
    ];
    let mut results = Vec::new();
    let wanted = |name: &str| {
        args.only
            .as_deref()
            .is_none_or(|only| (only == "sqlite") == (name == "SQLite"))
    };
    for (name, url) in backends.iter().filter(|(name, _)| wanted(name)) {
        eprintln!("{name}: setting up (loads {orders} orders and invoices once; slow)");
        child(&["setup", url, &csv_s, &orders.to_string()])?;
        let mut runs = Vec::new();
        for round in 0..args.repeat {
            eprintln!("{name} {}/{}", round + 1, args.repeat);
            runs.push(parse_run(&child(&["grade", url])?)?);
        }
        let check = child(&["check", url, &peer_s])?;
        results.push((*name, runs, check));
    }

    let duck_secs = median(duckdb.iter().map(|d| d.0).collect());
    let duck_mib = duckdb.iter().map(|d| d.1).max().unwrap_or(0) as f64 / 1024.0;
    let polars_secs = median(polars.iter().map(|d| d.0).collect());
    let polars_mib = polars.iter().map(|d| d.1).max().unwrap_or(0) as f64 / 1024.0;
    let mut report = String::new();
    writeln!(
        report,
        "# Grading {n} customers ({orders} orders, {orders} invoices), median of {}",
        args.repeat
    )?;
    writeln!(report)?;
    writeln!(
        report,
        "| path | seconds | × DuckDB | peak RSS | target | met |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    writeln!(
        report,
        "| DuckDB peer (RFM + rfm8 + ABC from CSV) | {duck_secs:.2} | 1.00 | {duck_mib:.0} MiB | – | – |"
    )?;
    writeln!(
        report,
        "| polars peer (the same job) | {polars_secs:.2} | {:.2} | {polars_mib:.0} MiB | – | – |",
        polars_secs / duck_secs
    )?;
    let mut details = String::new();
    let mut medians = Vec::new();
    for (name, runs, check) in &results {
        let secs = median(runs.iter().map(|r| r.secs).collect());
        medians.push((*name, secs));
        let peak_kib = runs.iter().map(|r| r.rss_kb).max().unwrap_or(0) as f64;
        // The target is in MB (10⁶ bytes); the kernel counts KiB.
        let (mib, mb) = (peak_kib / 1024.0, peak_kib * 1024.0 / 1e6);
        let ratio = secs / duck_secs;
        let limit = if *name == "SQLite" { 2.0 } else { 1.5 };
        let yes_no = |met: bool| if met { "yes" } else { "no" };
        writeln!(
            report,
            "| tierwise → {name} (stored orders + invoices → published grades) | {secs:.2} | {ratio:.2} | {mib:.0} MiB ({mb:.0} MB) | ≤ {limit:.1}×, ≤ 600 MB | time {}, memory {} |",
            yes_no(ratio <= limit),
            yes_no(mb <= 600.0)
        )?;
        if let Some(run) = runs.iter().min_by(|a, b| a.secs.total_cmp(&b.secs)) {
            writeln!(
                details,
                "- {name}: {} customers graded, {} orders read; fastest run's phases (s): {}",
                run.graded, run.orders, run.timings
            )?;
        }
        let fields: Vec<&str> = check.splitn(5, ' ').collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("?");
        writeln!(
            details,
            "  - equal to DuckDB on recency, frequency, monetary, R, F, M, segment and ABC: {} of {} graded customers (DuckDB rows: {}); different: {}{}",
            field(0),
            field(2),
            field(3),
            field(1),
            fields
                .get(4)
                .filter(|f| !f.is_empty())
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        )?;
    }
    writeln!(report)?;
    report.push_str(&details);
    writeln!(
        report,
        "- polars' output is {} DuckDB's.",
        if peers_agree {
            "byte-identical to"
        } else {
            "NOT identical to"
        }
    )?;
    if n == 1_000_000 {
        // The targets were set against these figures; peers here may run at another speed.
        let (published_duckdb, published_polars) = PUBLISHED_PEER_SECS;
        write!(
            report,
            "- Against the published peer baselines (../shared/bench/README.md: DuckDB {published_duckdb} s, polars {published_polars} s; measured here {:.2}× and {:.2}× of those):",
            duck_secs / published_duckdb,
            polars_secs / published_polars
        )?;
        for (name, secs) in &medians {
            write!(report, " {name} {:.2}× DuckDB's;", secs / published_duckdb)?;
        }
        writeln!(report)?;
    }
    writeln!(report)?;
    writeln!(
        report,
        "tierwise computes the whole grade (RFM, segments, ABC, credit from invoices, profit, composite, tiers with hysteresis against the previous month, lifecycle, CLV, explanation JSON) and publishes it; DuckDB computes RFM, segment and ABC only and writes a CSV."
    )?;
    print!("{report}");
    let report_dir = root.join("target/bench-report");
    std::fs::create_dir_all(&report_dir)?;
    std::fs::write(report_dir.join("grade_1m.md"), report)?;
    Ok(())
}

fn child(args: &[&str]) -> Result<String> {
    tierwise_store::testing::bench_child(args).map_err(anyhow::Error::msg)
}

fn psql(url: &str, sql: &str) -> Result<String> {
    tierwise_store::testing::bench_psql(url, sql).map_err(anyhow::Error::msg)
}
