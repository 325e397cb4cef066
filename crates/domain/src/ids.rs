//! Identifiers. Internal ids are database surrogates; external ids are the keys records carry in
//! the system they came from (a CRM's primary key, a spreadsheet's customer number).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::FieldError;

macro_rules! surrogate_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

surrogate_id!(
    /// The internal id of a customer (stable across re-imports).
    CustomerId
);
surrogate_id!(
    /// The internal id of an owner (account manager).
    OwnerId
);

/// Longest external id accepted; CRM keys are far shorter, so longer values are data errors.
pub const MAX_EXTERNAL_ID_LEN: usize = 200;

/// A record's key in its source system. Compared as bytes; never parsed as a number
/// (CRM ids such as Zoho's exceed 2^53 and leading zeros matter in spreadsheets).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExternalId(String);

impl ExternalId {
    /// Trims `raw`; refuses an empty value, control characters, or more than
    /// [`MAX_EXTERNAL_ID_LEN`] bytes. `field` names the column in errors.
    pub fn parse(field: &'static str, raw: &str) -> Result<Self, FieldError> {
        let value = raw.trim();
        if value.is_empty() {
            return Err(FieldError::new(
                field,
                "is empty; every record needs its id",
            ));
        }
        if value.len() > MAX_EXTERNAL_ID_LEN {
            return Err(FieldError::new(
                field,
                format!(
                    "is {} bytes long; at most {MAX_EXTERNAL_ID_LEN} are allowed",
                    value.len()
                ),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(FieldError::new(field, "contains control characters"));
        }
        Ok(Self(value.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExternalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ExternalId {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse("external_id", &value)
    }
}

impl From<ExternalId> for String {
    fn from(value: ExternalId) -> Self {
        value.0
    }
}

/// Where records came from: `file`, `zoho`, `fxiaoke`, `hubspot`, `salesforce`, `pipedrive`, or
/// a name an operator chose for a file feed. Lower-case ASCII letters, digits, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceName(String);

impl SourceName {
    /// The source used for spreadsheet imports unless the operator names another.
    pub const FILE: &'static str = "file";

    /// Validates a source name: 1–32 characters of `[a-z0-9_-]`.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let ok = !raw.is_empty()
            && raw.len() <= 32
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(raw.to_string()))
        } else {
            Err(FieldError::new(
                "source",
                format!("'{raw}' must be 1-32 characters of a-z, 0-9, '-' or '_'"),
            ))
        }
    }

    /// The source name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SourceName {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<SourceName> for String {
    fn from(value: SourceName) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_id_is_trimmed_and_kept_as_text() {
        let id = ExternalId::parse("customer_id", " 000123 ").unwrap();
        assert_eq!(id.as_str(), "000123");
    }

    #[test]
    fn external_id_rejects_empty_long_and_control() {
        assert_eq!(
            ExternalId::parse("order_id", "  ").unwrap_err().field,
            "order_id"
        );
        assert!(ExternalId::parse("order_id", &"x".repeat(201)).is_err());
        assert!(ExternalId::parse("order_id", "a\u{7}b").is_err());
    }

    #[test]
    fn source_name_rules() {
        assert!(SourceName::parse("zoho").is_ok());
        assert!(SourceName::parse("erp-export_2").is_ok());
        assert!(SourceName::parse("Zoho").is_err());
        assert!(SourceName::parse("").is_err());
        assert!(SourceName::parse("a b").is_err());
    }
}
