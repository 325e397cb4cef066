//! Validation errors. Every error names the field it is about and says why the value was refused,
//! so an importer can report "line 12, column amount: ..." without guessing.

use std::fmt;

/// A value refused by a constructor: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// The field name as the domain calls it (`amount`, `paid_on`, `email`, ...).
    pub field: &'static str,
    /// A sentence a person can act on.
    pub reason: String,
}

impl FieldError {
    /// Builds an error for `field` with a human-readable `reason`.
    pub fn new(field: &'static str, reason: impl fmt::Display) -> Self {
        Self {
            field,
            reason: reason.to_string(),
        }
    }
}

/// Errors of the domain crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A record field failed validation.
    #[error(transparent)]
    Field(#[from] FieldError),
}
