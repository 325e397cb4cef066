//! Which input column feeds which field. By default a field is read from the column with the
//! same name (compared ignoring case, spaces, `_` and `-`, so `Customer ID` feeds `customer_id`);
//! a mapping file names other headers, e.g. `金额` for `amount`, and maps extra numeric customer
//! columns to named attributes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use csv::StringRecord;
use serde::{Deserialize, Serialize};

use crate::ImportError;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// Account managers.
    Owners,
    /// Customers (accounts).
    Customers,
    /// Orders or won deals.
    Orders,
    /// Invoices and their payment dates.
    Invoices,
    /// Calls, visits, emails, meetings.
    Activities,
}

/// A field a kind reads, and whether a file must have it.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    /// Canonical name.
    pub name: &'static str,
    /// Whether the column must be present.
    pub required: bool,
    /// What it holds, for help texts.
    pub help: &'static str,
}

const fn req(name: &'static str, help: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        required: true,
        help,
    }
}
const fn opt(name: &'static str, help: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        required: false,
        help,
    }
}

const OWNER_FIELDS: &[FieldSpec] = &[
    req("email", "the manager's email (the key)"),
    req("name", "display name"),
    opt("locale", "zh-CN or en (default from import.default_locale)"),
    opt("owner_id", "the manager's id in the source system"),
];
const CUSTOMER_FIELDS: &[FieldSpec] = &[
    req("customer_id", "the customer's id in the source (the key)"),
    req("name", "company or person name"),
    opt("contact_name", "contact person"),
    opt("contact_email", "contact email"),
    opt("contact_phone", "contact phone"),
    opt("owner_email", "account manager's email"),
    opt("created_date", "customer since (date)"),
    opt("prospect_rating", "manual rating 1-5 for new customers"),
];
const ORDER_FIELDS: &[FieldSpec] = &[
    req("order_id", "the order's id (the key)"),
    req("customer_id", "the customer's id"),
    req("order_date", "date of the order"),
    req("amount", "revenue, e.g. 1234.56 (negative for a refund)"),
    opt("cost", "cost of goods, same currency"),
    opt(
        "currency",
        "ISO code (default from import.default_currency)",
    ),
    opt("quantity", "units, not negative"),
    opt(
        "customer_name",
        "creates an unknown customer with this name",
    ),
    opt("owner_email", "owner of a customer created from this row"),
];
const INVOICE_FIELDS: &[FieldSpec] = &[
    req("invoice_id", "the invoice's id (the key)"),
    req("customer_id", "the customer's id"),
    opt("order_id", "the order it bills"),
    req("issued_date", "issue date"),
    req("due_date", "due date"),
    req("amount", "amount due"),
    opt("paid_date", "date paid in full; empty while unpaid"),
    opt(
        "currency",
        "ISO code (default from import.default_currency)",
    ),
    opt(
        "customer_name",
        "creates an unknown customer with this name",
    ),
    opt("owner_email", "owner of a customer created from this row"),
];
const ACTIVITY_FIELDS: &[FieldSpec] = &[
    req("activity_id", "the activity's id (the key)"),
    req("customer_id", "the customer's id"),
    req(
        "kind",
        "call, visit, email or meeting (电话, 拜访, 邮件, 会议)",
    ),
    req("occurred_at", "when (date, or date and time in UTC)"),
    opt("owner_email", "who made the contact"),
    opt("note", "free text"),
];

impl RecordKind {
    /// Every kind, in the order files are best imported.
    pub const ALL: [RecordKind; 5] = [
        Self::Owners,
        Self::Customers,
        Self::Orders,
        Self::Invoices,
        Self::Activities,
    ];

    /// The kind's name as used on the command line and in mapping files.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Owners => "owners",
            Self::Customers => "customers",
            Self::Orders => "orders",
            Self::Invoices => "invoices",
            Self::Activities => "activities",
        }
    }

    /// The fields this kind reads.
    pub fn fields(&self) -> &'static [FieldSpec] {
        match self {
            Self::Owners => OWNER_FIELDS,
            Self::Customers => CUSTOMER_FIELDS,
            Self::Orders => ORDER_FIELDS,
            Self::Invoices => INVOICE_FIELDS,
            Self::Activities => ACTIVITY_FIELDS,
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "'{s}' is not a kind; use owners, customers, orders, invoices or activities"
                )
            })
    }
}

/// One header name or several accepted alternatives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Headers {
    /// A single header.
    One(String),
    /// Any of these headers (the first present wins).
    Any(Vec<String>),
}

impl Headers {
    fn names(&self) -> Vec<&str> {
        match self {
            Self::One(h) => vec![h.as_str()],
            Self::Any(hs) => hs.iter().map(String::as_str).collect(),
        }
    }
}

/// Column mapping of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindMapping {
    /// Field name → the header(s) it is read from.
    #[serde(default)]
    pub columns: BTreeMap<String, Headers>,
    /// Customer attribute name → the header it is read from (customers only).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Column mappings of every kind, as read from a mapping file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMapping {
    /// Owners.
    #[serde(default)]
    pub owners: KindMapping,
    /// Customers.
    #[serde(default)]
    pub customers: KindMapping,
    /// Orders.
    #[serde(default)]
    pub orders: KindMapping,
    /// Invoices.
    #[serde(default)]
    pub invoices: KindMapping,
    /// Activities.
    #[serde(default)]
    pub activities: KindMapping,
}

impl ColumnMapping {
    /// The mapping of one kind.
    pub fn for_kind(&self, kind: RecordKind) -> &KindMapping {
        match kind {
            RecordKind::Owners => &self.owners,
            RecordKind::Customers => &self.customers,
            RecordKind::Orders => &self.orders,
            RecordKind::Invoices => &self.invoices,
            RecordKind::Activities => &self.activities,
        }
    }

    /// Checks that every mapped field exists and that attributes appear only for customers.
    pub fn validate(&self, origin: &Path) -> Result<(), ImportError> {
        for kind in RecordKind::ALL {
            let mapping = self.for_kind(kind);
            for field in mapping.columns.keys() {
                if !kind.fields().iter().any(|f| f.name == field) {
                    let known: Vec<&str> = kind.fields().iter().map(|f| f.name).collect();
                    return Err(ImportError::Config(format!(
                        "{}: [{kind}.columns] names the field '{field}', which {kind} do not have; known fields: {}",
                        origin.display(),
                        known.join(", ")
                    )));
                }
            }
            if kind != RecordKind::Customers && !mapping.attributes.is_empty() {
                return Err(ImportError::Config(format!(
                    "{}: [{kind}.attributes] is not supported; attributes belong to customers",
                    origin.display()
                )));
            }
        }
        Ok(())
    }
}

/// Header comparison key: lower case without spaces, `_` and `-`.
fn normalise(header: &str) -> String {
    header
        .trim()
        .trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-' | '\u{3000}'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Field positions in a particular file.
#[derive(Debug, Clone)]
pub struct Columns {
    kind: RecordKind,
    positions: Vec<Option<usize>>,
    headers: Vec<String>,
    /// Attribute name and column position (customers only).
    pub attributes: Vec<(String, usize)>,
    /// Headers no field or attribute reads, in file order.
    pub unused: Vec<String>,
}

impl Columns {
    /// Matches `headers` against the mapping of `kind`. A missing required column is an error
    /// that names the field, the header(s) looked for, and the headers found.
    pub fn resolve(
        kind: RecordKind,
        mapping: &KindMapping,
        headers: &StringRecord,
        path: &Path,
    ) -> Result<Self, ImportError> {
        let normalised: Vec<String> = headers.iter().map(normalise).collect();
        let find = |wanted: &[&str]| {
            wanted.iter().find_map(|w| {
                let key = normalise(w);
                normalised.iter().position(|h| *h == key)
            })
        };
        let mut used = vec![false; normalised.len()];
        let mut positions = Vec::with_capacity(kind.fields().len());
        let mut missing = Vec::new();
        for field in kind.fields() {
            let wanted = mapping
                .columns
                .get(field.name)
                .map(Headers::names)
                .unwrap_or_else(|| vec![field.name]);
            let position = find(&wanted);
            if let Some(p) = position {
                used[p] = true;
            } else if field.required {
                let looked_for: Vec<String> = wanted.iter().map(|w| format!("\"{w}\"")).collect();
                missing.push(format!(
                    "{} (looked for {})",
                    field.name,
                    looked_for.join(" or ")
                ));
            }
            positions.push(position);
        }
        let mut attributes = Vec::new();
        // Attribute columns are optional: one mapping file serves exports with and without them.
        for (name, header) in &mapping.attributes {
            if let Some(p) = find(&[header.as_str()]) {
                used[p] = true;
                attributes.push((name.clone(), p));
            }
        }
        let found: Vec<String> = headers.iter().map(|h| h.trim().to_string()).collect();
        if !missing.is_empty() {
            return Err(ImportError::MissingColumns {
                path: path.to_path_buf(),
                kind: kind.to_string(),
                missing,
                found,
            });
        }
        let unused = found
            .iter()
            .zip(&used)
            .filter(|(h, used)| !**used && !h.is_empty())
            .map(|(h, _)| h.clone())
            .collect();
        Ok(Self {
            kind,
            positions,
            headers: found,
            attributes,
            unused,
        })
    }

    fn index(&self, field: &str) -> Option<usize> {
        self.kind
            .fields()
            .iter()
            .position(|f| f.name == field)
            .and_then(|i| self.positions[i])
    }

    /// The field's value in `record`, trimmed; `None` when the column is absent or the cell empty.
    pub fn get<'r>(&self, record: &'r StringRecord, field: &str) -> Option<&'r str> {
        self.index(field)
            .and_then(|i| record.get(i))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    /// The header the field was read from (for reject messages), or the field name.
    pub fn header_of(&self, field: &str) -> String {
        self.index(field)
            .and_then(|i| self.headers.get(i).cloned())
            .unwrap_or_else(|| field.to_string())
    }

    /// The header at a position.
    pub fn header_at(&self, position: usize) -> &str {
        self.headers.get(position).map(String::as_str).unwrap_or("")
    }

    /// Number of header columns.
    pub fn width(&self) -> usize {
        self.headers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(h: &[&str]) -> StringRecord {
        StringRecord::from(h.to_vec())
    }

    #[test]
    fn default_mapping_matches_loosely_and_lists_unused() {
        let cols = Columns::resolve(
            RecordKind::Orders,
            &KindMapping::default(),
            &headers(&[
                "\u{feff}Order ID",
                "customer-id",
                "ORDER_DATE",
                "amount",
                "备注",
            ]),
            Path::new("o.csv"),
        )
        .unwrap();
        let rec = headers(&["O1", "C1", "2026-01-02", " 12.5 ", "x"]);
        assert_eq!(cols.get(&rec, "order_id"), Some("O1"));
        assert_eq!(cols.get(&rec, "amount"), Some("12.5"));
        assert_eq!(cols.get(&rec, "cost"), None);
        assert_eq!(cols.unused, vec!["备注".to_string()]);
    }

    #[test]
    fn missing_required_column_names_field_and_headers_found() {
        let mut mapping = KindMapping::default();
        mapping
            .columns
            .insert("amount".into(), Headers::One("金额".into()));
        let err = Columns::resolve(
            RecordKind::Orders,
            &mapping,
            &headers(&["order_id", "customer_id", "order_date", "总价"]),
            Path::new("orders.csv"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("amount (looked for \"金额\")"), "{err}");
        assert!(
            err.contains("headers are: order_id, customer_id, order_date, 总价"),
            "{err}"
        );
    }

    #[test]
    fn mapping_validation_names_unknown_fields() {
        let mut mapping = ColumnMapping::default();
        mapping
            .orders
            .columns
            .insert("price".into(), Headers::One("单价".into()));
        let err = mapping
            .validate(Path::new("m.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'price'") && err.contains("known fields: order_id"),
            "{err}"
        );
    }
}
