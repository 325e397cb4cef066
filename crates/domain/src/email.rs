//! Email addresses, checked enough to catch typos in imported data (not a full RFC 5322 parser).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// A syntactically plausible email address, stored lower-cased so it can serve as a key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses `local@domain` where the domain has a dot, no part is empty and there is no
    /// whitespace. The address is trimmed and lower-cased.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let value = raw.trim().to_lowercase();
        let reason = if value.is_empty() {
            Some("is empty".to_string())
        } else if value.chars().any(char::is_whitespace) {
            Some(format!("'{raw}' contains whitespace"))
        } else {
            match value.split_once('@') {
                None => Some(format!("'{raw}' has no '@'")),
                Some((local, domain)) => {
                    if local.is_empty() {
                        Some(format!("'{raw}' has nothing before '@'"))
                    } else if domain.contains('@') {
                        Some(format!("'{raw}' has more than one '@'"))
                    } else if !domain.contains('.')
                        || domain.starts_with('.')
                        || domain.ends_with('.')
                        || domain.contains("..")
                    {
                        Some(format!(
                            "'{raw}' has no valid domain after '@' (e.g. example.com)"
                        ))
                    } else {
                        None
                    }
                }
            }
        };
        match reason {
            Some(reason) => Err(FieldError::new("email", reason)),
            None => Ok(Self(value)),
        }
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before `@`, used as a display name when no name is known.
    pub fn local_part(&self) -> &str {
        self.0.split('@').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = FieldError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<EmailAddress> for String {
    fn from(value: EmailAddress) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        let email = EmailAddress::parse("  Li.Wei@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "li.wei@example.com");
        assert_eq!(email.local_part(), "li.wei");
    }

    #[test]
    fn rejects_malformed_with_reason() {
        for (raw, needle) in [
            ("", "empty"),
            ("li wei@example.com", "whitespace"),
            ("liwei.example.com", "no '@'"),
            ("@example.com", "nothing before"),
            ("a@b@example.com", "more than one"),
            ("li@localhost", "no valid domain"),
            ("li@example.", "no valid domain"),
        ] {
            let err = EmailAddress::parse(raw).unwrap_err();
            assert_eq!(err.field, "email");
            assert!(err.reason.contains(needle), "{raw}: {}", err.reason);
        }
    }
}
