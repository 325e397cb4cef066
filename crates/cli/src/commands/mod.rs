//! Command implementations. Each returns the process exit code.

mod config;
mod demo;
mod grade;
mod import;
mod jobs;
mod migrate;
mod notify;
mod policy;
pub(crate) mod serve;
mod user;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use tierwise_store::Database;

use crate::cli::{Cli, Command, ConfigCommand};
use crate::settings::{Settings, Sources};

/// Exit status of an import that loaded its good rows but rejected some.
pub const EXIT_REJECTS: u8 = 3;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let sources = Sources {
        config_dir: cli.config_dir.clone(),
        env: std::env::var("TIERWISE_ENV").ok().filter(|e| !e.is_empty()),
    };
    let settings = Settings::load(&sources)?;
    let progress = std::io::stderr().is_terminal() && !cli.quiet;
    match cli.command {
        Command::Migrate { status } => migrate::run(&settings, status),
        Command::Import(command) => import::run(&settings, command, progress),
        Command::Demo(args) => demo::run(&settings, &args, progress),
        Command::Grade(args) => grade::grade(&settings, &args, progress),
        Command::Grades(command) => grade::grades(&settings, command),
        Command::Override(command) => grade::override_command(&settings, command),
        Command::Policy(command) => policy::run(&settings, command),
        Command::Notify(command) => notify::run(&settings, command),
        Command::Serve(command) => serve::run(&settings, command),
        Command::Jobs(command) => jobs::run(&settings, command),
        Command::User(command) => user::run(&settings, command),
        Command::Config(ConfigCommand::Show) => config::show(&settings),
        Command::Config(ConfigCommand::Check) => config::check(&settings),
    }
}

/// Opens the database and applies pending migrations (cheap when there are none).
pub fn open_database(url: &str, pool_size: u32) -> anyhow::Result<Database> {
    let db = Database::open(url, pool_size).context("opening the database (database.url)")?;
    let applied = db.migrate().context("applying database migrations")?;
    if !applied.is_empty() {
        tracing::info!(count = applied.len(), database = %db.masked_url(), "applied migrations");
    }
    Ok(db)
}

/// Prints rows as an aligned table (widths by characters, so Chinese text lines up roughly).
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(display_width(cell));
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w.saturating_sub(display_width(c)))))
            .collect();
        println!("  {}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Terminal columns of a string: CJK characters take two.
fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            if ('\u{1100}'..='\u{ffdc}').contains(&c) && !c.is_ascii() {
                2
            } else {
                1
            }
        })
        .sum()
}
