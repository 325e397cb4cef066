//! Importers of tierwise: they bring owners, customers, orders, invoices and activities in from
//! CSV and XLSX files (CRM connectors follow) and hand validated domain records to the store.
//!
//! An import streams its input with constant memory, validates every row into a domain record,
//! loads good rows in chunks through the store's bulk path inside one transaction, and keeps
//! every bad row as a reject with its line, column and reason.

pub mod crm;
pub mod demo;
mod error;
pub mod file;
pub mod mapping;
mod parse;
mod source;

pub use error::ImportError;
pub use file::{FileImportOptions, ImportReport, ImportSettings, import_file};
pub use mapping::{ColumnMapping, KindMapping, RecordKind};
pub use source::Encoding;
