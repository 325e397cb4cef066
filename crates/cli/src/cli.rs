//! Command-line interface definition.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tierwise_import::RecordKind;

/// tierwise grades your customers into tiers every month and acts on the result.
///
/// Start with `tierwise demo`: it generates realistic demo data and imports it into a local
/// SQLite database. Configuration comes from config/default.toml, config/<TIERWISE_ENV>.toml
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
    /// Generate demo data and import it into a fresh local database.
    ///
    /// Writes CSV files of owners, customers, orders, invoices and activities, then imports
    /// them through the same importer your files go through. Same seed, same data: running it
    /// twice changes nothing the second time.
    ///
    /// Example:
    ///   tierwise demo
    ///   tierwise demo --customers 20000 --seed 7 --dir /tmp/demo
    Demo(DemoArgs),
    /// Show or check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
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
