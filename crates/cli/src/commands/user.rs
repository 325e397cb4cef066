//! `tierwise user`: dashboard users.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context, bail};
use tierwise_dashboard::{Role, hash_password};
use tierwise_domain::Locale;
use tierwise_store::users::{self as store, NewUser};

use super::{open_database, print_table};
use crate::cli::UserCommand;
use crate::settings::Settings;

fn read_password() -> anyhow::Result<String> {
    let password = match std::env::var("TIERWISE_PASSWORD") {
        Ok(p) if !p.is_empty() => p,
        _ => {
            eprintln!("Password (one line on standard input):");
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.chars().count() < 10 {
        bail!("the password must have at least 10 characters");
    }
    Ok(password)
}

pub fn run(settings: &Settings, command: UserCommand) -> anyhow::Result<ExitCode> {
    let db = open_database(&settings.database.url, settings.database.pool_size)?;
    let mut conn = db.conn()?;
    match command {
        UserCommand::Add {
            username,
            role,
            owner,
            locale,
        } => {
            let role = Role::parse(&role)
                .with_context(|| format!("--role '{role}' is not admin, manager or viewer"))?;
            let locale = locale.unwrap_or_else(|| settings.dashboard.default_locale.clone());
            let locale =
                Locale::parse(&locale).map_err(|e| anyhow::anyhow!("--locale: {}", e.reason))?;
            let owner_id = match owner {
                None => None,
                Some(email) => Some(
                    tierwise_store::notify::owners(&mut conn)?
                        .into_iter()
                        .find(|o| o.email.eq_ignore_ascii_case(&email))
                        .with_context(|| format!("--owner: no owner {email} has been imported"))?
                        .id,
                ),
            };
            if role == Role::Manager && owner_id.is_none() {
                bail!("a manager needs --owner (the owner whose customers they manage)");
            }
            let hash = hash_password(&read_password()?).map_err(|e| anyhow::anyhow!(e))?;
            let created = store::add_user(
                &mut conn,
                NewUser {
                    username: &username,
                    password_hash: &hash,
                    role: role.as_str(),
                    owner_id,
                    locale: locale.as_str(),
                    now: chrono::Utc::now().naive_utc(),
                },
            )?;
            if created.is_none() {
                bail!(
                    "user '{username}' exists; change the password with `tierwise user passwd {username}`"
                );
            }
            println!("Created {} user {username}.", role.as_str());
        }
        UserCommand::Passwd { username } => {
            let hash = hash_password(&read_password()?).map_err(|e| anyhow::anyhow!(e))?;
            if !store::set_password(&mut conn, &username, &hash)? {
                bail!("no user '{username}' (`tierwise user list`)");
            }
            println!("Password of {username} changed.");
        }
        UserCommand::List => {
            let rows: Vec<Vec<String>> = store::list_users(&mut conn)?
                .into_iter()
                .map(|u| {
                    vec![
                        u.username,
                        u.role,
                        u.owner_id.map(|o| o.to_string()).unwrap_or_default(),
                        u.locale,
                        u.locked_until
                            .map(|t| format!("locked until {t}"))
                            .unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(&["user", "role", "owner", "locale", "status"], &rows);
        }
    }
    Ok(ExitCode::SUCCESS)
}
