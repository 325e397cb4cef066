//! `tierwise serve`: the scheduler (and, with `all`, the HTTP endpoints of the dashboard's
//! address) as a long-lived process with graceful shutdown.

use std::process::ExitCode;
use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context;
use tierwise_jobs::{Scheduler, State};

use super::jobs::{definitions, job_env, options};
use super::open_database;
use crate::cli::ServeCommand;
use crate::settings::Settings;

/// What one `serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parts {
    scheduler: bool,
    dashboard: bool,
}

pub fn run(settings: &Settings, command: ServeCommand) -> anyhow::Result<ExitCode> {
    let (bind, parts) = match command {
        ServeCommand::Scheduler => (
            settings.scheduler.bind.clone(),
            Parts {
                scheduler: true,
                dashboard: false,
            },
        ),
        ServeCommand::Dashboard { bind } => (
            bind.unwrap_or_else(|| settings.dashboard.bind.clone()),
            Parts {
                scheduler: false,
                dashboard: true,
            },
        ),
        ServeCommand::All => (
            settings.dashboard.bind.clone(),
            Parts {
                scheduler: true,
                dashboard: true,
            },
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(settings, &bind, parts))?;
    Ok(ExitCode::SUCCESS)
}

struct Health {
    state: Arc<State>,
    replica: String,
    jobs: Vec<String>,
}

async fn serve(settings: &Settings, bind: &str, parts: Parts) -> anyhow::Result<()> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    let env = Arc::new(job_env(settings, db.clone())?);
    let replica = env.replica.clone();
    let (scheduler, jobs) = if parts.scheduler {
        let defs = definitions(settings)?;
        let jobs: Vec<String> = defs
            .iter()
            .filter(|d| d.enabled)
            .map(|d| d.name.clone())
            .collect();
        let scheduler = Scheduler::start(env, defs, options(settings))
            .await
            .context("starting the scheduler")?;
        (Some(scheduler), jobs)
    } else {
        (None, Vec::new())
    };
    let health = web::Data::new(Health {
        state: scheduler
            .as_ref()
            .map_or_else(Arc::default, Scheduler::state),
        replica,
        jobs,
    });
    let dashboard = match parts.dashboard {
        true => {
            let key = tierwise_dashboard::session_key(&db).context("reading the session key")?;
            let views = tierwise_dashboard::views::Views::load().map_err(|e| anyhow::anyhow!(e))?;
            // The jobs page lists the definitions; a dashboard without a jobs folder lists none.
            let jobs = match definitions(settings) {
                Ok(defs) => defs,
                Err(e) if !parts.scheduler => {
                    tracing::warn!(error = %e, "no job definitions for the jobs page");
                    Vec::new()
                }
                Err(e) => return Err(e),
            };
            let state = web::Data::new(tierwise_dashboard::AppState {
                db: db.clone(),
                policy: settings.grading.clone(),
                default_locale: settings.dashboard.default_locale.clone(),
                views,
                jobs,
                users: Default::default(),
                cache: std::sync::Arc::default(),
            });
            Some((state, key))
        }
        false => None,
    };
    let secure = settings.dashboard.secure_cookies;
    let server = HttpServer::new(move || {
        let dashboard = dashboard.clone();
        App::new()
            .app_data(health.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(healthz))
            .route("/metrics", web::get().to(metrics))
            .configure(move |cfg| {
                if let Some((state, key)) = dashboard {
                    cfg.app_data(state).service(
                        web::scope("")
                            .wrap(tierwise_dashboard::session_middleware(&key, secure))
                            .wrap(tierwise_dashboard::security_headers())
                            .configure(tierwise_dashboard::configure),
                    );
                }
            })
    })
    .workers(2)
    .disable_signals()
    .bind(bind)
    .with_context(|| format!("listening on {bind} (scheduler.bind, dashboard.bind or --bind)"))?
    .run();
    let handle = server.handle();
    let http = tokio::spawn(server);
    if parts.dashboard {
        println!("tierwise dashboard on http://{bind}/ (health on /healthz)");
    }
    if parts.scheduler {
        println!("tierwise scheduler running; health on http://{bind}/healthz");
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.stop(true).await;
    let _ = http.await;
    if let Some(scheduler) = scheduler {
        scheduler
            .shutdown()
            .await
            .context("stopping the scheduler")?;
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

async fn healthz(h: web::Data<Health>) -> HttpResponse {
    let running: Vec<serde_json::Value> = h
        .state
        .running()
        .into_iter()
        .map(|(run, job)| serde_json::json!({ "run": run, "job": job }))
        .collect();
    let body = serde_json::json!({
        "status": if h.state.is_stopping() { "stopping" } else { "ok" },
        "replica": h.replica,
        "jobs": h.jobs,
        "running": running,
    });
    if h.state.is_stopping() {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

/// Prometheus text format.
async fn metrics(h: web::Data<Health>) -> HttpResponse {
    let mut out = String::new();
    out.push_str("# HELP tierwise_job_runs_total Job runs finished by this process.\n");
    out.push_str("# TYPE tierwise_job_runs_total counter\n");
    let stats = h.state.stats();
    for ((job, status), s) in &stats {
        out.push_str(&format!(
            "tierwise_job_runs_total{{job=\"{job}\",status=\"{status}\"}} {}\n",
            s.count
        ));
    }
    out.push_str("# HELP tierwise_job_run_seconds_total Time spent in finished job runs.\n");
    out.push_str("# TYPE tierwise_job_run_seconds_total counter\n");
    for ((job, status), s) in &stats {
        out.push_str(&format!(
            "tierwise_job_run_seconds_total{{job=\"{job}\",status=\"{status}\"}} {:.3}\n",
            s.seconds
        ));
    }
    out.push_str("# HELP tierwise_jobs_running Jobs running in this process.\n");
    out.push_str("# TYPE tierwise_jobs_running gauge\n");
    out.push_str(&format!(
        "tierwise_jobs_running {}\n",
        h.state.running().len()
    ));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}
