//! The pure grading model of tierwise.
//!
//! This crate owns the vocabulary every other crate speaks: identifiers, periods, money and the
//! imported records (owners, customers, orders, invoices, activities), each of which can only be
//! built valid, and the grading model itself ([`grading`]): scores, segments, tiers and the policy
//! that parameterises them, and the rules notifications follow ([`notify`]: contact cadences,
//! churn alerts). It performs no I/O, has no async code and knows nothing of storage.

pub mod email;
pub mod error;
pub mod grading;
pub mod ids;
pub mod money;
pub mod notify;
pub mod period;
pub mod predictive;
pub mod records;

pub use email::EmailAddress;
pub use error::{DomainError, FieldError};
pub use ids::{CustomerId, ExternalId, OwnerId, SourceName};
pub use money::{Currency, Money};
pub use period::Period;
pub use records::{Activity, ActivityKind, Contact, Customer, Invoice, Locale, Order, Owner};
