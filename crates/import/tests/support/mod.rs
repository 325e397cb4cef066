//! What the CRM connector tests share: starting a fake server, and the rows the store must
//! hold after an import, as `tierwise_store::testing::source_snapshot` renders them.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test"
)]
#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses a part of it"
)]

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde_json::Value;
use tierwise_import::crm::http::HttpSettings;
use wiremock::{Mock, MockServer, Respond, matchers};

/// An owner: email, name, stored locale, id in the source.
pub type OwnerRow = (String, String, String, Option<String>);
/// A customer: id, name, owner's email, created on.
pub type CustomerRow = (String, String, Option<String>, Option<NaiveDate>);
/// An order: id, customer id, day, amount, cost, currency.
pub type OrderRow = (String, String, NaiveDate, i64, Option<i64>, String);

/// A current-thread runtime and a server on it answering every request with `responder`.
pub fn serve(responder: impl Respond + 'static) -> (tokio::runtime::Runtime, MockServer) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(async {
        let server = MockServer::start().await;
        Mock::given(matchers::any())
            .respond_with(responder)
            .mount(&server)
            .await;
        server
    });
    (runtime, server)
}

/// A CRM user as stored: `en_US` users read English, the others Chinese.
pub fn owner_row(user: &Value, id: String, name_field: &str) -> OwnerRow {
    let locale = if user["locale"] == "en_US" {
        "en"
    } else {
        "zh-CN"
    };
    (
        user["email"].as_str().unwrap().to_owned(),
        user[name_field].as_str().unwrap().to_owned(),
        locale.to_owned(),
        Some(id),
    )
}

/// The snapshot rows of these owners, customers and orders. A won deal whose customer record
/// was rejected keeps its order: that customer exists, named by its id, until its record
/// imports.
pub fn expected_rows(
    mut owners: Vec<OwnerRow>,
    mut customers: BTreeMap<String, CustomerRow>,
    orders: &BTreeMap<String, OrderRow>,
) -> Vec<String> {
    owners.sort();
    for (_, customer, ..) in orders.values() {
        customers
            .entry(customer.clone())
            .or_insert_with(|| (customer.clone(), customer.clone(), None, None));
    }
    let mut out: Vec<String> = owners.iter().map(|r| format!("owner {r:?}")).collect();
    out.extend(customers.values().map(|r| format!("customer {r:?}")));
    out.extend(orders.values().map(|r| format!("order {r:?}")));
    out
}

/// Retries for tests: a 0.5 s timeout (the fakes' slow answers take 1.5 s), 5 tries, 10 ms
/// first back-off, at most `max_backoff_secs` between tries.
pub fn fast_http(max_backoff_secs: u64) -> HttpSettings {
    HttpSettings {
        timeout_secs: 0.5,
        max_attempts: 5,
        backoff_ms: 10,
        max_backoff_secs,
    }
}
