//! Read models over imported data, for commands, summaries and tests.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use diesel::prelude::*;
use serde::Serialize;
use tierwise_domain::CustomerId;

use crate::schema::{activities, customers, invoices, orders, owners};
use crate::{DbConnection, StoreError, StoreResult, with_backend};

/// Row counts of the data tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableCounts {
    /// Owners.
    pub owners: u64,
    /// Customers.
    pub customers: u64,
    /// Orders.
    pub orders: u64,
    /// Invoices.
    pub invoices: u64,
    /// Activities.
    pub activities: u64,
}

/// Counts rows of every data table.
pub fn table_counts(conn: &mut DbConnection) -> StoreResult<TableCounts> {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    with_backend!(conn, c => Ok(TableCounts {
        owners: n(owners::table.count().get_result(c)?),
        customers: n(customers::table.count().get_result(c)?),
        orders: n(orders::table.count().get_result(c)?),
        invoices: n(invoices::table.count().get_result(c)?),
        activities: n(activities::table.count().get_result(c)?),
    }))
}

/// A stored customer with its owner's email.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerRecord {
    /// Internal id.
    pub id: CustomerId,
    /// Source name.
    pub source: String,
    /// Key in the source.
    pub external_id: String,
    /// Name.
    pub name: String,
    /// Contact person.
    pub contact_name: Option<String>,
    /// Contact email.
    pub contact_email: Option<String>,
    /// Contact phone.
    pub contact_phone: Option<String>,
    /// Owner's email.
    pub owner_email: Option<String>,
    /// Customer since.
    pub created_on: Option<NaiveDate>,
    /// Manual prospect rating.
    pub prospect_rating: Option<i32>,
    /// Named numeric attributes.
    pub attributes: BTreeMap<String, f64>,
}

type CustomerTuple = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<NaiveDate>,
    Option<i32>,
    String,
);

/// Finds a customer by its key in a source.
pub fn find_customer(
    conn: &mut DbConnection,
    source: &str,
    external_id: &str,
) -> StoreResult<Option<CustomerRecord>> {
    let row: Option<CustomerTuple> = with_backend!(conn, c => customers::table
        .left_join(owners::table)
        .filter(customers::source.eq(source))
        .filter(customers::external_id.eq(external_id))
        .select((
            customers::id,
            customers::source,
            customers::external_id,
            customers::name,
            customers::contact_name,
            customers::contact_email,
            customers::contact_phone,
            owners::email.nullable(),
            customers::created_on,
            customers::prospect_rating,
            customers::attributes,
        ))
        .first(c)
        .optional()?);
    row.map(|r| {
        Ok(CustomerRecord {
            id: CustomerId(r.0),
            source: r.1,
            external_id: r.2,
            name: r.3,
            contact_name: r.4,
            contact_email: r.5,
            contact_phone: r.6,
            owner_email: r.7,
            created_on: r.8,
            prospect_rating: r.9,
            attributes: serde_json::from_str(&r.10)
                .map_err(|e| StoreError::Corrupt(format!("customers.attributes: {e}")))?,
        })
    })
    .transpose()
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRecord {
    /// Key in the source.
    pub external_id: String,
    /// Order date.
    pub order_date: NaiveDate,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// Cost in minor units.
    pub cost_minor: Option<i64>,
    /// Currency code.
    pub currency: String,
}

/// A customer's orders by date.
pub fn orders_of_customer(
    conn: &mut DbConnection,
    customer: CustomerId,
) -> StoreResult<Vec<OrderRecord>> {
    let rows: Vec<(String, NaiveDate, i64, Option<i64>, String)> = with_backend!(conn, c => orders::table
        .filter(orders::customer_id.eq(customer.0))
        .order((orders::order_date, orders::external_id))
        .select((orders::external_id, orders::order_date, orders::amount_minor, orders::cost_minor, orders::currency))
        .load(c)?);
    Ok(rows
        .into_iter()
        .map(
            |(external_id, order_date, amount_minor, cost_minor, currency)| OrderRecord {
                external_id,
                order_date,
                amount_minor,
                cost_minor,
                currency,
            },
        )
        .collect())
}
