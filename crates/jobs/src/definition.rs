//! Job definitions: one TOML file per job in `jobs/`, parsed and validated at start; every error
//! names the file and the field.
//!
//! ```toml
//! # jobs/monthly-grade.toml
//! schedule = "0 0 2 1 * *"      # sec min hour day-of-month month day-of-week
//! timezone = "Asia/Shanghai"    # optional; [scheduler] timezone otherwise
//! kind = "grade"
//! [args]
//! period = "previous"
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::Deserialize;
use tierwise_domain::Period;
use tierwise_import::RecordKind;

use crate::JobsError;

/// What a job does.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Imports every CSV/XLSX file in a folder (then moves it to `done/` or `failed/`).
    Import {
        /// Folder to read.
        dir: PathBuf,
        /// Record kind of its files.
        records: RecordKind,
        /// Source name (default `[import] source`).
        source: Option<String>,
    },
    /// Imports what changed in the CRMs (the named ones, or every enabled one).
    CrmImport {
        /// Sources to run (None: every `[crm.<source>] enabled`).
        sources: Option<Vec<String>>,
    },
    /// Grades a period and queues its notifications.
    Grade {
        /// Which period.
        period: PeriodSpec,
        /// How long to wait while another run holds the grading lock (a what-if on the
        /// dashboard, a manual `tierwise grade`) before failing.
        lock_wait: std::time::Duration,
    },
    /// Queues what pending publications owe (digests, churn alerts).
    Digest,
    /// Queues this week's follow-up reminders.
    Reminders,
    /// Sends what is due in the outbox.
    SendOutbox,
    /// Deletes finished job runs and sent messages older than `keep_days`.
    Cleanup {
        /// Days kept.
        keep_days: u32,
    },
    /// Diagnostic: waits `sleep_ms`, then records that it ran (table `job_probes`).
    Probe {
        /// Milliseconds to wait.
        sleep_ms: u64,
    },
}

impl JobKind {
    /// The kind's key in job files.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Import { .. } => "import",
            Self::CrmImport { .. } => "crm-import",
            Self::Grade { .. } => "grade",
            Self::Digest => "digest",
            Self::Reminders => "reminders",
            Self::SendOutbox => "send-outbox",
            Self::Cleanup { .. } => "cleanup",
            Self::Probe { .. } => "probe",
        }
    }
}

/// How long a grade job waits for the grading lock unless `args.lock_wait_secs` says otherwise:
/// long enough for a what-if or a manual run to finish, short enough that a stuck holder is
/// noticed the same night.
pub const DEFAULT_LOCK_WAIT_SECS: i64 = 15 * 60;

/// The period a grade job grades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodSpec {
    /// The month before the occurrence's month, in the job's time zone.
    Previous,
    /// A fixed month.
    Fixed(Period),
}

impl PeriodSpec {
    /// The period for an occurrence at `scheduled_for` (UTC) in `tz`.
    pub fn resolve(&self, scheduled_for: NaiveDateTime, tz: Tz) -> Period {
        match self {
            Self::Previous => {
                let local = scheduled_for.and_utc().with_timezone(&tz).date_naive();
                Period::containing(local).prev()
            }
            Self::Fixed(p) => *p,
        }
    }
}

/// One validated job.
#[derive(Debug, Clone)]
pub struct JobDefinition {
    /// Unique name (the file's stem unless `name` is given).
    pub name: String,
    /// The cron expression as written.
    pub schedule: String,
    /// Time zone the expression is read in.
    pub timezone: Tz,
    /// What it does.
    pub kind: JobKind,
    /// Its arguments as written (manual runs may override them).
    pub args: toml::Table,
    /// Disabled jobs are listed but never triggered by their schedule.
    pub enabled: bool,
    /// Run a missed occurrence once on start (within the scheduler's horizon).
    pub catch_up: bool,
    /// The file it came from.
    pub file: PathBuf,
    cron: Cron,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: Option<String>,
    schedule: String,
    timezone: Option<String>,
    kind: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "yes")]
    catch_up: bool,
    #[serde(default)]
    args: toml::Table,
}

fn yes() -> bool {
    true
}

/// Parses a cron expression the way the scheduler's trigger does: six fields, seconds first;
/// day-of-month and day-of-week must both match.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!("'{expr}' is not a cron expression with six fields (sec min hour day month weekday): {e}")
        })
}

/// Parses an IANA time zone name (`Asia/Shanghai`, `UTC`).
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("'{name}' is not an IANA time zone such as Asia/Shanghai or UTC"))
}

fn arg_str(args: &toml::Table, key: &str) -> Result<Option<String>, String> {
    match args.get(key) {
        None => Ok(None),
        Some(toml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "args.{key}: expected text, found {}",
            other.type_str()
        )),
    }
}

fn arg_int(args: &toml::Table, key: &str) -> Result<Option<i64>, String> {
    match args.get(key) {
        None => Ok(None),
        Some(toml::Value::Integer(n)) => Ok(Some(*n)),
        Some(toml::Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("args.{key}: '{s}' is not a whole number")),
        Some(other) => Err(format!(
            "args.{key}: expected a number, found {}",
            other.type_str()
        )),
    }
}

fn only(args: &toml::Table, allowed: &[&str]) -> Result<(), String> {
    match args.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) if allowed.is_empty() => Err(format!("args.{k}: this kind takes no arguments")),
        Some(k) => Err(format!(
            "args.{k}: unknown argument; expected {}",
            allowed.join(", ")
        )),
    }
}

/// Builds a kind from its key and arguments; errors name the argument.
pub fn parse_kind(kind: &str, args: &toml::Table) -> Result<JobKind, String> {
    Ok(match kind {
        "import" => {
            only(args, &["dir", "kind", "source"])?;
            let dir = arg_str(args, "dir")?.ok_or("args.dir: required (the folder to import)")?;
            let records = arg_str(args, "kind")?
                .ok_or("args.kind: required (owners, customers, orders, invoices or activities)")?;
            JobKind::Import {
                dir: PathBuf::from(dir),
                records: records
                    .parse::<RecordKind>()
                    .map_err(|e| format!("args.kind: {e}"))?,
                source: arg_str(args, "source")?,
            }
        }
        "crm-import" => {
            only(args, &["sources"])?;
            let sources = match args.get("sources") {
                None => None,
                Some(toml::Value::Array(items)) => Some(
                    items
                        .iter()
                        .map(|v| match v.as_str() {
                            Some(s) if tierwise_import::crm::SOURCES.contains(&s) => {
                                Ok(s.to_owned())
                            }
                            _ => Err(format!(
                                "args.sources: {v} is not one of {}",
                                tierwise_import::crm::SOURCES.join(", ")
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(other) => {
                    return Err(format!(
                        "args.sources: {other} is not a list like [\"pipedrive\"]"
                    ));
                }
            };
            JobKind::CrmImport { sources }
        }
        "grade" => {
            only(args, &["period", "lock_wait_secs"])?;
            let lock_wait_secs = arg_int(args, "lock_wait_secs")?.unwrap_or(DEFAULT_LOCK_WAIT_SECS);
            let lock_wait = u64::try_from(lock_wait_secs)
                .map(std::time::Duration::from_secs)
                .map_err(|_| format!("args.lock_wait_secs: {lock_wait_secs} is negative"))?;
            let period = match arg_str(args, "period")?.as_deref() {
                None | Some("previous") => PeriodSpec::Previous,
                Some(p) => PeriodSpec::Fixed(Period::parse(p).map_err(|e| {
                    format!(
                        "args.period: '{p}' is neither \"previous\" nor a month like 2026-10 ({e})"
                    )
                })?),
            };
            JobKind::Grade { period, lock_wait }
        }
        "digest" => {
            only(args, &[])?;
            JobKind::Digest
        }
        "reminders" => {
            only(args, &[])?;
            JobKind::Reminders
        }
        "send-outbox" => {
            only(args, &[])?;
            JobKind::SendOutbox
        }
        "cleanup" => {
            only(args, &["keep_days"])?;
            let keep_days = arg_int(args, "keep_days")?.unwrap_or(90);
            JobKind::Cleanup {
                keep_days: u32::try_from(keep_days)
                    .map_err(|_| format!("args.keep_days: {keep_days} is out of range"))?,
            }
        }
        "probe" => {
            only(args, &["sleep_ms"])?;
            let sleep_ms = arg_int(args, "sleep_ms")?.unwrap_or(0);
            JobKind::Probe {
                sleep_ms: u64::try_from(sleep_ms)
                    .map_err(|_| format!("args.sleep_ms: {sleep_ms} is negative"))?,
            }
        }
        other => {
            return Err(format!(
                "kind: '{other}' is not one of import, crm-import, grade, digest, reminders, send-outbox, cleanup, probe"
            ));
        }
    })
}

impl JobDefinition {
    /// Parses one job file's text; `default_tz` applies when it names none.
    pub fn parse(file: &Path, text: &str, default_tz: Tz) -> Result<Self, JobsError> {
        let fail = |reason: String| JobsError::Definition {
            file: file.display().to_string(),
            reason,
        };
        let raw: JobFile = toml::from_str(text).map_err(|e| fail(e.message().to_owned()))?;
        let name = match raw.name {
            Some(n) => n,
            None => file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        {
            return Err(fail(format!(
                "name: '{name}' must be letters, digits, '-' or '_'"
            )));
        }
        let cron = parse_cron(&raw.schedule).map_err(|e| fail(format!("schedule: {e}")))?;
        let timezone = match &raw.timezone {
            Some(tz) => parse_timezone(tz).map_err(|e| fail(format!("timezone: {e}")))?,
            None => default_tz,
        };
        let kind = parse_kind(&raw.kind, &raw.args).map_err(fail)?;
        Ok(Self {
            name,
            schedule: raw.schedule,
            timezone,
            kind,
            args: raw.args,
            enabled: raw.enabled,
            catch_up: raw.catch_up,
            file: file.to_path_buf(),
            cron,
        })
    }

    /// The latest occurrence at or before `now`, as a UTC timestamp (whole seconds).
    pub fn occurrence_at_or_before(&self, now: DateTime<Utc>) -> Option<NaiveDateTime> {
        // Whole seconds: every replica must name the occurrence identically.
        let now = now.with_nanosecond(0)?;
        self.cron
            .find_previous_occurrence(&now.with_timezone(&self.timezone), true)
            .ok()
            .and_then(|t| t.with_nanosecond(0))
            .map(|t| t.with_timezone(&Utc).naive_utc())
    }

    /// The next occurrence after `now` (UTC).
    pub fn next_occurrence(&self, now: DateTime<Utc>) -> Option<NaiveDateTime> {
        let now = now.with_nanosecond(0)?;
        self.cron
            .find_next_occurrence(&now.with_timezone(&self.timezone), false)
            .ok()
            .and_then(|t| t.with_nanosecond(0))
            .map(|t| t.with_timezone(&Utc).naive_utc())
    }

    /// The kind with `overrides` applied over the file's arguments (manual runs).
    pub fn kind_with(&self, overrides: &toml::Table) -> Result<JobKind, String> {
        if overrides.is_empty() {
            return Ok(self.kind.clone());
        }
        let mut args = self.args.clone();
        args.extend(overrides.clone());
        parse_kind(self.kind.key(), &args)
    }
}

/// Loads every `*.toml` in `dir`, sorted by file name. Names must be unique.
pub fn load_dir(dir: &Path, default_tz: Tz) -> Result<Vec<JobDefinition>, JobsError> {
    let entries = std::fs::read_dir(dir).map_err(|e| JobsError::Definition {
        file: dir.display().to_string(),
        reason: format!("cannot read the jobs folder ({e}); set [scheduler] jobs_dir"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut defs = Vec::new();
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| JobsError::Definition {
            file: file.display().to_string(),
            reason: e.to_string(),
        })?;
        let def = JobDefinition::parse(&file, &text, default_tz)?;
        if !names.insert(def.name.clone()) {
            return Err(JobsError::Definition {
                file: file.display().to_string(),
                reason: format!("name: '{}' is used by another job file", def.name),
            });
        }
        defs.push(def);
    }
    Ok(defs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobDefinition, JobsError> {
        JobDefinition::parse(Path::new("jobs/x.toml"), text, Tz::UTC)
    }

    #[test]
    fn crm_imports_name_known_sources_or_all_enabled() {
        let all = parse("schedule = \"0 30 0 * * *\"\nkind = \"crm-import\"").unwrap();
        assert_eq!(all.kind, JobKind::CrmImport { sources: None });
        let some = parse(
            "schedule = \"0 30 0 * * *\"\nkind = \"crm-import\"\n[args]\nsources = [\"pipedrive\"]",
        )
        .unwrap();
        assert_eq!(
            some.kind,
            JobKind::CrmImport {
                sources: Some(vec!["pipedrive".into()])
            }
        );
        let e = parse(
            "schedule = \"0 30 0 * * *\"\nkind = \"crm-import\"\n[args]\nsources = [\"sap\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("args.sources") && e.contains("pipedrive"), "{e}");
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let e = parse("schedule = \"0 0 2 1 *\"\nkind = \"grade\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("jobs/x.toml") && e.contains("schedule:"), "{e}");
        let e = parse("schedule = \"0 0 2 1 * *\"\ntimezone = \"Mars/Base\"\nkind = \"grade\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("timezone:") && e.contains("Mars/Base"), "{e}");
        let e = parse("schedule = \"0 0 2 1 * *\"\nkind = \"grade\"\n[args]\nperiod = \"last\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("args.period"), "{e}");
        let e = parse("schedule = \"* * * * * *\"\nkind = \"fly\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind: 'fly'"), "{e}");
        let e = parse("schedule = \"* * * * * *\"\nkind = \"digest\"\nextra = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("extra"), "{e}");
    }

    #[test]
    fn occurrences_in_the_jobs_time_zone() {
        let def = JobDefinition::parse(
            Path::new("jobs/monthly.toml"),
            "schedule = \"0 0 2 1 * *\"\ntimezone = \"Asia/Shanghai\"\nkind = \"grade\"",
            Tz::UTC,
        )
        .unwrap();
        assert_eq!(def.name, "monthly");
        // 02:00 on the 1st in Shanghai is 18:00 UTC on the last day of the month before.
        let now = "2026-12-05T00:00:00.734Z".parse::<DateTime<Utc>>().unwrap();
        let last = def.occurrence_at_or_before(now).unwrap();
        assert_eq!(last.to_string(), "2026-11-30 18:00:00");
        // And that occurrence grades November (the month before December in Shanghai).
        let JobKind::Grade { period, .. } = def.kind else {
            panic!("grade")
        };
        assert_eq!(period.resolve(last, def.timezone).to_string(), "2026-11");
        assert_eq!(
            def.next_occurrence(now).unwrap().to_string(),
            "2026-12-31 18:00:00"
        );
    }

    #[test]
    fn manual_arguments_override_the_files() {
        let def = parse("schedule = \"0 0 2 1 * *\"\nkind = \"grade\"").unwrap();
        let mut over = toml::Table::new();
        over.insert("period".into(), toml::Value::String("2026-07".into()));
        let JobKind::Grade { period, .. } = def.kind_with(&over).unwrap() else {
            panic!("grade")
        };
        assert_eq!(period, PeriodSpec::Fixed(Period::parse("2026-07").unwrap()));
        over.insert("bogus".into(), toml::Value::Integer(1));
        assert!(def.kind_with(&over).unwrap_err().contains("args.bogus"));
    }

    #[test]
    fn a_grade_job_waits_for_the_lock_fifteen_minutes_unless_told() {
        let wait = |text: &str| match parse(text).map(|d| d.kind) {
            Ok(JobKind::Grade { lock_wait, .. }) => Ok(lock_wait.as_secs()),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(
            wait("schedule = \"0 0 2 1 * *\"\nkind = \"grade\""),
            Ok(900)
        );
        assert_eq!(
            wait("schedule = \"0 0 2 1 * *\"\nkind = \"grade\"\n[args]\nlock_wait_secs = 0"),
            Ok(0)
        );
        let e = wait("schedule = \"0 0 2 1 * *\"\nkind = \"grade\"\n[args]\nlock_wait_secs = -5")
            .unwrap_err();
        assert!(
            e.contains("args.lock_wait_secs") && e.contains("negative"),
            "{e}"
        );
    }
}
