//! Command-line interface definition.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tierwise_import::RecordKind;

/// tierwise grades your customers into tiers every month and acts on the result.
///
/// Start with `tierwise demo`: it generates realistic demo data, imports it into a local SQLite
/// database, grades it, renders the emails and serves the dashboard. Configuration comes from config/default.toml, config/<TIERWISE_ENV>.toml
/// and TIERWISE__SECTION__KEY environment variables (see `tierwise config show`).
#[derive(Debug, Parser)]
#[command(
    name = "tierwise",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). TIERWISE_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Folder with default.toml and <TIERWISE_ENV>.toml.
    #[arg(
        long,
        global = true,
        env = "TIERWISE_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply pending database migrations (services also do this at start).
    ///
    /// Example:
    ///   tierwise migrate
    ///   TIERWISE__DATABASE__URL=postgres://postgres@127.0.0.1/tierwise tierwise migrate --status
    Migrate {
        /// List migrations and whether each is applied, changing nothing.
        #[arg(long)]
        status: bool,
    },
    /// Import data and inspect past imports.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Generate demo data, grade it, render its emails and serve the dashboard on it.
    ///
    /// Writes CSV files of owners, customers, orders, invoices and activities, imports them
    /// through the same importer your files go through, grades thirteen months, queues and
    /// renders the owners' emails into <dir>/emails, then serves the dashboard on
    /// [dashboard] bind with a demo login (Ctrl-C stops it; --no-serve skips it). Same seed,
    /// same data: running it twice changes nothing the second time.
    ///
    /// Example:
    ///   tierwise demo
    ///   tierwise demo --customers 20000 --seed 7 --dir /tmp/demo
    Demo(DemoArgs),
    /// Grade every customer for a month (or a range of months) and publish the result.
    ///
    /// A run grades customers as of the period's last day under the [grading] policy, then
    /// replaces that period's grades as a whole: readers see the old grades or the new ones,
    /// never a mix, and re-running a period is safe. Grade months in order: hysteresis and the
    /// churn rate behind CLV build on earlier periods (use --from/--to to back-fill).
    ///
    /// Examples:
    ///   tierwise grade --period 2026-10
    ///   tierwise grade --from 2025-01 --to 2026-10
    ///   tierwise grade --period 2026-10 --dry-run --policy what-if.toml
    Grade(GradeArgs),
    /// Inspect and export published grades.
    #[command(subcommand)]
    Grades(GradesCommand),
    /// Pin a customer to a tier (red list), block it from grading (black list), or clear that.
    ///
    /// Overrides carry a reason, an author and an optional last day; they survive re-grading
    /// and apply from the next run (re-grade the period to apply one now). Every change is kept
    /// in an audit trail.
    #[command(subcommand)]
    Override(OverrideCommand),
    /// Show the grading policy in force, its version history, or return to the configuration.
    ///
    /// The policy in force is [grading] from the configuration with the newest version an
    /// admin applied on the dashboard's policy page over it (weights, tier cut-offs, ABC cuts).
    /// Grading runs use it from their next start.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Queue, preview and send digests, reminders and churn alerts.
    ///
    /// Messages go through an outbox: queueing writes each rendered message once (a second
    /// run for the same period or week queues nothing), and `notify send` delivers what is
    /// due over SMTP ([smtp]), retrying transient failures and dead-lettering the rest.
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Run a long-lived service.
    #[command(subcommand)]
    Serve(ServeCommand),
    /// List scheduled jobs, see their runs, or ask for a run now.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Manage dashboard users.
    #[command(subcommand)]
    User(UserCommand),
    /// Show or check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the policy in force as TOML (a valid --policy file) and which version it is.
    ///
    /// Example:
    ///   tierwise policy show > policy.toml
    Show,
    /// List the versions applied, newest first, with author, reason and what each changed.
    ///
    /// Example:
    ///   tierwise policy history --limit 10
    History {
        /// Versions to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Return to the configured [grading] policy (recorded as a new, empty version).
    ///
    /// Example:
    ///   tierwise policy reset --reason "back to the reviewed configuration"
    Reset {
        /// Why (kept in the history).
        #[arg(long)]
        reason: String,
        /// Who (kept in the history); defaults to $USER.
        #[arg(long, env = "USER", default_value = "cli")]
        author: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServeCommand {
    /// Run the scheduler: triggers the jobs in [scheduler] jobs_dir by their cron schedules.
    ///
    /// Any number of replicas may run on one PostgreSQL database: each occurrence runs once,
    /// and a replica that dies mid-job is replaced after its lease. SQLite runs one instance.
    /// Serves /healthz and /metrics on [scheduler] bind. Stops on SIGTERM or Ctrl-C, letting a
    /// running job finish for [scheduler] shutdown_grace_secs.
    ///
    /// Example:
    ///   TIERWISE__DATABASE__URL=postgres://tierwise@db/tierwise tierwise serve scheduler
    Scheduler,
    /// Serve the admin dashboard and its JSON API (log in with a user from `tierwise user add`).
    ///
    /// Example:
    ///   tierwise serve dashboard --bind 0.0.0.0:8080
    Dashboard {
        /// Address to listen on (default [dashboard] bind).
        #[arg(long)]
        bind: Option<String>,
    },
    /// Everything in one process for small installs: the scheduler (which also drains the
    /// outbox every minute) and the dashboard, on [dashboard] bind.
    ///
    /// Example:
    ///   tierwise serve all
    All,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a dashboard user; the password is read from TIERWISE_PASSWORD or asked for on
    /// standard input.
    ///
    /// Roles: admin (everything), manager (reads; pins or blocks the customers of the owner
    /// given with --owner), viewer (reads).
    ///
    /// Example:
    ///   TIERWISE_PASSWORD=… tierwise user add li.lei --role manager --owner li.lei@example.com
    Add {
        /// Login name.
        username: String,
        /// admin, manager or viewer.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Owner email a manager manages.
        #[arg(long)]
        owner: Option<String>,
        /// UI language: zh-CN or en (default [dashboard] default_locale). Users can switch it
        /// in the dashboard's header.
        #[arg(long)]
        locale: Option<String>,
    },
    /// Set a user's password (TIERWISE_PASSWORD or standard input); also unlocks the account.
    Passwd {
        /// Login name.
        username: String,
    },
    /// List users.
    List,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// The jobs in [scheduler] jobs_dir: schedule, time zone, next and last run.
    List,
    /// Past runs, newest first: when, trigger, replica, status, outcome or error.
    ///
    /// Example:
    ///   tierwise jobs history monthly-grade
    History {
        /// Only this job.
        job: Option<String>,
        /// Most runs listed.
        #[arg(long, default_value_t = 30)]
        limit: i64,
    },
    /// Ask for a run now. A running scheduler picks the request up (within
    /// [scheduler] poll_secs); --here runs it in this process instead.
    ///
    /// Examples:
    ///   tierwise jobs run monthly-grade --arg period=2026-10 --wait 600
    ///   tierwise jobs run weekly-reminders --here
    Run {
        /// Job name (file name without .toml).
        name: String,
        /// Override an argument of the job file: KEY=VALUE (repeatable).
        #[arg(long = "arg", value_name = "KEY=VALUE")]
        args: Vec<String>,
        /// Wait up to this many seconds for the run to finish and print its outcome.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        /// Run it in this process now instead of asking a scheduler.
        #[arg(long, conflicts_with = "wait")]
        here: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Queue the digests and churn alerts of a graded period.
    ///
    /// Without --period, handles the publications not yet notified (what `grade` does after
    /// publishing when [notify] after_grading is on). Each owner gets a digest of their
    /// customers' tier changes, churn alerts, movers and follow-ups due; admins listed in
    /// [notify] admins get the whole distribution and import and job health.
    ///
    /// Examples:
    ///   tierwise notify digest
    ///   tierwise notify digest --period 2026-10
    Digest {
        /// A graded month, e.g. 2026-10.
        #[arg(long)]
        period: Option<String>,
        /// Judge follow-ups as of this day (YYYY-MM-DD) instead of today.
        #[arg(long)]
        today: Option<String>,
    },
    /// Queue this week's follow-up reminders: per owner, contacts due within 7 days or overdue
    /// by each tier's cadence (call_every_months, visit_every_months).
    ///
    /// Run weekly; a second run in the same ISO week queues nothing.
    ///
    /// Example:
    ///   tierwise notify reminders
    Reminders {
        /// Judge follow-ups as of this day (YYYY-MM-DD) instead of today.
        #[arg(long)]
        today: Option<String>,
    },
    /// Send every queued message that is due, then exit.
    ///
    /// Transient failures (server down, timeouts, 4xx) are retried by later runs with growing
    /// delays; permanent ones (e.g. 550 unknown recipient) are dead-lettered at once.
    ///
    /// Example:
    ///   TIERWISE__SMTP__HOST=smtp.example.com tierwise notify send
    Send,
    /// List the outbox, show one message, or put a dead-lettered message back in the queue.
    ///
    /// Examples:
    ///   tierwise notify outbox
    ///   tierwise notify outbox --status dead
    ///   tierwise notify outbox --show 42
    ///   tierwise notify outbox --retry 42
    Outbox {
        /// Only messages in this state: queued, sending, sent or dead.
        #[arg(long)]
        status: Option<String>,
        /// Most messages listed.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print one message (headers and text part).
        #[arg(long, conflicts_with = "retry")]
        show: Option<i64>,
        /// Queue a dead-lettered message again.
        #[arg(long)]
        retry: Option<i64>,
    },
    /// Render one owner's emails to files (.eml to open in a mail client, .html for a browser),
    /// without queueing anything.
    ///
    /// Example:
    ///   tierwise notify preview --owner li.na@example.com --out previews/
    Preview {
        /// Owner email or id.
        #[arg(long)]
        owner: String,
        /// Folder to write into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Graded month of the digest (default: the newest).
        #[arg(long)]
        period: Option<String>,
        /// Judge follow-ups as of this day (YYYY-MM-DD) instead of today.
        #[arg(long)]
        today: Option<String>,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("when").required(true).args(["period", "from"])))]
pub struct GradeArgs {
    /// The month to grade, e.g. 2026-10 (graded as of its last day).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub period: Option<String>,
    /// First month of a back-fill (with --to).
    #[arg(long, requires = "to")]
    pub from: Option<String>,
    /// Last month of a back-fill (with --from).
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// Grade in memory and print the distribution and how many customers would change tier
    /// against the published grades of the period; write nothing.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub dry_run: bool,
    /// A policy file (TOML, the keys of [grading], optionally under a [grading] table) to use
    /// instead of the configured policy. Missing keys take the contract defaults.
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum GradesCommand {
    /// Write one row per customer of a graded period to CSV or XLSX.
    ///
    /// Columns: source, external id, name, contact, owner, recency_days, frequency, monetary
    /// (minor units), r/f/m scores, segment, ABC class, credit score and grade, profit,
    /// composite, computed and assigned tier, tier reason, lifecycle, loyalty step, CLV.
    ///
    /// Examples:
    ///   tierwise grades export --period 2026-10 --out grades.csv
    ///   tierwise grades export --period 2026-10 --out grades.xlsx
    Export {
        /// The graded month.
        #[arg(long)]
        period: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// csv or xlsx (default: from the file extension).
        #[arg(long)]
        format: Option<String>,
    },
    /// List recent grading runs with their status, counts and timings.
    ///
    /// Example:
    ///   tierwise grades runs --limit 5
    Runs {
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Explain one customer's grade: inputs, scores, components, weights and tier reason.
    ///
    /// Example:
    ///   tierwise grades show C000123 --period 2026-10
    Show {
        /// The customer's id in its source.
        customer: String,
        /// The graded month (default: the latest graded).
        #[arg(long)]
        period: Option<String>,
        /// Source of the customer (default: import.source).
        #[arg(long)]
        source: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct OverrideTarget {
    /// The customer's id in its source.
    pub customer: String,
    /// Source of the customer (default: import.source).
    #[arg(long)]
    pub source: Option<String>,
    /// Why (kept in the audit trail).
    #[arg(long)]
    pub reason: String,
    /// Who decided (default: $USER).
    #[arg(long)]
    pub author: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OverrideCommand {
    /// Pin a customer to a tier whatever its score (red list).
    ///
    /// Example:
    ///   tierwise override pin C000123 --tier A --reason "strategic partner" --until 2027-03-31
    Pin {
        #[command(flatten)]
        target: OverrideTarget,
        /// Tier name from [grading.tiers].
        #[arg(long)]
        tier: String,
        /// Last day it applies (YYYY-MM-DD); none = until cleared.
        #[arg(long)]
        until: Option<String>,
    },
    /// Remove a customer from grading: no tier, no reminders (black list).
    ///
    /// Example:
    ///   tierwise override block C000123 --reason "in liquidation"
    Block {
        #[command(flatten)]
        target: OverrideTarget,
        /// Last day it applies (YYYY-MM-DD); none = until cleared.
        #[arg(long)]
        until: Option<String>,
    },
    /// Remove a customer's pin or block.
    ///
    /// Example:
    ///   tierwise override clear C000123 --reason "dispute settled"
    Clear {
        #[command(flatten)]
        target: OverrideTarget,
    },
    /// List current overrides.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Import CSV or XLSX files of one kind.
    ///
    /// Rows are matched by (source, id): importing the same file twice changes nothing, a
    /// corrected row updates the stored one. Bad rows are kept with their line, column and
    /// reason (`tierwise import rejects RUN`) while good rows load. Import owners and
    /// customers before orders, invoices and activities.
    ///
    /// Exit status: 0 when every row loaded, 3 when some rows were rejected, 1 on failure
    /// (nothing loaded).
    ///
    /// Examples:
    ///   tierwise import file --kind customers customers.csv
    ///   tierwise import file --kind orders --mapping config/mapping-zh-CN.toml 订单.xlsx
    ///   tierwise import file --kind orders --encoding gbk export.csv
    File(ImportFileArgs),
    /// List the fields each kind of file can have, and which are required.
    ///
    /// Headers equal to these names need no mapping; others are mapped in a mapping file.
    ///
    /// Example:
    ///   tierwise import fields orders
    Fields {
        /// Only this kind.
        #[arg(value_parser = parse_kind)]
        kind: Option<RecordKind>,
    },
    /// List recent import runs.
    ///
    /// Example:
    ///   tierwise import runs --limit 5
    Runs {
        /// How many runs to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// Import what changed in a CRM since its last completed run.
    ///
    /// Each page is committed with the connector's position, so an interrupted run (a crash,
    /// a spent daily API quota) resumes from its last committed page. Records that do not map
    /// are kept with their JSON and the reason (`tierwise import rejects RUN`). Settings and
    /// credentials: `[crm.<source>]` in config/, secrets from TIERWISE__CRM__<SOURCE>__* variables.
    /// See docs/crm/<source>.md for setting up each CRM.
    ///
    /// Exit status: 0 when everything imported, 3 when some records were rejected, 1 on
    /// failure (what was committed stays; the next run resumes).
    ///
    /// Examples:
    ///   TIERWISE__CRM__PIPEDRIVE__API_TOKEN=… tierwise import crm pipedrive
    ///   tierwise import crm pipedrive --full     # read everything again
    ///   tierwise import crm zoho
    ///   tierwise import crm salesforce
    ///   tierwise import crm fxiaoke
    ///   tierwise import crm hubspot
    Crm {
        /// The CRM: fxiaoke, hubspot, pipedrive, salesforce or zoho.
        source: String,
        /// Ignore the watermarks (and any interrupted run) and read everything again.
        #[arg(long)]
        full: bool,
    },
    /// Show where each CRM connector stands: watermark, and interrupted runs.
    ///
    /// Example:
    ///   tierwise import status
    Status,
    /// Show the rejected rows of an import run.
    ///
    /// Example:
    ///   tierwise import rejects 12
    Rejects {
        /// The run id (see `tierwise import runs`).
        run: i64,
        /// How many rejects to show.
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

#[derive(Debug, Args)]
pub struct ImportFileArgs {
    /// What the files hold.
    #[arg(long, value_parser = parse_kind)]
    pub kind: RecordKind,
    /// Column mapping file (TOML) for headers that differ from the field names
    /// (default: import.mapping_file).
    #[arg(long)]
    pub mapping: Option<PathBuf>,
    /// CSV encoding: auto, utf-8, gbk or gb18030 (default: import.encoding).
    #[arg(long)]
    pub encoding: Option<String>,
    /// XLSX sheet name (default: the first sheet).
    #[arg(long)]
    pub sheet: Option<String>,
    /// Source name the records belong to (default: import.source).
    #[arg(long)]
    pub source: Option<String>,
    /// Reject order and invoice rows whose customer is not imported yet, instead of creating it.
    #[arg(long)]
    pub no_create_customers: bool,
    /// The files (.csv, .txt or .xlsx).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

fn parse_kind(s: &str) -> Result<RecordKind, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the generated CSV files.
    #[arg(long, default_value = "data/demo")]
    pub dir: PathBuf,
    /// Database for the demo (a SQLite path or postgres:// URL). Kept apart from your own data.
    #[arg(long, default_value = "data/demo/tierwise.db")]
    pub database: String,
    /// Random seed; the same seed gives the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Number of customers.
    #[arg(long, default_value_t = 2000)]
    pub customers: usize,
    /// Number of owners (account managers).
    #[arg(long, default_value_t = 8)]
    pub owners: usize,
    /// Stop after preparing the data instead of serving the dashboard (for scripts).
    #[arg(long)]
    pub no_serve: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (all layers merged), secrets masked.
    ///
    /// Example:
    ///   TIERWISE_ENV=production tierwise config show
    Show,
    /// Validate the configuration and try the database connection.
    ///
    /// Example:
    ///   TIERWISE__DATABASE__URL=postgres://postgres@127.0.0.1/postgres tierwise config check
    Check,
}
