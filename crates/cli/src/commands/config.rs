//! `tierwise config show | check`

use std::process::ExitCode;

use crate::settings::Settings;

pub fn show(settings: &Settings) -> anyhow::Result<ExitCode> {
    print!("{}", settings.to_masked_toml()?);
    Ok(ExitCode::SUCCESS)
}

pub fn check(settings: &Settings) -> anyhow::Result<ExitCode> {
    // Loading already validated every key; what is left is what needs the outside world.
    println!("configuration: ok");
    let db = super::open_database(&settings.database.url, settings.database.pool_size)?;
    println!("database: ok ({}, migrations applied)", db.masked_url());
    Ok(ExitCode::SUCCESS)
}
