//! Per-connection temporary staging tables for bulk loads. Rows are bulk-written here (binary
//! `COPY` on PostgreSQL, multi-row `INSERT` on SQLite) and then merged into the real tables with
//! one set-based statement whose SQL is the same on both backends.

use diesel::prelude::*;

diesel::table! {
    owners_staging (line) {
        line -> BigInt,
        source -> Text,
        email -> Text,
        name -> Text,
        locale -> Text,
        external_id -> Nullable<Text>,
        import_run_id -> BigInt,
    }
}

diesel::table! {
    customers_staging (line) {
        line -> BigInt,
        source -> Text,
        external_id -> Text,
        name -> Text,
        contact_name -> Nullable<Text>,
        contact_email -> Nullable<Text>,
        contact_phone -> Nullable<Text>,
        owner_email -> Nullable<Text>,
        created_on -> Nullable<Date>,
        prospect_rating -> Nullable<Integer>,
        attributes -> Text,
        import_run_id -> BigInt,
    }
}

diesel::table! {
    orders_staging (line) {
        line -> BigInt,
        source -> Text,
        external_id -> Text,
        customer_external_id -> Text,
        customer_known -> Bool,
        customer_name -> Nullable<Text>,
        owner_email -> Nullable<Text>,
        order_date -> Date,
        amount_minor -> BigInt,
        cost_minor -> Nullable<BigInt>,
        currency -> Text,
        quantity -> Nullable<BigInt>,
        import_run_id -> BigInt,
    }
}

diesel::table! {
    invoices_staging (line) {
        line -> BigInt,
        source -> Text,
        external_id -> Text,
        customer_external_id -> Text,
        customer_known -> Bool,
        customer_name -> Nullable<Text>,
        owner_email -> Nullable<Text>,
        order_external_id -> Nullable<Text>,
        issued_on -> Date,
        due_on -> Date,
        amount_minor -> BigInt,
        currency -> Text,
        paid_on -> Nullable<Date>,
        import_run_id -> BigInt,
    }
}

diesel::table! {
    activities_staging (line) {
        line -> BigInt,
        source -> Text,
        external_id -> Text,
        customer_external_id -> Text,
        customer_known -> Bool,
        owner_email -> Nullable<Text>,
        kind -> Text,
        occurred_at -> Timestamp,
        note -> Nullable<Text>,
        import_run_id -> BigInt,
    }
}

/// DDL of the staging tables; `{key}` is the type of key text columns (byte-compared
/// `TEXT COLLATE "C"` on PostgreSQL, to match the real tables, plain `TEXT` on SQLite).
const STAGING_DDL: &str = "
CREATE TEMP TABLE IF NOT EXISTS owners_staging (
    line BIGINT NOT NULL, source {key} NOT NULL, email {key} NOT NULL, name TEXT NOT NULL,
    locale TEXT NOT NULL, external_id {key}, import_run_id BIGINT NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS customers_staging (
    line BIGINT NOT NULL, source {key} NOT NULL, external_id {key} NOT NULL, name TEXT NOT NULL,
    contact_name TEXT, contact_email TEXT, contact_phone TEXT, owner_email {key},
    created_on DATE, prospect_rating INTEGER, attributes TEXT NOT NULL,
    import_run_id BIGINT NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS orders_staging (
    line BIGINT NOT NULL, source {key} NOT NULL, external_id {key} NOT NULL,
    customer_external_id {key} NOT NULL, customer_known BOOLEAN NOT NULL, customer_name TEXT, owner_email {key},
    order_date DATE NOT NULL, amount_minor BIGINT NOT NULL, cost_minor BIGINT,
    currency TEXT NOT NULL, quantity BIGINT, import_run_id BIGINT NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS invoices_staging (
    line BIGINT NOT NULL, source {key} NOT NULL, external_id {key} NOT NULL,
    customer_external_id {key} NOT NULL, customer_known BOOLEAN NOT NULL, customer_name TEXT, owner_email {key},
    order_external_id {key}, issued_on DATE NOT NULL, due_on DATE NOT NULL,
    amount_minor BIGINT NOT NULL, currency TEXT NOT NULL, paid_on DATE,
    import_run_id BIGINT NOT NULL);
CREATE TEMP TABLE IF NOT EXISTS activities_staging (
    line BIGINT NOT NULL, source {key} NOT NULL, external_id {key} NOT NULL,
    customer_external_id {key} NOT NULL, customer_known BOOLEAN NOT NULL, owner_email {key}, kind TEXT NOT NULL,
    occurred_at TIMESTAMP NOT NULL, note TEXT, import_run_id BIGINT NOT NULL);
";

/// The staging DDL for PostgreSQL (`postgres = true`) or SQLite.
pub(crate) fn staging_ddl(postgres: bool) -> String {
    STAGING_DDL.replace(
        "{key}",
        if postgres {
            "TEXT COLLATE \"C\""
        } else {
            "TEXT"
        },
    )
}

#[derive(Debug, Insertable)]
#[diesel(table_name = owners_staging, treat_none_as_default_value = false)]
pub(crate) struct OwnerStagingRow<'a> {
    pub line: i64,
    pub source: &'a str,
    pub email: &'a str,
    pub name: &'a str,
    pub locale: &'a str,
    pub external_id: Option<&'a str>,
    pub import_run_id: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = customers_staging, treat_none_as_default_value = false)]
pub(crate) struct CustomerStagingRow<'a> {
    pub line: i64,
    pub source: &'a str,
    pub external_id: &'a str,
    pub name: &'a str,
    pub contact_name: Option<&'a str>,
    pub contact_email: Option<&'a str>,
    pub contact_phone: Option<&'a str>,
    pub owner_email: Option<&'a str>,
    pub created_on: Option<chrono::NaiveDate>,
    pub prospect_rating: Option<i32>,
    pub attributes: String,
    pub import_run_id: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = orders_staging, treat_none_as_default_value = false)]
pub(crate) struct OrderStagingRow<'a> {
    pub line: i64,
    pub source: &'a str,
    pub external_id: &'a str,
    pub customer_external_id: &'a str,
    /// Known to exist from an earlier chunk of the same import: not looked up again.
    pub customer_known: bool,
    pub customer_name: Option<&'a str>,
    pub owner_email: Option<&'a str>,
    pub order_date: chrono::NaiveDate,
    pub amount_minor: i64,
    pub cost_minor: Option<i64>,
    pub currency: &'a str,
    pub quantity: Option<i64>,
    pub import_run_id: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = invoices_staging, treat_none_as_default_value = false)]
pub(crate) struct InvoiceStagingRow<'a> {
    pub line: i64,
    pub source: &'a str,
    pub external_id: &'a str,
    pub customer_external_id: &'a str,
    /// Known to exist from an earlier chunk of the same import: not looked up again.
    pub customer_known: bool,
    pub customer_name: Option<&'a str>,
    pub owner_email: Option<&'a str>,
    pub order_external_id: Option<&'a str>,
    pub issued_on: chrono::NaiveDate,
    pub due_on: chrono::NaiveDate,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub paid_on: Option<chrono::NaiveDate>,
    pub import_run_id: i64,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = activities_staging, treat_none_as_default_value = false)]
pub(crate) struct ActivityStagingRow<'a> {
    pub line: i64,
    pub source: &'a str,
    pub external_id: &'a str,
    pub customer_external_id: &'a str,
    /// Known to exist from an earlier chunk of the same import: not looked up again.
    pub customer_known: bool,
    pub owner_email: Option<&'a str>,
    pub kind: &'a str,
    pub occurred_at: chrono::NaiveDateTime,
    pub note: Option<&'a str>,
    pub import_run_id: i64,
}

/// How a column is updated when an imported row meets an existing one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OnUpdate {
    /// Take the imported value.
    Replace(&'static str),
    /// Take the imported value unless it is NULL (the file did not say): keep what we had.
    KeepIfNull(&'static str),
    /// `attributes` JSON: an empty object means the file carried none; keep what we had.
    KeepIfEmptyJson(&'static str),
    /// Set to NULL: a deletion mark, cleared when the source sends the record as live again.
    Clear(&'static str),
}

impl OnUpdate {
    fn new_value(self, target: &str) -> (String, &'static str) {
        match self {
            Self::Replace(c) => (format!("excluded.{c}"), c),
            Self::KeepIfNull(c) => (format!("COALESCE(excluded.{c}, {target}.{c})"), c),
            Self::Clear(c) => ("NULL".to_owned(), c),
            Self::KeepIfEmptyJson(c) => (
                format!("CASE WHEN excluded.{c} = '{{}}' THEN {target}.{c} ELSE excluded.{c} END"),
                c,
            ),
        }
    }
}

/// `INSERT INTO target (cols) select ON CONFLICT (key) DO UPDATE SET … WHERE <something changed>`.
/// The WHERE clause makes a re-import of identical data write nothing at all, so the statement's
/// row count is exactly the number of rows inserted or changed. `import_run_id` follows the data:
/// it is updated only together with a real change.
pub(crate) fn merge_sql(
    target: &str,
    insert_columns: &str,
    select: &str,
    conflict_key: &str,
    updates: &[OnUpdate],
) -> String {
    let mut set = Vec::with_capacity(updates.len() + 1);
    let mut changed = Vec::with_capacity(updates.len());
    for update in updates {
        let (value, column) = update.new_value(target);
        changed.push(format!("{target}.{column} IS DISTINCT FROM {value}"));
        set.push(format!("{column} = {value}"));
    }
    set.push("import_run_id = excluded.import_run_id".to_string());
    format!(
        "INSERT INTO {target} ({insert_columns}) {select} \
         ON CONFLICT ({conflict_key}) DO UPDATE SET {} WHERE {}",
        set.join(", "),
        changed.join(" OR ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sql_updates_only_on_change() {
        let sql = merge_sql(
            "orders",
            "a, b",
            "SELECT a, b FROM s WHERE true",
            "source, external_id",
            &[OnUpdate::Replace("a"), OnUpdate::KeepIfNull("b")],
        );
        assert!(
            sql.contains("SET a = excluded.a, b = COALESCE(excluded.b, orders.b), import_run_id")
        );
        assert!(sql.ends_with(
            "WHERE orders.a IS DISTINCT FROM excluded.a OR orders.b IS DISTINCT FROM COALESCE(excluded.b, orders.b)"
        ));
    }
}
