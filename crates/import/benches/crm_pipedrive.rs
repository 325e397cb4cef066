//! CRM import benchmark: 100,000 organisations and 1,000,000 won deals (plus 50 users) from a
//! local server that answers like Pipedrive's API v2, at 200 records per page, into SQLite and
//! PostgreSQL through the real connector and sync engine.
//!
//! ```text
//! cargo bench -p tierwise-import --bench crm_pipedrive
//! cargo bench -p tierwise-import --bench crm_pipedrive -- --deals 100000 --backend sqlite
//! ```
//! Target (issue 7): ≥ 20,000 records/s. The import runs in a child process so its peak RSS is
//! its own (the server, in this process, builds each page from the record ids and keeps
//! nothing). PostgreSQL comes from TIERWISE_BENCH_DATABASE_URL (default
//! postgres://postgres@127.0.0.1:5432/postgres). The report is printed and written to
//! target/bench-report/crm_pipedrive.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use secrecy::SecretString;
use serde_json::{Value, json};
use tierwise_import::crm::http::HttpSettings;
use tierwise_import::crm::pipedrive::{Pipedrive, PipedriveSettings};
use tierwise_import::crm::{SyncOptions, sync};
use tierwise_store::Database;
use tierwise_store::testing::{bench_child, bench_psql, peak_rss_kb, with_database_name};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers};

const TOKEN: &str = "bench-token";
const USERS: i64 = 50;

/// Pages built from ids: organisation `i` and deal `i` are functions of `i`.
struct GeneratedPipedrive {
    organizations: i64,
    deals: i64,
}

impl Respond for GeneratedPipedrive {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if request
            .headers
            .get("x-api-token")
            .and_then(|t| t.to_str().ok())
            != Some(TOKEN)
        {
            return ResponseTemplate::new(401)
                .set_body_json(json!({"success": false, "error": "Unauthorized"}));
        }
        if request.url.path() == "/v1/users" {
            let users: Vec<Value> = (1..=USERS)
                .map(|i| json!({"id": i, "name": format!("Owner {i}"), "email": format!("owner{i}@example.com"), "locale": "zh_CN"}))
                .collect();
            return ResponseTemplate::new(200)
                .set_body_json(json!({"success": true, "data": users}));
        }
        let query: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
        // No activities and no deleted deals: the benchmark measures organisations and deals.
        let deleted = query.get("status").map(String::as_str) == Some("deleted");
        if request.url.path() == "/api/v2/activities" || deleted {
            return ResponseTemplate::new(200).set_body_json(
                json!({"success": true, "data": [], "additional_data": {"next_cursor": null}}),
            );
        }
        let limit: i64 = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100);
        let after: i64 = query
            .get("cursor")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let deals = request.url.path() == "/api/v2/deals";
        let total = if deals {
            self.deals
        } else {
            self.organizations
        };
        let last = (after + limit).min(total);
        let data: Vec<Value> = (after + 1..=last)
            .map(|i| {
                let updated = format!("2024-05-{:02}T{:02}:{:02}:00Z", 1 + i % 28, i % 24, i % 60);
                if deals {
                    json!({"id": i, "title": format!("Deal {i}"), "value": 100 + i % 9_000, "currency": "CNY",
                        "org_id": 1 + i % self.organizations, "owner_id": 1 + i % USERS, "status": "won",
                        "won_time": format!("2024-{:02}-{:02}T10:00:00Z", 1 + i % 12, 1 + i % 28),
                        "update_time": updated})
                } else {
                    json!({"id": i, "name": format!("Organisation {i} 有限公司"), "owner_id": 1 + i % USERS,
                        "add_time": "2023-01-05T08:00:00Z", "update_time": updated})
                }
            })
            .collect();
        let next = (last < total).then(|| last.to_string());
        ResponseTemplate::new(200).set_body_json(
            json!({"success": true, "data": data, "additional_data": {"next_cursor": next}}),
        )
    }
}

struct Args {
    organizations: i64,
    deals: i64,
    page: u32,
    backends: Vec<String>,
    child: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        organizations: 100_000,
        deals: 1_000_000,
        page: 200,
        backends: vec!["sqlite".into(), "postgres".into()],
        child: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--organizations" => {
                args.organizations = it.next().context("--organizations N")?.parse()?
            }
            "--deals" => args.deals = it.next().context("--deals N")?.parse()?,
            "--page" => args.page = it.next().context("--page N")?.parse()?,
            "--backend" => args.backends = vec![it.next().context("--backend sqlite|postgres")?],
            "--child" => args.child = it.by_ref().collect(),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    Ok(args)
}

/// The child: imports everything from `url` into `database`; prints seconds, records and KiB.
fn child(url: &str, database: &str, page: u32) -> Result<()> {
    let db = Database::open(database, 8)?;
    db.migrate()?;
    let connector = Pipedrive::new(PipedriveSettings {
        enabled: true,
        base_url: url.to_owned(),
        api_token: SecretString::from(TOKEN.to_owned()),
        page_size: page,
        cost_field: None,
        http: HttpSettings::default(),
        ..PipedriveSettings::default()
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let report = runtime.block_on(sync(&db, &connector, &SyncOptions::default()))?;
    let seconds = started.elapsed().as_secs_f64();
    let records: u64 = report.entities.iter().map(|e| e.records).sum();
    if report.rejected() > 0 || !report.entities.iter().all(|e| e.completed) {
        bail!("the import did not complete cleanly: {report:?}");
    }
    println!("{seconds} {records} {}", peak_rss_kb());
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let [url, database, page] = args.child.as_slice() {
        return child(url, database, page.parse()?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let server = runtime.block_on(async {
        let server = MockServer::start().await;
        Mock::given(matchers::method("GET"))
            .respond_with(GeneratedPipedrive {
                organizations: args.organizations,
                deals: args.deals,
            })
            .mount(&server)
            .await;
        server
    });
    let mut report = format!(
        "# crm_pipedrive: {} organisations + {} won deals + {USERS} users, {} per page\n\n\
         Each import runs in its own process against a local server answering like Pipedrive's API v2 \
         (peak RSS is the importer's VmHWM).\n\n\
         | backend | seconds | records | records/s | peak RSS MiB |\n|---|---|---|---|---|\n",
        args.organizations, args.deals, args.page
    );
    let dir = tempfile::tempdir()?;
    for backend in &args.backends {
        let database = match backend.as_str() {
            "sqlite" => dir.path().join("crm.db").to_string_lossy().into_owned(),
            "postgres" => {
                let admin = std::env::var("TIERWISE_BENCH_DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
                let name = "tierwise_bench_crm";
                bench_psql(
                    &admin,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                )
                .map_err(anyhow::Error::msg)?;
                bench_psql(&admin, &format!("CREATE DATABASE {name}"))
                    .map_err(anyhow::Error::msg)?;
                with_database_name(&admin, name)
            }
            other => bail!("--backend {other}: use sqlite or postgres"),
        };
        let out = bench_child(&[&server.uri(), &database, &args.page.to_string()])
            .map_err(anyhow::Error::msg)?;
        let fields: Vec<f64> = out
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [seconds, records, kib] = fields[..] else {
            bail!("child printed '{out}'")
        };
        let name = if backend == "sqlite" {
            "SQLite"
        } else {
            "PostgreSQL"
        };
        writeln!(
            report,
            "| {name} | {seconds:.1} | {records:.0} | {:.0} | {:.0} |",
            records / seconds,
            kib / 1024.0
        )?;
    }
    report.push_str("\nTarget: ≥ 20,000 records/s (issue 7).\n");
    println!("{report}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-report");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("crm_pipedrive.md"), &report)?;
    Ok(())
}
