//! Row sources: CSV (UTF-8 with or without BOM, or GBK/GB18030) and XLSX, read as a stream of
//! records with their line numbers and constant memory.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;
use std::str::FromStr;

use calamine::{DataRef, Reader, Xlsx};
use csv::{ByteRecord, StringRecord};
use encoding_rs_io::DecodeReaderBytesBuilder;
use indicatif::{ProgressBar, ProgressStyle};

use crate::ImportError;

/// The text encoding of a CSV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Look at the start of the file: valid UTF-8 is UTF-8, anything else is GB18030.
    Auto,
    /// UTF-8, with or without a byte-order mark.
    Utf8,
    /// GB18030, a superset of GBK and GB2312 (Excel and most Chinese software on Windows).
    Gb18030,
}

impl FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "auto" => Ok(Self::Auto),
            "utf-8" | "utf8" => Ok(Self::Utf8),
            "gbk" | "gb2312" | "gb18030" | "cp936" => Ok(Self::Gb18030),
            _ => Err(format!(
                "'{s}' is not a supported encoding; use auto, utf-8, gbk or gb18030"
            )),
        }
    }
}

impl Encoding {
    /// Its name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Utf8 => "utf-8",
            Self::Gb18030 => "gb18030",
        }
    }
}

/// How much of a file auto-detection looks at.
const SNIFF_BYTES: usize = 64 * 1024;

/// Decides the encoding of a file from its first bytes.
pub fn detect_encoding(head: &[u8]) -> Encoding {
    if head.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Encoding::Utf8;
    }
    match std::str::from_utf8(head) {
        Ok(_) => Encoding::Utf8,
        // A multi-byte character cut at the end of the sample is still UTF-8.
        Err(e) if e.error_len().is_none() => Encoding::Utf8,
        Err(_) => Encoding::Gb18030,
    }
}

/// The delimiter with the most occurrences in the first line: `,`, `;` or tab.
fn detect_delimiter(head: &str) -> u8 {
    let first_line = head.lines().next().unwrap_or("");
    [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| first_line.bytes().filter(|b| b == d).count())
        .unwrap_or(b',')
}

/// One row read from a source.
#[derive(Debug)]
pub enum SourceRow {
    /// A decodable row.
    Record {
        /// 1-based line number of its first line (CSV) or its row number (XLSX).
        line: u64,
        /// The fields.
        record: StringRecord,
    },
    /// A row that is not valid text in the file's encoding.
    Undecodable {
        /// Line number.
        line: u64,
        /// The row with invalid bytes replaced.
        raw: String,
        /// Why.
        reason: String,
    },
}

/// Receives what a source reads: the header row first, then each data row.
pub trait RowSink {
    /// The header row (called once, before any row).
    fn header(&mut self, headers: &StringRecord) -> Result<(), ImportError>;
    /// One data row.
    fn row(&mut self, row: SourceRow) -> Result<(), ImportError>;
}

/// Streams a CSV file into `sink`, detecting encoding (unless given) and delimiter; returns the
/// encoding used.
pub fn read_csv(
    path: &Path,
    encoding: Encoding,
    progress: &ProgressBar,
    sink: &mut dyn RowSink,
) -> Result<Encoding, ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    (&mut file)
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    file.rewind().map_err(io)?;
    let encoding = match encoding {
        Encoding::Auto => detect_encoding(&head),
        chosen => chosen,
    };
    let head_text = match encoding {
        Encoding::Gb18030 => encoding_rs::GB18030.decode(&head).0.into_owned(),
        _ => String::from_utf8_lossy(&head).into_owned(),
    };
    let delimiter = detect_delimiter(head_text.trim_start_matches('\u{feff}'));
    let input: Box<dyn Read> = match encoding {
        // csv strips a UTF-8 byte-order mark itself; UTF-8 passes through undecoded.
        Encoding::Utf8 | Encoding::Auto => Box::new(progress.wrap_read(file)),
        Encoding::Gb18030 => Box::new(
            DecodeReaderBytesBuilder::new()
                .encoding(Some(encoding_rs::GB18030))
                .build(progress.wrap_read(file)),
        ),
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .has_headers(true)
        .from_reader(input);
    let csv_err = |source| ImportError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let header_bytes = reader.byte_headers().map_err(csv_err)?.clone();
    let headers = StringRecord::from_byte_record(header_bytes).map_err(|_| ImportError::Spreadsheet {
        path: path.to_path_buf(),
        reason: "the header row is not valid UTF-8; pass --encoding gbk if the file was saved by Chinese Excel".into(),
    })?;
    if headers.iter().all(|h| h.trim().is_empty()) {
        return Err(ImportError::Spreadsheet {
            path: path.to_path_buf(),
            reason: "the file is empty or its first row has no headers".into(),
        });
    }
    sink.header(&headers)?;
    let mut buffer = ByteRecord::new();
    while reader.read_byte_record(&mut buffer).map_err(csv_err)? {
        let line = buffer.position().map(|p| p.line()).unwrap_or(0);
        // The record moves into the StringRecord without a copy; the next read starts afresh.
        let row = match StringRecord::from_byte_record(std::mem::take(&mut buffer)) {
            Ok(record) => SourceRow::Record { line, record },
            Err(e) => {
                let bytes = e.into_byte_record();
                let fields: Vec<String> = bytes
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
                SourceRow::Undecodable {
                    line,
                    raw: fields.join(","),
                    reason: "is not valid UTF-8; if the file was saved by Chinese Excel, pass --encoding gbk"
                        .into(),
                }
            }
        };
        sink.row(row)?;
    }
    Ok(encoding)
}

/// Text of a cell: numbers without float noise, dates as ISO 8601.
fn cell_text(value: &DataRef<'_>) -> String {
    match value {
        DataRef::Empty => String::new(),
        DataRef::String(s) | DataRef::DateTimeIso(s) | DataRef::DurationIso(s) => s.clone(),
        DataRef::SharedString(s) => (*s).to_string(),
        DataRef::Int(i) => i.to_string(),
        DataRef::Float(f) => {
            if f.fract() == 0.0 && f.abs() < 1e15 {
                format!("{}", *f as i64)
            } else {
                format!("{f}")
            }
        }
        DataRef::Bool(b) => b.to_string(),
        DataRef::DateTime(dt) => match dt.as_datetime() {
            Some(t) if t.time() == chrono::NaiveTime::MIN => t.date().to_string(),
            Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
            None => dt.as_f64().to_string(),
        },
        DataRef::Error(e) => format!("#ERROR {e}"),
    }
}

/// Streams a worksheet (`sheet`, or the first) of an XLSX workbook into `sink`, cell by cell from
/// the worksheet XML; only the current row is held. The first non-empty row is the header.
pub fn read_xlsx(
    path: &Path,
    sheet: Option<&str>,
    progress: &ProgressBar,
    sink: &mut dyn RowSink,
) -> Result<(), ImportError> {
    let spreadsheet = |reason: String| ImportError::Spreadsheet {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut workbook: Xlsx<BufReader<File>> = Xlsx::new(BufReader::new(file))
        .map_err(|e| spreadsheet(format!("is not a readable .xlsx workbook ({e})")))?;
    let names = workbook.sheet_names();
    let name = match sheet {
        Some(wanted) => names
            .iter()
            .find(|n| n.as_str() == wanted)
            .cloned()
            .ok_or_else(|| {
                spreadsheet(format!(
                    "has no sheet '{wanted}'; its sheets are: {}",
                    names.join(", ")
                ))
            })?,
        None => names
            .first()
            .cloned()
            .ok_or_else(|| spreadsheet("has no sheets".into()))?,
    };
    let mut cells = workbook
        .worksheet_cells_reader(&name)
        .map_err(|e| spreadsheet(format!("sheet '{name}': {e}")))?;
    let mut width: Option<usize> = None;
    let mut current: Option<(u32, Vec<String>)> = None;
    let mut emit =
        |row: u32, mut fields: Vec<String>, width: &mut Option<usize>| -> Result<(), ImportError> {
            progress.inc(1);
            match *width {
                None => {
                    if fields.iter().all(|f| f.trim().is_empty()) {
                        return Ok(());
                    }
                    *width = Some(fields.len());
                    sink.header(&StringRecord::from(fields))
                }
                Some(w) => {
                    // Trailing empty cells are not stored in XLSX; pad to the header width.
                    if fields.len() < w {
                        fields.resize(w, String::new());
                    }
                    sink.row(SourceRow::Record {
                        line: u64::from(row) + 1,
                        record: StringRecord::from(fields),
                    })
                }
            }
        };
    while let Some(cell) = cells
        .next_cell()
        .map_err(|e| spreadsheet(format!("sheet '{name}': {e}")))?
    {
        let (row, col) = cell.get_position();
        if current.as_ref().is_some_and(|(r, _)| *r != row)
            && let Some((r, fields)) = current.take()
        {
            emit(r, fields, &mut width)?;
        }
        let (_, fields) = current.get_or_insert_with(|| (row, Vec::new()));
        let col = col as usize;
        if fields.len() <= col {
            fields.resize(col + 1, String::new());
        }
        fields[col] = cell_text(cell.get_value());
    }
    if let Some((r, fields)) = current.take() {
        emit(r, fields, &mut width)?;
    }
    if width.is_none() {
        return Err(spreadsheet(format!("sheet '{name}' is empty")));
    }
    Ok(())
}

/// A spinner or byte progress bar on a terminal, hidden otherwise.
pub fn progress_bar(total_bytes: Option<u64>, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    match total_bytes {
        Some(total) => {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        }
        None => ProgressBar::new_spinner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_encodings() {
        assert_eq!(
            detect_encoding("客户名称,金额\n".as_bytes()),
            Encoding::Utf8
        );
        assert_eq!(detect_encoding(b"\xEF\xBB\xBFa,b"), Encoding::Utf8);
        let (gbk, _, _) = encoding_rs::GBK.encode("客户名称,金额\n");
        assert_eq!(detect_encoding(&gbk), Encoding::Gb18030);
        // A UTF-8 character cut by the sample boundary.
        let text = "名称".as_bytes();
        assert_eq!(detect_encoding(&text[..4]), Encoding::Utf8);
    }

    #[test]
    fn detects_delimiters() {
        assert_eq!(detect_delimiter("a;b;c\n1,5;2;3"), b';');
        assert_eq!(detect_delimiter("a\tb\n"), b'\t');
        assert_eq!(detect_delimiter("a,b\n"), b',');
    }

    #[test]
    fn parses_encoding_names() {
        assert_eq!("GBK".parse::<Encoding>().unwrap(), Encoding::Gb18030);
        assert_eq!("utf_8".parse::<Encoding>().unwrap(), Encoding::Utf8);
        assert!("latin1".parse::<Encoding>().is_err());
    }
}
