//! `tierwise policy`: the policy in force, its versions, and a return to the configuration.

use std::process::ExitCode;

use anyhow::Context;
use tierwise_domain::grading::PolicyAdjustment;

use super::{open_database, print_table};
use crate::cli::PolicyCommand;
use crate::settings::Settings;

pub fn run(settings: &Settings, command: PolicyCommand) -> anyhow::Result<ExitCode> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    let mut conn = db.conn()?;
    match command {
        PolicyCommand::Show => {
            let effective = tierwise_grading::effective_policy(&mut conn, &settings.grading)?;
            match &effective.version {
                Some(v) => println!(
                    "# Policy {} in force: [grading] with version {} applied by {} on {} ({}).",
                    effective.policy.hash(),
                    v.id,
                    v.author,
                    v.created_at.format("%Y-%m-%d %H:%M UTC"),
                    v.reason
                ),
                None => println!(
                    "# Policy {} in force: [grading] as configured.",
                    effective.policy.hash()
                ),
            }
            let toml =
                toml::to_string_pretty(&effective.policy).context("writing the policy as TOML")?;
            print!("{toml}");
        }
        PolicyCommand::History { limit } => {
            let versions = tierwise_store::policy::history(&mut conn, limit)?;
            if versions.is_empty() {
                println!(
                    "No policy version was ever applied: [grading] is in force as configured."
                );
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = versions
                .iter()
                .map(|v| {
                    vec![
                        v.id.to_string(),
                        v.created_at.format("%Y-%m-%d %H:%M").to_string(),
                        v.author.clone(),
                        format!("{} -> {}", v.previous_hash, v.policy_hash),
                        v.adjustment.to_string(),
                        v.reason.clone(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "version",
                    "applied (UTC)",
                    "by",
                    "policy",
                    "changes",
                    "reason",
                ],
                &rows,
            );
        }
        PolicyCommand::Reset { reason, author } => {
            let (id, policy) = tierwise_grading::apply_policy(
                &mut conn,
                &settings.grading,
                &PolicyAdjustment::default(),
                &author,
                &reason,
            )?;
            println!(
                "Version {id}: [grading] as configured is in force again (policy {}); the next grading run uses it.",
                policy.hash()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
