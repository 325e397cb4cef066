//! Importing one CSV or XLSX file of one record kind.
//!
//! The run is recorded first (so a failure stays visible), then the whole file loads inside one
//! transaction: good rows in chunks through the store's bulk path, bad rows into
//! `import_rejects` with line, column and reason. If anything fails the transaction rolls back
//! and the run is marked failed; nothing is half-loaded.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csv::StringRecord;
use serde::{Deserialize, Serialize};
use tierwise_domain::{Currency, Locale, SourceName};
use tierwise_store::load::{
    DeferredIndexes, LoadContext, LoadOutcome, LoadedTable, Staged, analyze_after_load,
    finish_load, load_activities, load_customers, load_invoices, load_orders, load_owners,
    with_bulk_load_settings,
};
use tierwise_store::runs::{
    Reject, RunStatus, RunTotals, finish_import_run, insert_rejects, start_import_run,
};
use tierwise_store::{Database, DbConnection, ImportRunId, StoreResult};

use crate::ImportError;
use crate::mapping::{ColumnMapping, Columns, KindMapping, RecordKind};
use crate::parse::{self, RowDefaults, RowReject};
use crate::source::{self, Encoding, RowSink, SourceRow};

/// The `[import]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportSettings {
    /// Source name of file imports (records are unique per source and id).
    pub source: String,
    /// Currency of amounts when a file has no currency column.
    pub default_currency: String,
    /// Locale of owners created from an email alone, or without a locale column.
    pub default_locale: String,
    /// Create a customer named in an orders or invoices row when unknown (else reject the row).
    pub create_missing_customers: bool,
    /// Rows per bulk write.
    pub batch_size: usize,
    /// CSV encoding: auto, utf-8, gbk or gb18030.
    pub encoding: String,
    /// Date formats tried in order (chrono strftime syntax).
    pub date_formats: Vec<String>,
    /// Column mapping file (TOML); empty means headers equal the field names.
    pub mapping_file: String,
}

impl Default for ImportSettings {
    fn default() -> Self {
        Self {
            source: SourceName::FILE.to_string(),
            default_currency: "CNY".to_string(),
            default_locale: "zh-CN".to_string(),
            create_missing_customers: true,
            batch_size: 50_000,
            encoding: "auto".to_string(),
            date_formats: vec![
                "%Y-%m-%d".to_string(),
                "%Y/%m/%d".to_string(),
                "%Y.%m.%d".to_string(),
                "%Y%m%d".to_string(),
                "%Y年%m月%d日".to_string(),
            ],
            mapping_file: String::new(),
        }
    }
}

/// Everything one file import needs, validated.
#[derive(Debug, Clone)]
pub struct FileImportOptions {
    /// What the file holds.
    pub kind: RecordKind,
    /// Source name.
    pub source: SourceName,
    /// CSV encoding.
    pub encoding: Encoding,
    /// XLSX sheet (default: the first).
    pub sheet: Option<String>,
    /// Column mapping.
    pub mapping: ColumnMapping,
    /// See [`ImportSettings::create_missing_customers`].
    pub create_missing_customers: bool,
    /// Currency when the file has none.
    pub currency: Currency,
    /// Locale when the file has none.
    pub locale: Locale,
    /// Date formats.
    pub date_formats: Vec<String>,
    /// Rows per bulk write.
    pub batch_size: usize,
    /// On SQLite, a chunk of at least this many rows into a table that holds few rows yet
    /// rebuilds the table's index by customer at the end instead of updating it row by row
    /// (see [`DeferredIndexes`]); 0 never does.
    pub defer_indexes_from_rows: usize,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
}

/// Chunk rows from which an import defers SQLite's index by customer (the default chunk is
/// 50,000 rows; a file smaller than one chunk gains little from deferring).
pub const DEFER_INDEXES_FROM_ROWS: usize = 10_000;

impl FileImportOptions {
    /// Validates the settings; an error names the `import.*` key at fault.
    pub fn from_settings(
        settings: &ImportSettings,
        kind: RecordKind,
        mapping: ColumnMapping,
    ) -> Result<Self, ImportError> {
        let key =
            |key: &str, reason: String| ImportError::Config(format!("import.{key}: {reason}"));
        if !(100..=1_000_000).contains(&settings.batch_size) {
            return Err(key(
                "batch_size",
                format!("{} is outside 100..=1000000", settings.batch_size),
            ));
        }
        if settings.date_formats.is_empty() {
            return Err(key(
                "date_formats",
                "needs at least one format such as \"%Y-%m-%d\"".into(),
            ));
        }
        Ok(Self {
            kind,
            source: SourceName::parse(&settings.source).map_err(|e| key("source", e.reason))?,
            encoding: settings.encoding.parse().map_err(|e| key("encoding", e))?,
            sheet: None,
            mapping,
            create_missing_customers: settings.create_missing_customers,
            currency: Currency::parse(&settings.default_currency)
                .map_err(|e| key("default_currency", e.reason))?,
            locale: Locale::parse(&settings.default_locale)
                .map_err(|e| key("default_locale", e.reason))?,
            date_formats: settings.date_formats.clone(),
            batch_size: settings.batch_size,
            defer_indexes_from_rows: DEFER_INDEXES_FROM_ROWS,
            progress: false,
        })
    }
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The run id (look up its rejects with it).
    pub run: ImportRunId,
    /// The file.
    pub path: PathBuf,
    /// What it held.
    pub kind: RecordKind,
    /// Outcome.
    pub status: RunStatus,
    /// Counts.
    pub totals: RunTotals,
    /// Rejects per column (header as in the file; `(row)` for whole-row problems).
    pub rejects_by_field: BTreeMap<String, u64>,
    /// The first few rejects, for the summary.
    pub first_rejects: Vec<Reject>,
    /// Encoding read (`utf-8`, `gb18030`, `xlsx`).
    pub encoding: String,
    /// Wall time.
    pub elapsed: Duration,
    /// Indexes built again after the rows were in, instead of updated row by row (SQLite, large
    /// loads into small tables).
    pub indexes_rebuilt: usize,
}

/// How many rejects a report shows in full.
const REPORT_REJECTS: usize = 10;

/// Imports `path` (CSV, or XLSX by extension) into `db`.
#[tracing::instrument(skip_all, fields(path = %path.display(), kind = %options.kind))]
pub fn import_file(
    db: &Database,
    path: &Path,
    options: &FileImportOptions,
) -> Result<ImportReport, ImportError> {
    let started = Instant::now();
    let mut conn = db.conn()?;
    let origin = path.display().to_string();
    let run = start_import_run(&mut conn, &options.source, options.kind.as_str(), &origin)?;
    let result = with_bulk_load_settings(&mut conn, |conn| {
        tierwise_store::transaction(conn, |tx| load_file(tx, run, path, options))
    });
    match result {
        Ok(mut report) => {
            refresh_statistics(&mut conn, &report);
            report.elapsed = started.elapsed();
            tracing::info!(
                run = run.0,
                rows.read = report.totals.rows_read,
                rows.written = report.totals.rows_written,
                rows.rejected = report.totals.rows_rejected,
                duration_ms = report.elapsed.as_millis() as u64,
                "import finished"
            );
            Ok(report)
        }
        Err(err) => {
            let message = err.to_string();
            finish_import_run(
                &mut conn,
                run,
                RunStatus::Failed,
                &RunTotals::default(),
                Some(&message),
            )?;
            Err(err)
        }
    }
}

/// Refreshes the database's statistics of what a large import wrote (best effort: the data is
/// committed, and autovacuum gets there later anyway).
fn refresh_statistics(conn: &mut DbConnection, report: &ImportReport) {
    let table = match report.kind {
        RecordKind::Owners => LoadedTable::Owners,
        RecordKind::Customers => LoadedTable::Customers,
        RecordKind::Orders => LoadedTable::Orders,
        RecordKind::Invoices => LoadedTable::Invoices,
        RecordKind::Activities => LoadedTable::Activities,
    };
    let mut written = vec![(table, report.totals.rows_written)];
    if table != LoadedTable::Customers {
        written.push((LoadedTable::Customers, report.totals.customers_created));
    }
    for (table, rows) in written {
        if let Err(error) = analyze_after_load(conn, table, rows) {
            tracing::warn!(?table, %error, "refreshing statistics after the import failed");
        }
    }
}

fn load_file(
    tx: &mut DbConnection,
    run: ImportRunId,
    path: &Path,
    options: &FileImportOptions,
) -> Result<ImportReport, ImportError> {
    let ctx = LoadContext {
        source: options.source.clone(),
        run,
        create_missing_customers: options.create_missing_customers,
        default_locale: options.locale,
        known_customers: Default::default(),
        deferred_indexes: DeferredIndexes::from_chunk_rows(options.defer_indexes_from_rows),
    };
    let (mut state, loaded, encoding) = match options.kind {
        RecordKind::Owners => pipeline(tx, &ctx, path, options, parse::owner, load_owners),
        RecordKind::Customers => pipeline(tx, &ctx, path, options, parse::customer, load_customers),
        RecordKind::Orders => pipeline(tx, &ctx, path, options, parse::order, load_orders),
        RecordKind::Invoices => pipeline(tx, &ctx, path, options, parse::invoice, load_invoices),
        RecordKind::Activities => {
            pipeline(tx, &ctx, path, options, parse::activity, load_activities)
        }
    }?;
    finish_load(tx, &ctx)?;
    state.totals.rows_written = loaded.rows_written;
    state.totals.rows_unchanged = loaded.rows_unchanged;
    state.totals.customers_created = loaded.customers_created;
    state.totals.rows_rejected += loaded.unknown_customer_rejects.len() as u64;
    for reject in loaded.unknown_customer_rejects {
        state.count_reject(reject);
    }
    let status = if state.totals.rows_rejected > 0 {
        RunStatus::CompletedWithRejects
    } else {
        RunStatus::Succeeded
    };
    finish_import_run(tx, run, status, &state.totals, None)?;
    Ok(ImportReport {
        run,
        path: path.to_path_buf(),
        kind: options.kind,
        status,
        totals: state.totals,
        rejects_by_field: state.rejects_by_field,
        first_rejects: state.first_rejects,
        encoding,
        elapsed: Duration::ZERO,
        indexes_rebuilt: ctx.deferred_indexes.rebuilt(),
    })
}

/// What the database side did.
#[derive(Default)]
struct LoadState {
    rows_written: u64,
    rows_unchanged: u64,
    customers_created: u64,
    /// Rejected by the store (unknown customer); tallied into the report at the end.
    unknown_customer_rejects: Vec<Reject>,
}

/// Batches queued between the parsing thread and the loading thread. Zero makes a rendezvous:
/// the parser builds the next batch while the loader writes the current one, so at most two
/// batches are in memory.
const BATCHES_IN_FLIGHT: usize = 0;

/// Reads and validates on one thread while the calling thread (which owns the transaction)
/// writes the previous batch, so parsing and database work overlap.
fn pipeline<T: Send>(
    conn: &mut DbConnection,
    ctx: &LoadContext,
    path: &Path,
    options: &FileImportOptions,
    parse: ParseFn<T>,
    load: LoadFn<T>,
) -> Result<(ReportState, LoadState, String), ImportError> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Batch<T>>(BATCHES_IN_FLIGHT);
    // Loaded batches go back to the parsing thread to be freed there: it allocated their
    // strings, and freeing a million rows' worth on the loading thread (the busier one) cost
    // about a tenth of its time in the allocator.
    let (done, loaded_batches) = std::sync::mpsc::channel::<Batch<T>>();
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut parser = Parser {
                path,
                kind: options.kind,
                mapping: options.mapping.for_kind(options.kind),
                defaults: RowDefaults {
                    currency: options.currency,
                    locale: options.locale,
                    date_formats: options.date_formats.clone(),
                },
                parse,
                columns: None,
                batch: Batch::with_capacity(options.batch_size),
                batch_size: options.batch_size,
                keep_raw: keeps_raw(options),
                sender,
                loaded_batches,
                state: ReportState::default(),
            };
            let encoding = read(path, options, &mut parser)?;
            parser.send()?;
            let mut state = parser.state;
            state.totals.unused_columns = parser.columns.map(|c| c.unused).unwrap_or_default();
            Ok::<_, ImportError>((state, encoding))
        });
        let mut loaded = LoadState::default();
        let origin = path.display().to_string();
        // Ends when the parser is done (or has failed and dropped its sender).
        for mut batch in receiver.iter() {
            if let Err(e) = load_batch(conn, ctx, &origin, load, &mut batch, &mut loaded) {
                // Without a receiver the parser's next send fails and it stops.
                drop(receiver);
                let _ = reader.join();
                return Err(e);
            }
            // The parser may have finished: then this thread frees the batch after all.
            let _ = done.send(batch);
        }
        let (parsed, encoding) = reader
            .join()
            .map_err(|_| ImportError::Config("the file reader thread panicked".into()))??;
        Ok((parsed, loaded, encoding))
    })
}

/// Raw records are kept only where the store can still refuse a row (unknown customer).
fn keeps_raw(options: &FileImportOptions) -> bool {
    match options.kind {
        RecordKind::Orders | RecordKind::Invoices => !options.create_missing_customers,
        RecordKind::Activities => true,
        RecordKind::Owners | RecordKind::Customers => false,
    }
}

fn load_batch<T>(
    conn: &mut DbConnection,
    ctx: &LoadContext,
    origin: &str,
    load: LoadFn<T>,
    batch: &mut Batch<T>,
    loaded: &mut LoadState,
) -> Result<(), ImportError> {
    if !batch.rows.is_empty() {
        let outcome = load(conn, ctx, &batch.rows)?;
        let unknown = outcome.unknown_customer_lines.len() as u64;
        loaded.rows_written += outcome.written;
        loaded.customers_created += outcome.customers_created;
        loaded.rows_unchanged +=
            (batch.rows.len() as u64).saturating_sub(outcome.written + unknown);
        for line in outcome.unknown_customer_lines {
            let reject = Reject {
                line,
                field: Some(batch.customer_header.clone()),
                reason: batch.unknown_customer_reason.to_string(),
                raw_record: batch.raw.remove(&line).unwrap_or_default(),
            };
            batch.rejects.push(reject.clone());
            loaded.unknown_customer_rejects.push(reject);
        }
    }
    if !batch.rejects.is_empty() {
        insert_rejects(conn, ctx.run, origin, &batch.rejects)?;
    }
    Ok(())
}

fn read(
    path: &Path,
    options: &FileImportOptions,
    sink: &mut dyn RowSink,
) -> Result<String, ImportError> {
    let is_xlsx = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("xlsx") || e.eq_ignore_ascii_case("xlsm"));
    if is_xlsx {
        let bar = source::progress_bar(None, options.progress);
        bar.set_message(format!("{} rows", options.kind));
        source::read_xlsx(path, options.sheet.as_deref(), &bar, sink)?;
        bar.finish_and_clear();
        Ok("xlsx".to_string())
    } else {
        let size = std::fs::metadata(path).map(|m| m.len()).ok();
        let bar = source::progress_bar(size, options.progress);
        bar.set_message(options.kind.to_string());
        let encoding = source::read_csv(path, options.encoding, &bar, sink)?;
        bar.finish_and_clear();
        Ok(encoding.as_str().to_string())
    }
}

#[derive(Default)]
struct ReportState {
    totals: RunTotals,
    rejects_by_field: BTreeMap<String, u64>,
    first_rejects: Vec<Reject>,
}

impl ReportState {
    /// Tallies a reject for the summary (the caller counts it in `rows_rejected`).
    fn count_reject(&mut self, reject: Reject) {
        *self
            .rejects_by_field
            .entry(reject.field.clone().unwrap_or_else(|| "(row)".to_string()))
            .or_default() += 1;
        if self.first_rejects.len() < REPORT_REJECTS {
            self.first_rejects.push(reject);
        }
    }
}

type ParseFn<T> = fn(&Columns, &StringRecord, &RowDefaults) -> Result<T, RowReject>;
type LoadFn<T> = fn(&mut DbConnection, &LoadContext, &[Staged<T>]) -> StoreResult<LoadOutcome>;

/// A chunk of validated rows and the rejects found while parsing them.
struct Batch<T> {
    rows: Vec<Staged<T>>,
    rejects: Vec<Reject>,
    raw: HashMap<u64, String>,
    customer_header: String,
    unknown_customer_reason: &'static str,
}

impl<T> Batch<T> {
    fn with_capacity(n: usize) -> Self {
        Self {
            rows: Vec::with_capacity(n),
            rejects: Vec::new(),
            raw: HashMap::new(),
            customer_header: String::new(),
            unknown_customer_reason: "",
        }
    }
}

/// Receives rows from a source and turns them into batches of validated records.
struct Parser<'a, T> {
    path: &'a Path,
    kind: RecordKind,
    mapping: &'a KindMapping,
    defaults: RowDefaults,
    parse: ParseFn<T>,
    columns: Option<Columns>,
    batch: Batch<T>,
    batch_size: usize,
    keep_raw: bool,
    sender: std::sync::mpsc::SyncSender<Batch<T>>,
    /// Batches the loader is done with, freed on this thread.
    loaded_batches: std::sync::mpsc::Receiver<Batch<T>>,
    state: ReportState,
}

/// The record as one CSV line, for the rejects table.
fn raw_record(record: &StringRecord) -> String {
    let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
    if writer.write_record(record).is_err() {
        return record.iter().collect::<Vec<_>>().join(",");
    }
    let bytes = writer.into_inner().unwrap_or_default();
    String::from_utf8_lossy(&bytes).trim_end().to_string()
}

impl<T> Parser<'_, T> {
    fn reject(&mut self, line: u64, field: Option<String>, reason: String, raw_record: String) {
        self.state.totals.rows_rejected += 1;
        let reject = Reject {
            line,
            field,
            reason,
            raw_record,
        };
        self.state.count_reject(reject.clone());
        self.batch.rejects.push(reject);
    }

    /// Hands the current batch to the loading thread.
    fn send(&mut self) -> Result<(), ImportError> {
        let mut batch = std::mem::replace(&mut self.batch, Batch::with_capacity(self.batch_size));
        batch.customer_header = self
            .columns
            .as_ref()
            .map(|c| c.header_of("customer_id"))
            .unwrap_or_else(|| "customer_id".to_string());
        batch.unknown_customer_reason = match self.kind {
            RecordKind::Activities => {
                "customer_id: no customer with this id; import the customers file first"
            }
            _ => {
                "customer_id: no customer with this id and import.create_missing_customers is false; import the customers file first"
            }
        };
        self.sender
            .send(batch)
            .map_err(|_| ImportError::Config("the import was stopped".into()))?;
        // The send returned when the loader took the batch, so the one before is done by now
        // or soon; free whatever has come back.
        while let Ok(loaded) = self.loaded_batches.try_recv() {
            drop(loaded);
        }
        Ok(())
    }

    fn maybe_send(&mut self) -> Result<(), ImportError> {
        if self.batch.rows.len() >= self.batch_size || self.batch.rejects.len() >= self.batch_size {
            self.send()?;
        }
        Ok(())
    }
}

impl<T> RowSink for Parser<'_, T> {
    fn header(&mut self, headers: &StringRecord) -> Result<(), ImportError> {
        self.columns = Some(Columns::resolve(
            self.kind,
            self.mapping,
            headers,
            self.path,
        )?);
        Ok(())
    }

    fn row(&mut self, row: SourceRow) -> Result<(), ImportError> {
        let Some(columns) = self.columns.as_ref() else {
            return Err(ImportError::Spreadsheet {
                path: self.path.to_path_buf(),
                reason: "data arrived before the header row".into(),
            });
        };
        let (line, record) = match row {
            SourceRow::Undecodable { line, raw, reason } => {
                self.state.totals.rows_read += 1;
                self.reject(line, None, format!("line {line} {reason}"), raw);
                return self.maybe_send();
            }
            SourceRow::Record { line, record } => (line, record),
        };
        if record.iter().all(|f| f.trim().is_empty()) {
            return Ok(());
        }
        self.state.totals.rows_read += 1;
        let width = columns.width();
        if record.len() > width && record.iter().skip(width).any(|f| !f.trim().is_empty()) {
            let reason = format!(
                "has {} fields but the header has {width}; check for an unquoted delimiter or line break",
                record.len()
            );
            self.reject(line, None, reason, raw_record(&record));
            return self.maybe_send();
        }
        match (self.parse)(columns, &record, &self.defaults) {
            Ok(parsed) => {
                if self.keep_raw {
                    self.batch.raw.insert(line, raw_record(&record));
                }
                self.batch.rows.push(Staged {
                    line,
                    record: parsed,
                });
            }
            Err(RowReject { field, reason }) => {
                self.reject(line, field, reason, raw_record(&record))
            }
        }
        self.maybe_send()
    }
}
