//! Typed configuration: `config/default.toml` (built in) → `config/<TIERWISE_ENV>.toml` →
//! `TIERWISE__SECTION__KEY` environment variables. Validated at start; every error names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use tierwise_domain::EmailAddress;
use tierwise_domain::grading::{Policy, PredictivePolicy};
use tierwise_import::{ColumnMapping, ImportSettings};
use tierwise_notify::{NotifySettings, SmtpSettings};
use tierwise_store::{DatabaseUrl, mask_password};

/// The defaults, compiled in so the binary works from any folder.
pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");

/// All settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[database]`
    pub database: DatabaseSettings,
    /// `[import]`
    pub import: ImportSettings,
    /// `[grading]`
    pub grading: Policy,
    /// `[predictive]`
    pub predictive: PredictivePolicy,
    /// `[smtp]`
    pub smtp: SmtpSettings,
    /// `[notify]`
    pub notify: NotifySettings,
    /// `[dashboard]`
    pub dashboard: DashboardSettings,
    /// `[scheduler]`
    pub scheduler: SchedulerSettings,
    /// `[crm]`
    pub crm: tierwise_import::crm::CrmSettings,
}

fn masked_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_password(url))
}

/// `[database]`
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// SQLite path or `postgres://` URL.
    #[serde(serialize_with = "masked_url")]
    pub url: String,
    /// Pool size.
    pub pool_size: u32,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &mask_password(&self.url))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "data/tierwise.db".into(),
            pool_size: 8,
        }
    }
}

/// `[dashboard]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardSettings {
    /// Listen address.
    pub bind: String,
    /// Send the session cookie only over HTTPS (turn off only for plain-HTTP development).
    pub secure_cookies: bool,
    /// Language of the login page and of new users (`zh-CN` or `en`); each user can switch.
    pub default_locale: String,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            secure_cookies: true,
            default_locale: "zh-CN".into(),
        }
    }
}

/// `[scheduler]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// Job definitions folder.
    pub jobs_dir: String,
    /// Default time zone of cron expressions.
    pub timezone: String,
    /// Address of `/healthz` and `/metrics` of `tierwise serve scheduler`.
    pub bind: String,
    /// Lease of a running occurrence, in seconds.
    pub lease_secs: u64,
    /// Seconds between looks for expired leases and manual requests.
    pub poll_secs: u64,
    /// Hours back a missed occurrence is still caught up on start.
    pub catch_up_hours: u64,
    /// Seconds shutdown waits for running jobs.
    pub shutdown_grace_secs: u64,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            jobs_dir: "jobs".into(),
            timezone: "UTC".into(),
            bind: "127.0.0.1:8081".into(),
            lease_secs: 60,
            poll_secs: 5,
            catch_up_hours: 72,
            shutdown_grace_secs: 30,
        }
    }
}

/// Where to read configuration from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Folder with `default.toml` and `<env>.toml`.
    pub config_dir: PathBuf,
    /// The `TIERWISE_ENV` overlay name.
    pub env: Option<String>,
}

impl Settings {
    /// Loads the layers, reads secrets from files, and validates.
    pub fn load(sources: &Sources) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(
                config::File::from(sources.config_dir.join("default.toml")).required(false),
            );
        if let Some(env) = &sources.env {
            let overlay = sources.config_dir.join(format!("{env}.toml"));
            if !overlay.exists() {
                bail!(
                    "TIERWISE_ENV={env} but {} does not exist",
                    overlay.display()
                );
            }
            builder = builder.add_source(config::File::from(overlay));
        }
        let merged = builder
            .add_source(
                config::Environment::with_prefix("TIERWISE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .context("reading configuration")?;
        let mut settings: Settings = merged
            .try_deserialize()
            .map_err(|e| anyhow::anyhow!("configuration is invalid: {e}"))?;
        settings.read_secret_files()?;
        settings.validate()?;
        // `[predictive]` is its own section; the grading run reads it through the policy.
        settings.grading.predictive = settings.predictive.clone();
        Ok(settings)
    }

    fn read_secret_files(&mut self) -> anyhow::Result<()> {
        if self.smtp.password.expose_secret().is_empty() && !self.smtp.password_file.is_empty() {
            let text = std::fs::read_to_string(&self.smtp.password_file).with_context(|| {
                format!(
                    "smtp.password_file: cannot read {}",
                    self.smtp.password_file
                )
            })?;
            self.smtp.password =
                SecretString::from(text.trim_end_matches(['\r', '\n']).to_string());
        }
        Ok(())
    }

    /// Checks every value that can be checked without a network; errors name the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        fn fail(key: &str, reason: impl std::fmt::Display) -> anyhow::Result<()> {
            bail!("configuration key {key}: {reason}")
        }
        if let Err(e) = DatabaseUrl::parse(&self.database.url) {
            return fail("database.url", e);
        }
        if !(1..=256).contains(&self.database.pool_size) {
            return fail(
                "database.pool_size",
                format!("{} is outside 1..=256", self.database.pool_size),
            );
        }
        // Import settings validate themselves; their errors already name `import.<key>`.
        tierwise_import::FileImportOptions::from_settings(
            &self.import,
            tierwise_import::RecordKind::Orders,
            ColumnMapping::default(),
        )
        .map_err(|e| anyhow::anyhow!("configuration key {e}"))?;
        if !self.import.mapping_file.is_empty() {
            load_mapping(Path::new(&self.import.mapping_file))
                .map_err(|e| anyhow::anyhow!("configuration key import.mapping_file: {e:#}"))?;
        }
        if let Err(e) = self.grading.validate() {
            return fail(&format!("grading.{}", e.field), e.reason);
        }
        if let Err(e) = self.predictive.validate() {
            return fail(&format!("predictive.{}", e.field), e.reason);
        }
        if self.smtp.host.trim().is_empty() {
            return fail("smtp.host", "is empty");
        }
        if self.smtp.port == 0 {
            return fail("smtp.port", "must be 1-65535");
        }
        if let Err(e) = sender_address(&self.smtp.from) {
            return fail("smtp.from", e);
        }
        if self.smtp.timeout_secs == 0 || self.smtp.timeout_secs > 600 {
            return fail(
                "smtp.timeout_secs",
                format!("{} is outside 1..=600", self.smtp.timeout_secs),
            );
        }
        for (i, admin) in self.notify.admins.iter().enumerate() {
            if let Err(e) = EmailAddress::parse(admin) {
                return fail(&format!("notify.admins[{i}]"), e.reason);
            }
        }
        if !(1..=1000).contains(&self.notify.max_rows) {
            return fail(
                "notify.max_rows",
                format!("{} is outside 1..=1000", self.notify.max_rows),
            );
        }
        if !(1..=64).contains(&self.notify.sending.concurrency) {
            return fail(
                "notify.sending.concurrency",
                format!("{} is outside 1..=64", self.notify.sending.concurrency),
            );
        }
        if self.notify.sending.max_attempts == 0 {
            return fail("notify.sending.max_attempts", "must be at least 1");
        }
        if self.notify.sending.lease_secs < self.smtp.timeout_secs.saturating_mul(2) {
            return fail(
                "notify.sending.lease_secs",
                format!(
                    "{} is shorter than two SMTP timeouts ({} s): a slow send could be claimed twice",
                    self.notify.sending.lease_secs,
                    self.smtp.timeout_secs * 2
                ),
            );
        }
        for tier in self.notify.churn_actions.keys() {
            if self.grading.tier_index(tier).is_none() {
                return fail(
                    &format!("notify.churn_actions.{tier}"),
                    "is not a tier in [grading.tiers]",
                );
            }
        }
        if !self.notify.templates_dir.is_empty() && !Path::new(&self.notify.templates_dir).is_dir()
        {
            return fail(
                "notify.templates_dir",
                format!("{} is not a folder", self.notify.templates_dir),
            );
        }
        if let Err(e) = self.dashboard.bind.parse::<SocketAddr>() {
            return fail(
                "dashboard.bind",
                format!(
                    "'{}' is not host:port such as 127.0.0.1:8080 ({e})",
                    self.dashboard.bind
                ),
            );
        }
        if self.scheduler.jobs_dir.trim().is_empty() {
            return fail("scheduler.jobs_dir", "is empty");
        }
        if let Err(e) = tierwise_jobs::parse_timezone(&self.scheduler.timezone) {
            return fail("scheduler.timezone", e);
        }
        if let Err(e) = self.scheduler.bind.parse::<SocketAddr>() {
            return fail(
                "scheduler.bind",
                format!("'{}' is not host:port ({e})", self.scheduler.bind),
            );
        }
        if self.scheduler.lease_secs < 3 {
            return fail("scheduler.lease_secs", "must be at least 3");
        }
        if self.scheduler.poll_secs == 0 {
            return fail("scheduler.poll_secs", "must be at least 1");
        }
        Ok(())
    }

    /// The settings as TOML with secrets masked.
    pub fn to_masked_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("rendering settings")
    }
}

/// The address in `Name <address>` or a bare address.
pub fn sender_address(from: &str) -> Result<EmailAddress, String> {
    let address = match (from.find('<'), from.rfind('>')) {
        (Some(open), Some(close)) if open < close => &from[open + 1..close],
        (None, None) => from,
        _ => {
            return Err(format!(
                "'{from}' is neither an address nor \"Name <address>\""
            ));
        }
    };
    EmailAddress::parse(address).map_err(|e| e.reason)
}

/// Reads and validates a column mapping file.
pub fn load_mapping(path: &Path) -> anyhow::Result<ColumnMapping> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read mapping file {}", path.display()))?;
    let mapping: ColumnMapping = toml::from_str(&text)
        .with_context(|| format!("mapping file {} is not valid", path.display()))?;
    mapping.validate(path)?;
    Ok(mapping)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_matches_the_settings_defaults() {
        let from_file: Settings = toml::from_str(DEFAULT_TOML).expect("default.toml parses");
        let file_view = toml::to_string(&from_file).unwrap();
        let code_view = toml::to_string(&Settings::default()).unwrap();
        assert_eq!(
            file_view, code_view,
            "config/default.toml and the Default impls drifted apart"
        );
        assert_eq!(
            from_file.smtp.password.expose_secret(),
            Settings::default().smtp.password.expose_secret()
        );
        Settings::default().validate().unwrap();
    }

    #[test]
    fn every_key_in_default_toml_has_a_comment() {
        let mut previous = "";
        // Fields of an array of tables ([[grading.tiers.levels]]) are documented once, above
        // the first entry.
        let mut in_array_of_tables = false;
        for line in DEFAULT_TOML.lines() {
            if line.starts_with('[') {
                in_array_of_tables = line.starts_with("[[");
            }
            let is_key = !line.starts_with('#') && !line.starts_with('[') && line.contains(" = ");
            if is_key && !in_array_of_tables {
                assert!(
                    previous.starts_with('#'),
                    "key without a comment above it: {line}"
                );
            }
            previous = if is_key && previous.starts_with('#') {
                previous
            } else {
                line
            };
        }
    }

    #[test]
    fn sender_forms() {
        assert_eq!(
            sender_address("tierwise <ops@example.com>")
                .unwrap()
                .as_str(),
            "ops@example.com"
        );
        assert_eq!(
            sender_address("ops@example.com").unwrap().as_str(),
            "ops@example.com"
        );
        assert!(sender_address("ops <ops@example.com").is_err());
        assert!(sender_address("nobody").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut s = Settings::default();
        s.dashboard.bind = "localhost".into();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("dashboard.bind")
        );
        let mut s = Settings::default();
        s.import.default_currency = "RMB1".into();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("import.default_currency")
        );
        let mut s = Settings::default();
        s.database.url = "mysql://x".into();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("database.url")
        );
        let mut s = Settings::default();
        s.smtp.from = "nobody".into();
        assert!(s.validate().unwrap_err().to_string().contains("smtp.from"));
    }

    #[test]
    fn secrets_are_masked_when_shown() {
        let mut s = Settings::default();
        s.smtp.password = SecretString::from("hunter2".to_string());
        s.database.url = "postgres://app:s3cret@db/tw".into();
        s.crm.pipedrive.api_token = SecretString::from("pd-t0ken".to_string());
        s.crm.salesforce.refresh_token = SecretString::from("sf-r3fresh".to_string());
        let shown = s.to_masked_toml().unwrap();
        assert!(
            !shown.contains("hunter2")
                && !shown.contains("s3cret")
                && !shown.contains("pd-t0ken")
                && !shown.contains("sf-r3fresh"),
            "{shown}"
        );
        assert!(shown.contains("password = \"***\""), "{shown}");
        assert!(shown.contains("api_token = \"***\""), "{shown}");
        assert!(shown.contains("refresh_token = \"***\""), "{shown}");
        let debug = format!("{s:?}");
        assert!(
            debug.contains("[REDACTED]")
                && !debug.contains("s3cret")
                && !debug.contains("pd-t0ken"),
            "{debug}"
        );
    }
}
