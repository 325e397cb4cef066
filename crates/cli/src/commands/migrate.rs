//! `tierwise migrate`

use std::process::ExitCode;

use anyhow::Context;
use tierwise_store::{Database, migration_status};

use crate::settings::Settings;

pub fn run(settings: &Settings, status: bool) -> anyhow::Result<ExitCode> {
    let db = Database::open(&settings.database.url, settings.database.pool_size)
        .context("opening the database (database.url)")?;
    if status {
        let mut conn = db.conn()?;
        let rows: Vec<Vec<String>> = migration_status(&mut conn)?
            .into_iter()
            .map(|(name, applied)| {
                vec![
                    name,
                    if applied { "applied" } else { "pending" }.to_string(),
                ]
            })
            .collect();
        println!("Migrations of {}:", db.masked_url());
        super::print_table(&["migration", "state"], &rows);
        return Ok(ExitCode::SUCCESS);
    }
    let applied = db.migrate()?;
    if applied.is_empty() {
        println!("{} is up to date.", db.masked_url());
    } else {
        println!(
            "Applied {} migration(s) to {}:",
            applied.len(),
            db.masked_url()
        );
        for version in applied {
            println!("  {version}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
