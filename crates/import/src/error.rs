//! Errors of the importers. A whole-file problem (unreadable file, a required column missing, a
//! bad mapping) is an [`ImportError`]; a problem with one row is not an error at all but a
//! reject, stored with its line and reason while the good rows load.

use std::path::PathBuf;

use tierwise_store::StoreError;

/// Why an import could not run.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The CSV structure is broken beyond one row.
    #[error("{path}: {source}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: csv::Error,
    },
    /// The spreadsheet could not be read.
    #[error("{path}: {reason}")]
    Spreadsheet {
        /// The file.
        path: PathBuf,
        /// What went wrong and how to fix it.
        reason: String,
    },
    /// Required columns are missing from the header row.
    #[error(
        "{path}: required column{} missing for {kind}: {}. The file's headers are: {}. \
         Map your headers to these fields in a mapping file (see config/mapping-zh-CN.toml)",
        if missing.len() > 1 { "s" } else { "" },
        missing.join(", "),
        found.join(", ")
    )]
    MissingColumns {
        /// The file.
        path: PathBuf,
        /// Record kind being imported.
        kind: String,
        /// Each missing field with the header(s) looked for, e.g. `amount (looked for "金额")`.
        missing: Vec<String>,
        /// The headers the file has.
        found: Vec<String>,
    },
    /// The column mapping or import settings are invalid.
    #[error("{0}")]
    Config(String),
    /// The database failed; the import was rolled back.
    #[error(transparent)]
    Store(#[from] StoreError),
}
