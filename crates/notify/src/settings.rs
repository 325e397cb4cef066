//! `[smtp]` and `[notify]` configuration.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use tierwise_domain::Locale;

fn masked_secret<S: Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.expose_secret().is_empty() {
        ""
    } else {
        "***"
    })
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain text (a relay on localhost).
    None,
    /// STARTTLS upgrade (fails when the server does not offer it).
    Starttls,
    /// Implicit TLS.
    Tls,
}

/// `[smtp]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSettings {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Transport security.
    pub security: SmtpSecurity,
    /// Login name (empty: no authentication).
    pub username: String,
    /// Password (masked when shown).
    #[serde(serialize_with = "masked_secret")]
    pub password: SecretString,
    /// File holding the password.
    pub password_file: String,
    /// Sender.
    pub from: String,
    /// Timeout per attempt, in seconds.
    pub timeout_secs: u64,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 587,
            security: SmtpSecurity::Starttls,
            username: String::new(),
            password: SecretString::default(),
            password_file: String::new(),
            from: "tierwise <noreply@tierwise.localhost>".into(),
            timeout_secs: 30,
        }
    }
}

/// `[notify]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySettings {
    /// Queue digests and churn alerts as soon as a period's grades are published.
    pub after_grading: bool,
    /// Addresses that receive the admin digest.
    pub admins: Vec<String>,
    /// Locale of the admin digest.
    pub admin_locale: Locale,
    /// Currency amounts are shown in (ISO 4217).
    pub currency: String,
    /// Most rows of one list (tier changes, alerts, follow-ups) in one email; the rest is counted.
    pub max_rows: usize,
    /// Movers up and down listed in a digest.
    pub top_movers: usize,
    /// Link to the dashboard printed in every email (empty: none).
    pub dashboard_url: String,
    /// Folder of templates overriding the built-in ones (`<name>/{subject.txt,body.txt,body.html}`).
    pub templates_dir: String,
    /// Suggested action in a churn alert, by tier name; tiers without one get the generic text.
    pub churn_actions: BTreeMap<String, LocalText>,
    /// `[notify.sending]`
    pub sending: SendingSettings,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            after_grading: true,
            admins: Vec::new(),
            admin_locale: Locale::ZhCn,
            currency: "CNY".into(),
            max_rows: 50,
            top_movers: 5,
            dashboard_url: String::new(),
            templates_dir: String::new(),
            churn_actions: BTreeMap::from([
                (
                    "A".to_owned(),
                    LocalText::ByLocale(BTreeMap::from([
                        (
                            "en".to_owned(),
                            "Call within two days and book a visit with your lead.".to_owned(),
                        ),
                        (
                            "zh-CN".to_owned(),
                            "两天内致电，并与主管一起安排拜访。".to_owned(),
                        ),
                    ])),
                ),
                (
                    "B".to_owned(),
                    LocalText::ByLocale(BTreeMap::from([
                        (
                            "en".to_owned(),
                            "Call this week to find out what changed.".to_owned(),
                        ),
                        (
                            "zh-CN".to_owned(),
                            "本周内致电，了解发生了什么变化。".to_owned(),
                        ),
                    ])),
                ),
            ]),
            sending: SendingSettings::default(),
        }
    }
}

/// A text written in configuration: one for every reader, or one per locale
/// (`{ en = "…", "zh-CN" = "…" }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum LocalText {
    /// The same text for every locale.
    Plain(String),
    /// By locale tag; a locale without an entry falls back to `en`, then to any entry.
    ByLocale(BTreeMap<String, String>),
}

impl LocalText {
    /// The text for `locale`.
    pub fn for_locale(&self, locale: Locale) -> Option<&str> {
        match self {
            Self::Plain(text) => Some(text),
            Self::ByLocale(by) => by
                .get(locale.as_str())
                .or_else(|| by.get("en"))
                .or_else(|| by.values().next())
                .map(String::as_str),
        }
    }
}

/// `[notify.sending]`: how the outbox is drained.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendingSettings {
    /// Messages in flight at once (SMTP connections in the pool).
    pub concurrency: usize,
    /// Attempts before a message is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first retry, in seconds; each later retry doubles it.
    pub retry_base_secs: u64,
    /// Longest delay between retries, in seconds.
    pub retry_max_secs: u64,
    /// How long a claimed message is reserved for its sender, in seconds; a sender that dies
    /// mid-send leaves it to be claimed again after this.
    pub lease_secs: u64,
}

impl Default for SendingSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            max_attempts: 8,
            retry_base_secs: 60,
            retry_max_secs: 6 * 3600,
            lease_secs: 600,
        }
    }
}

impl SendingSettings {
    /// Delay before retry number `attempt` (1 = after the first failure):
    /// `min(retry_base · 2^(attempt − 1), retry_max)` seconds.
    pub fn backoff_secs(&self, attempt: u32) -> u64 {
        let factor = 1u64
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u64::MAX);
        self.retry_base_secs
            .saturating_mul(factor)
            .min(self.retry_max_secs)
    }
}
