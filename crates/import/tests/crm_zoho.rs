//! The Zoho CRM connector against a local server that behaves like Zoho: an accounts server
//! minting access tokens from a refresh token (refusals in a 200 body), tokens that expire
//! mid-run (401 `INVALID_TOKEN`), `fields` required, `page_token` paging sorted by
//! `Modified_Time`, `If-Modified-Since`, 204 for an empty page, 429 without `Retry-After`, 5xx.
//! Every test runs on SQLite and PostgreSQL and compares the store with the source.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test"
)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use secrecy::SecretString;
use serde_json::{Value, json};
use tierwise_import::crm::zoho::{Zoho, ZohoSettings};
use tierwise_import::crm::{CrmError, SyncOptions, SyncReport, sync};
use tierwise_store::backend_tests;
use tierwise_store::testing::{
    TestDb, activity_snapshot, assert_same_rows, deleted_snapshot, invoice_snapshot,
    source_snapshot,
};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

mod support;
use support::{CustomerRow, OrderRow, OwnerRow, expected_rows, fast_http, owner_row, serve};

const CLIENT_SECRET: &str = "zoho-client-secret-91a";
const REFRESH: &str = "1000.refresh.77c0";

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Answer with this status instead of data (429, 500).
    Status(u16),
    /// A body cut off mid-way.
    Malformed,
    /// The answer comes later than the connector's timeout.
    Slow,
}

/// Longer than the connector's timeout in these tests (0.5 s).
const SLOW: std::time::Duration = std::time::Duration::from_millis(1500);

#[derive(Debug, Default)]
struct Source {
    uri: String,
    users: Vec<Value>,
    accounts: Vec<Value>,
    deals: Vec<Value>,
    calls: Vec<Value>,
    /// Meetings (the Events module).
    events: Vec<Value>,
    invoices: Vec<Value>,
    /// Tokens currently accepted.
    live_tokens: Vec<String>,
    minted: u32,
    /// Revoke every live token after this many more API calls.
    expire_after: Option<u32>,
    /// Faults for the coming list calls; None = serve.
    faults: VecDeque<Option<Fault>>,
    /// `If-Modified-Since` of every list call.
    since_seen: Vec<Option<String>>,
    /// Deleted records as `/{module}/deleted` lists them, with their `module`.
    deleted: Vec<Value>,
    /// `If-Modified-Since` of every call for deleted records.
    deleted_since_seen: Vec<Option<String>>,
}

#[derive(Clone)]
struct FakeZoho(Arc<Mutex<Source>>);

impl Respond for FakeZoho {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut s = self.0.lock().unwrap();
        let path = request.url.path().to_owned();
        if path == "/oauth/v2/token" {
            let form: BTreeMap<String, String> = url_form(&String::from_utf8_lossy(&request.body));
            if form.get("refresh_token").map(String::as_str) != Some(REFRESH)
                || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
            {
                // Zoho answers refusals with HTTP 200.
                return ResponseTemplate::new(200).set_body_json(json!({"error": "invalid_code"}));
            }
            s.minted += 1;
            let token = format!("1000.access.{}", s.minted);
            s.live_tokens.push(token.clone());
            return ResponseTemplate::new(200).set_body_json(json!({"access_token": token,
                "api_domain": s.uri, "token_type": "Bearer", "expires_in": 3600}));
        }
        let token = request
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Zoho-oauthtoken "))
            .map(str::to_owned);
        if let Some(n) = s.expire_after.as_mut() {
            if *n == 0 {
                s.live_tokens.clear();
                s.expire_after = None;
            } else {
                *n -= 1;
            }
        }
        if !token.is_some_and(|t| s.live_tokens.contains(&t)) {
            return ResponseTemplate::new(401).set_body_json(json!({"code": "INVALID_TOKEN",
                "details": {}, "message": "invalid oauth token", "status": "error"}));
        }
        let query: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
        if path == "/crm/v8/users" {
            return ResponseTemplate::new(200).set_body_json(json!({"users": s.users,
                "info": {"more_records": false}}));
        }
        if let Some(module) = path
            .strip_prefix("/crm/v8/")
            .and_then(|p| p.strip_suffix("/deleted"))
        {
            // Paged by number; only deletions after If-Modified-Since; 204 when none.
            let since = request
                .headers
                .get("if-modified-since")
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned);
            s.deleted_since_seen.push(since.clone());
            let since = since.map(|t| chrono::DateTime::parse_from_rfc3339(&t).unwrap());
            let matching: Vec<&Value> = s
                .deleted
                .iter()
                .filter(|d| d["module"] == module)
                .filter(|d| {
                    since.is_none_or(|since| {
                        chrono::DateTime::parse_from_rfc3339(d["deleted_time"].as_str().unwrap())
                            .unwrap()
                            > since
                    })
                })
                .collect();
            if matching.is_empty() {
                return ResponseTemplate::new(204);
            }
            let per_page: usize = query["per_page"].parse().unwrap();
            let page_no: usize = query["page"].parse().unwrap();
            let page: Vec<&Value> = matching
                .iter()
                .skip((page_no - 1) * per_page)
                .take(per_page)
                .copied()
                .collect();
            let more = page_no * per_page < matching.len();
            return ResponseTemplate::new(200).set_body_json(json!({"data": page,
                "info": {"per_page": per_page, "count": page.len(), "page": page_no, "more_records": more}}));
        }
        if !query.contains_key("fields") {
            return ResponseTemplate::new(400).set_body_json(json!({"code": "REQUIRED_PARAM_MISSING",
                "details": {"param_name": "fields"}, "message": "One of the expected parameter is missing", "status": "error"}));
        }
        let since = request
            .headers
            .get("if-modified-since")
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        s.since_seen.push(since.clone());
        let mut delay = std::time::Duration::ZERO;
        match s.faults.pop_front().flatten() {
            Some(Fault::Status(status)) => {
                return ResponseTemplate::new(status).set_body_json(
                    json!({"code": if status == 429 { "TOO_MANY_REQUESTS" } else { "INTERNAL_ERROR" },
                    "details": {}, "message": "try later", "status": "error"}),
                );
            }
            Some(Fault::Malformed) => {
                return ResponseTemplate::new(200).set_body_string("{\"data\": [{\"id\": \"48");
            }
            Some(Fault::Slow) => delay = SLOW,
            None => {}
        }
        let records = match path.as_str() {
            "/crm/v8/Deals" => &s.deals,
            "/crm/v8/Calls" => &s.calls,
            "/crm/v8/Events" => &s.events,
            "/crm/v8/Invoices" => &s.invoices,
            "/crm/v8/Accounts" => &s.accounts,
            other => panic!("unexpected module {other}"),
        };
        let since = since.map(|t| chrono::DateTime::parse_from_rfc3339(&t).unwrap());
        let mut matching: Vec<&Value> = records
            .iter()
            .filter(|r| {
                since.is_none_or(|since| {
                    chrono::DateTime::parse_from_rfc3339(r["Modified_Time"].as_str().unwrap())
                        .unwrap()
                        > since
                })
            })
            .collect();
        matching.sort_by_key(|r| {
            (
                r["Modified_Time"].as_str().unwrap().to_owned(),
                r["id"].as_str().unwrap().to_owned(),
            )
        });
        if matching.is_empty() {
            return ResponseTemplate::new(204);
        }
        let per_page: usize = query["per_page"].parse().unwrap();
        let offset: usize = query
            .get("page_token")
            .map_or(0, |t| t.strip_prefix("pt-").unwrap().parse().unwrap());
        let page: Vec<&Value> = matching
            .iter()
            .skip(offset)
            .take(per_page)
            .copied()
            .collect();
        let more = offset + per_page < matching.len();
        ResponseTemplate::new(200).set_body_json(json!({"data": page, "info": {"per_page": per_page,
            "count": page.len(), "more_records": more,
            "next_page_token": if more { Some(format!("pt-{}", offset + per_page)) } else { None }}}))
            .set_delay(delay)
    }
}

fn url_form(body: &str) -> BTreeMap<String, String> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2E", ".").replace("%2e", ".")))
        .collect()
}

/// `2024-05-DD HH:MM` in China time, as a Zoho org in Shanghai writes it.
fn at(day: u32, minute: u32) -> String {
    format!(
        "2024-05-{day:02}T{:02}:{:02}:00+08:00",
        minute / 60,
        minute % 60
    )
}

/// 3 users; 450 accounts (120 sharing one Modified_Time across a page boundary; some owners
/// given by id only); 600 deals, two in three won; 230 invoices, paid, unpaid or cancelled,
/// some without a due date. One account has no name, one won deal no account and one invoice no
/// invoice date: all three must be rejected.
fn seeded() -> Source {
    let mut s = Source::default();
    for (id, email) in [
        ("9001", "li.wei@example.com"),
        ("9002", "wang.fang@example.com"),
        ("9003", "amy@example.com"),
    ] {
        s.users.push(
            json!({"id": id, "full_name": email.split('@').next().unwrap(), "email": email,
            "locale": if id == "9003" { "en_US" } else { "zh_CN" }}),
        );
    }
    for i in 1..=450_u32 {
        let id = format!("48768760000{i:08}");
        let owner_id = format!("900{}", 1 + i % 3);
        let email = s.users.iter().find(|u| u["id"] == owner_id).unwrap()["email"].clone();
        // Every fifth account carries its owner by id only (looked up among the users).
        let owner = if i % 5 == 0 {
            json!({"id": owner_id, "name": "x"})
        } else {
            json!({"id": owner_id, "name": "x", "email": email})
        };
        let name = if i == 77 {
            Value::Null
        } else {
            json!(format!("深圳客户 {i} 有限公司"))
        };
        let modified = if (150..270).contains(&i) {
            at(3, 0)
        } else {
            at(1 + i % 20, i % 600)
        };
        s.accounts
            .push(json!({"id": id, "Account_Name": name, "Owner": owner,
            "Created_Time": "2023-02-11T09:14:03+08:00", "Modified_Time": modified}));
    }
    for i in 1..=600_u32 {
        let account = if i == 301 {
            Value::Null
        } else {
            json!({"id": format!("48768760000{:08}", 1 + i % 450), "name": "x"})
        };
        let stage = if i % 3 == 0 {
            "Negotiation"
        } else {
            "Closed Won"
        };
        s.deals.push(json!({"id": format!("5550000{i:06}"), "Deal_Name": format!("Deal {i}"), "Amount": 1000.5 + f64::from(i),
            "Closing_Date": format!("2024-04-{:02}", 1 + i % 28), "Stage": stage, "Account_Name": account,
            "Owner": {"id": "9001"}, "Modified_Time": at(2 + i % 9, i % 500), "Cost__c": 200 + i}));
    }
    for i in 1..=230_u32 {
        let account = match 1 + (i * 7) % 450 {
            77 => 78,
            n => n,
        };
        let status = match i % 4 {
            0 => "Paid",
            1 => "Delivered",
            _ if i % 20 == 3 => "Cancelled",
            _ => "Created",
        };
        s.invoices.push(json!({"id": format!("7770000{i:06}"), "Subject": format!("INV-{i}"),
            "Account_Name": {"id": format!("48768760000{account:08}"), "name": "x"},
            "Sales_Order": if i % 2 == 0 { json!({"id": format!("8880000{i:06}"), "name": "x"}) } else { Value::Null },
            "Invoice_Date": if i == 100 { Value::Null } else { json!(format!("2024-04-{:02}", 1 + i % 28)) },
            "Due_Date": if i % 10 == 0 { Value::Null } else { json!(format!("2024-05-{:02}", 1 + i % 28)) },
            "Grand_Total": 500.25 + f64::from(i), "Status": status,
            "Modified_Time": at(2 + i % 20, i % 600)}));
    }
    s
}

/// The invoices the store must hold: all but the cancelled one and the one without a date; due
/// on issue without a due date; paid on the (China) day of the last change once `Paid`.
fn expected_invoices(s: &Source) -> Vec<String> {
    let day =
        |v: &Value| chrono::NaiveDate::parse_from_str(v.as_str().unwrap(), "%Y-%m-%d").unwrap();
    let mut rows: Vec<String> = s
        .invoices
        .iter()
        .filter(|i| i["Status"] != "Cancelled" && !i["Invoice_Date"].is_null())
        .map(|i| {
            let issued = day(&i["Invoice_Date"]);
            let due = if i["Due_Date"].is_null() {
                issued
            } else {
                day(&i["Due_Date"])
            };
            let paid = (i["Status"] == "Paid").then(|| {
                chrono::DateTime::parse_from_rfc3339(i["Modified_Time"].as_str().unwrap())
                    .unwrap()
                    .date_naive()
            });
            let order = i["Sales_Order"]["id"].as_str().map(str::to_owned);
            format!(
                "invoice {:?}",
                (
                    i["id"].as_str().unwrap().to_owned(),
                    i["Account_Name"]["id"].as_str().unwrap().to_owned(),
                    order,
                    issued,
                    due,
                    (i["Grand_Total"].as_f64().unwrap() * 100.0).round() as i64,
                    "CNY".to_string(),
                    paid,
                )
            )
        })
        .collect();
    rows.sort();
    rows
}

fn expected(s: &Source) -> Vec<String> {
    let email_of = |id: &Value| {
        s.users
            .iter()
            .find(|u| u["id"] == *id)
            .map(|u| u["email"].as_str().unwrap().to_owned())
    };
    let owners: Vec<OwnerRow> = s
        .users
        .iter()
        .map(|u| owner_row(u, u["id"].as_str().unwrap().to_owned(), "full_name"))
        .collect();
    let mut customers: BTreeMap<String, CustomerRow> = BTreeMap::new();
    for a in s.accounts.iter().filter(|a| !a["Account_Name"].is_null()) {
        let id = a["id"].as_str().unwrap().to_owned();
        customers.insert(
            id.clone(),
            (
                id,
                a["Account_Name"].as_str().unwrap().to_owned(),
                email_of(&a["Owner"]["id"]),
                chrono::NaiveDate::from_ymd_opt(2023, 2, 11),
            ),
        );
    }
    let mut orders: BTreeMap<String, OrderRow> = BTreeMap::new();
    for d in s
        .deals
        .iter()
        .filter(|d| d["Stage"] == "Closed Won" && !d["Account_Name"].is_null())
    {
        let account = d["Account_Name"]["id"].as_str().unwrap().to_owned();
        let day =
            chrono::NaiveDate::parse_from_str(d["Closing_Date"].as_str().unwrap(), "%Y-%m-%d")
                .unwrap();
        let amount = (d["Amount"].as_f64().unwrap() * 100.0).round() as i64;
        orders.insert(
            d["id"].as_str().unwrap().to_owned(),
            (
                d["id"].as_str().unwrap().to_owned(),
                account,
                day,
                amount,
                Some(d["Cost__c"].as_i64().unwrap() * 100),
                "CNY".into(),
            ),
        );
    }
    expected_rows(owners, customers, &orders)
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    server: MockServer,
    source: Arc<Mutex<Source>>,
}

impl Harness {
    fn new(source: Source) -> Self {
        let source = Arc::new(Mutex::new(source));
        let (runtime, server) = serve(FakeZoho(source.clone()));
        source.lock().unwrap().uri = server.uri();
        Self {
            runtime,
            server,
            source,
        }
    }

    fn connector(&self, refresh: &str) -> Zoho {
        Zoho::new(self.settings(refresh)).unwrap()
    }

    fn settings(&self, refresh: &str) -> ZohoSettings {
        ZohoSettings {
            enabled: true,
            accounts_url: self.server.uri(),
            client_id: "1000.CLIENT".into(),
            client_secret: SecretString::from(CLIENT_SECRET.to_owned()),
            refresh_token: SecretString::from(refresh.to_owned()),
            page_size: 100,
            cost_field: Some("Cost__c".into()),
            http: fast_http(1),
            ..ZohoSettings::default()
        }
    }

    fn sync(&self, db: &TestDb) -> Result<SyncReport, CrmError> {
        let connector = self.connector(REFRESH);
        self.runtime
            .block_on(sync(&db.db, &connector, &SyncOptions::default()))
    }
}

fn snapshot(db: &TestDb) -> Vec<String> {
    source_snapshot(&mut db.conn(), "zoho")
}

backend_tests! {
    fn a_full_run_with_an_expiring_token_and_faults_imports_the_source(db) {
        let harness = Harness::new(seeded());
        {
            let mut s = harness.source.lock().unwrap();
            // The token dies after 3 calls; a 429, a 500, a cut-off body and an answer slower
            // than the timeout hit the accounts.
            s.expire_after = Some(3);
            s.faults = vec![
                None,
                Some(Fault::Status(429)),
                Some(Fault::Status(500)),
                Some(Fault::Malformed),
                Some(Fault::Slow),
            ]
            .into();
        }
        let report = harness.sync(&db).unwrap();
        assert!(report.entities.iter().all(|e| e.completed), "{report:?}");
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "the store equals the source");
        assert_same_rows(&invoice_snapshot(&mut db.conn(), "zoho"), &expected_invoices(&s), "invoices");
        assert_eq!(s.minted, 2, "one token, renewed once when it expired");
        assert_eq!(report.rejected(), 3, "{report:?}");
        let invoices = report.entities.iter().find(|e| e.entity == "invoices").unwrap();
        // 230 invoices at 100 a page.
        assert_eq!((invoices.pages, invoices.records), (3, 230));
        let customers = &report.entities[1];
        let rejects = tierwise_store::runs::rejects_of_run(&mut db.conn(), customers.run.unwrap(), 10).unwrap();
        assert_eq!(rejects[0].field.as_deref(), Some("name"), "{rejects:?}");
        assert!(rejects[0].raw_record.contains("4876876000000000077"));
        // 450 accounts at 100 a page.
        assert_eq!((customers.pages, customers.records), (5, 450));
    }

    fn an_incremental_run_sends_if_modified_since_and_reads_the_changes(db) {
        let harness = Harness::new(seeded());
        harness.sync(&db).unwrap();
        // The next run asks from the newest change seen less the 5-minute overlap, in UTC.
        let from = {
            let s = harness.source.lock().unwrap();
            let newest = s.accounts.iter()
                .map(|a| chrono::DateTime::parse_from_rfc3339(a["Modified_Time"].as_str().unwrap()).unwrap())
                .max()
                .unwrap();
            (newest.with_timezone(&chrono::Utc) - chrono::TimeDelta::minutes(5)).format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
        };
        {
            let mut s = harness.source.lock().unwrap();
            s.accounts[9]["Account_Name"] = json!("改名 10");
            s.accounts[9]["Modified_Time"] = json!(at(25, 10));
            let d = s.deals.iter_mut().find(|d| d["Stage"] == "Negotiation").unwrap();
            d["Stage"] = json!("Closed Won");
            d["Modified_Time"] = json!(at(25, 11));
            // An invoice paid since.
            let open = s.invoices.iter_mut().find(|i| i["Status"] == "Delivered").unwrap();
            open["Status"] = json!("Paid");
            open["Modified_Time"] = json!(at(26, 30));
            s.since_seen.clear();
        }
        let report = harness.sync(&db).unwrap();
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "after the incremental run");
        assert_same_rows(&invoice_snapshot(&mut db.conn(), "zoho"), &expected_invoices(&s), "invoices after the incremental run");
        assert_eq!(s.since_seen[0].as_deref(), Some(from.as_str()), "{:?}", s.since_seen);
        assert!(report.entities[1].records < 10 && report.entities[1].records >= 1, "{report:?}");
    }

    fn deleted_accounts_deals_invoices_and_calls_are_marked_and_kept(db) {
        let harness = Harness::new(seeded());
        // A call that took place on account 1.
        harness.source.lock().unwrap().calls.push(json!({"id": "6660000000001", "Subject": "Call", "Call_Type": "Outbound",
            "Outgoing_Call_Status": "Completed", "Call_Start_Time": "2024-05-03T10:30:00+08:00", "$se_module": "Accounts",
            "What_Id": {"name": "x", "id": "4876876000000000001"}, "Owner": {"name": "x", "id": "9002", "email": "wang.fang@example.com"},
            "Modified_Time": "2024-05-06T10:00:00+08:00"}));
        harness.sync(&db).unwrap();
        assert_eq!(activity_snapshot(&mut db.conn(), "zoho").len(), 1);
        assert!(deleted_snapshot(&mut db.conn(), "zoho").is_empty());
        {
            // Accounts 10 and 13 (no won deals) and won deal 1 go to the recycle bin or are
            // purged: gone from the lists, listed by /{module}/deleted.
            let mut s = harness.source.lock().unwrap();
            for (index, kind, time) in [(12, "permanent", "2024-05-27T09:00:00+08:00"), (9, "recycle", "2024-05-27T10:00:00+08:00")] {
                let a = s.accounts.remove(index);
                s.deleted.push(json!({"id": a["id"], "display_name": a["Account_Name"], "type": kind,
                    "deleted_time": time, "deleted_by": {"name": "Li Wei", "id": "9001"}, "module": "Accounts"}));
            }
            let d = s.deals.remove(0);
            s.deleted.push(json!({"id": d["id"], "display_name": d["Deal_Name"], "type": "recycle",
                "deleted_time": "2024-05-27T11:00:00+08:00", "module": "Deals"}));
            let i = s.invoices.remove(0);
            s.deleted.push(json!({"id": i["id"], "display_name": i["Subject"], "type": "recycle",
                "deleted_time": "2024-05-27T12:00:00+08:00", "module": "Invoices"}));
            let c = s.calls.remove(0);
            s.deleted.push(json!({"id": c["id"], "display_name": c["Subject"], "type": "recycle",
                "deleted_time": "2024-05-27T13:00:00+08:00", "module": "Calls"}));
        }
        let report = harness.sync(&db).unwrap();
        let marked: Vec<(&str, u64)> = report.entities.iter()
            .filter(|e| e.entity.starts_with("deleted_"))
            .map(|e| (e.entity, e.deleted))
            .collect();
        assert_eq!(marked, [("deleted_customers", 2), ("deleted_orders", 1), ("deleted_invoices", 1), ("deleted_activities", 1)], "{report:?}");
        assert_eq!(
            deleted_snapshot(&mut db.conn(), "zoho"),
            [
                "customer 4876876000000000010: deleted in zoho (in the recycle bin)",
                "customer 4876876000000000013: deleted in zoho (purged)",
                "order 5550000000001: deleted in zoho (in the recycle bin)",
                "invoice 7770000000001: deleted in zoho (in the recycle bin)",
                "activity 6660000000001: deleted in zoho (in the recycle bin)",
            ]
        );
        assert!(activity_snapshot(&mut db.conn(), "zoho").is_empty(), "the deleted call no longer counts");
        assert_same_rows(&snapshot(&db), &expected(&harness.source.lock().unwrap()), "live rows after deletions");
        assert_same_rows(&invoice_snapshot(&mut db.conn(), "zoho"), &expected_invoices(&harness.source.lock().unwrap()), "live invoices after deletions");
        // The next run asks for deletions after the newest one seen, less the overlap.
        harness.source.lock().unwrap().deleted_since_seen.clear();
        let again = harness.sync(&db).unwrap();
        assert!(again.entities.iter().all(|e| e.deleted == 0), "{again:?}");
        assert_eq!(
            harness.source.lock().unwrap().deleted_since_seen,
            [Some("2024-05-27T01:55:00+00:00".to_owned()), Some("2024-05-27T02:55:00+00:00".to_owned()),
                Some("2024-05-27T03:55:00+00:00".to_owned()), Some("2024-05-27T04:55:00+00:00".to_owned()),
                // Deleted meetings are asked for from the same time as deleted calls.
                Some("2024-05-27T04:55:00+00:00".to_owned())]
        );
    }

    fn calls_that_took_place_on_an_account_are_contacts(db) {
        let harness = Harness::new(seeded());
        {
            let mut s = harness.source.lock().unwrap();
            let call = |id: &str, module: &str, what: &str, kind: &str, status: Value, start: &str| {
                json!({"id": id, "Subject": format!("Call {id}"), "Call_Type": kind, "Outgoing_Call_Status": status,
                    "Call_Start_Time": start, "$se_module": module, "What_Id": {"name": "x", "id": what},
                    "Owner": {"name": "x", "id": "9002", "email": "wang.fang@example.com"},
                    "Modified_Time": "2024-05-06T10:00:00+08:00"})
            };
            s.calls = vec![
                call("6660000000001", "Accounts", "4876876000000000001", "Outbound", json!("Completed"), "2024-05-03T10:30:00+08:00"),
                call("6660000000002", "Accounts", "4876876000000000002", "Inbound", Value::Null, "2024-05-04T09:00:00+08:00"),
                call("6660000000003", "Accounts", "4876876000000000003", "Missed", Value::Null, "2024-05-04T09:00:00+08:00"),
                call("6660000000004", "Accounts", "4876876000000000004", "Outbound", json!("Scheduled"), "2099-05-04T09:00:00+08:00"),
                call("6660000000005", "Deals", "5550000000005", "Outbound", json!("Completed"), "2024-05-04T09:00:00+08:00"),
                call("6660000000006", "Accounts", "4876876000099999999", "Outbound", json!("Completed"), "2024-05-05T09:00:00+08:00"),
            ];
        }
        let report = harness.sync(&db).unwrap();
        let calls = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        assert_eq!((calls.records, calls.written, calls.rejected), (6, 2, 1), "{report:?}");
        let row = |id: &str, account: &str, at: &str| {
            let at = chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M").unwrap();
            format!("activity {:?}", (id.to_owned(), account.to_owned(), Some("wang.fang@example.com".to_owned()), "call".to_owned(), at, Some(format!("Call {id}"))))
        };
        // Stored in UTC.
        assert_eq!(activity_snapshot(&mut db.conn(), "zoho"), [
            row("6660000000001", "4876876000000000001", "2024-05-03 02:30"),
            row("6660000000002", "4876876000000000002", "2024-05-04 01:00"),
        ]);
        let rejects = tierwise_store::runs::rejects_of_run(&mut db.conn(), calls.run.unwrap(), 10).unwrap();
        assert!(rejects[0].reason.contains("customer 4876876000099999999 is not imported"), "{rejects:?}");
    }

    fn a_refused_refresh_token_says_what_to_fix_and_shows_no_secret(db) {
        let harness = Harness::new(seeded());
        let connector = harness.connector("1000.revoked.0000");
        let err = harness.runtime.block_on(sync(&db.db, &connector, &SyncOptions::default())).unwrap_err();
        assert!(matches!(err, CrmError::Auth { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("invalid_code") && text.contains("TIERWISE__CRM__ZOHO__REFRESH_TOKEN"), "{text}");
        for shown in [text, format!("{err:?}"), format!("{connector:?}")] {
            assert!(!shown.contains("1000.revoked.0000") && !shown.contains(CLIENT_SECRET), "{shown}");
        }
    }

    fn meetings_on_an_account_are_contacts_from_their_start(db) {
        let harness = Harness::new(seeded());
        let meeting = |id: &str, module: &str, what: &str, start: Value, modified: &str| {
            json!({"id": id, "Event_Title": format!("Meeting {id}"), "Start_DateTime": start,
                "End_DateTime": null, "$se_module": module, "What_Id": {"name": "x", "id": what},
                "Owner": {"name": "x", "id": "9002", "email": "wang.fang@example.com"}, "Modified_Time": modified})
        };
        {
            let mut s = harness.source.lock().unwrap();
            s.events = vec![
                meeting("7770000000101", "Accounts", "4876876000000000001", json!("2024-05-03T14:00:00+08:00"), "2024-05-06T10:00:00+08:00"),
                // Planned ahead: stored now, counts once it has taken place.
                meeting("7770000000102", "Accounts", "4876876000000000002", json!("2099-05-04T09:00:00+08:00"), "2024-05-06T10:01:00+08:00"),
                meeting("7770000000103", "Deals", "5550000000005", json!("2024-05-04T09:00:00+08:00"), "2024-05-06T10:02:00+08:00"),
                meeting("7770000000104", "Accounts", "4876876000000000004", Value::Null, "2024-05-06T10:03:00+08:00"),
            ];
        }
        let report = harness.sync(&db).unwrap();
        let activities = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        // The calls (none: one empty answer), then the meetings.
        assert_eq!((activities.pages, activities.records, activities.written, activities.rejected), (2, 4, 2, 1), "{report:?}");
        let row = |id: &str, account: &str, at: &str| {
            let at = chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M").unwrap();
            format!("activity {:?}", (id.to_owned(), account.to_owned(), Some("wang.fang@example.com".to_owned()), "meeting".to_owned(), at, Some(format!("Meeting {id}"))))
        };
        assert_eq!(activity_snapshot(&mut db.conn(), "zoho"), [
            row("7770000000101", "4876876000000000001", "2024-05-03 06:00"),
            row("7770000000102", "4876876000000000002", "2099-05-04 01:00"),
        ]);
        let rejects = tierwise_store::runs::rejects_of_run(&mut db.conn(), activities.run.unwrap(), 10).unwrap();
        assert!(rejects[0].field.as_deref() == Some("Start_DateTime") && rejects[0].raw_record.contains("7770000000104"), "{rejects:?}");
        // The planned meeting is cancelled, the held one deleted: both marked, neither counts.
        {
            let mut s = harness.source.lock().unwrap();
            s.events[1]["$event_cancelled"] = json!(true);
            s.events[1]["Modified_Time"] = json!("2024-05-27T09:00:00+08:00");
            let held = s.events.remove(0);
            s.deleted.push(json!({"id": held["id"], "display_name": held["Event_Title"], "type": "recycle",
                "deleted_time": "2024-05-27T10:00:00+08:00", "module": "Events"}));
        }
        let report = harness.sync(&db).unwrap();
        let deleted: u64 = report.entities.iter().filter(|e| e.entity.ends_with("activities")).map(|e| e.deleted).sum();
        assert_eq!(deleted, 2, "{report:?}");
        assert_eq!(deleted_snapshot(&mut db.conn(), "zoho"), [
            "activity 7770000000101: deleted in zoho (in the recycle bin)",
            "activity 7770000000102: cancelled in zoho",
        ]);
        assert!(activity_snapshot(&mut db.conn(), "zoho").is_empty());
        // A meeting kind other than call, visit, email or meeting is refused.
        let refused = Zoho::new(ZohoSettings { meeting_kind: "lunch".into(), ..harness.settings(REFRESH) }).unwrap_err();
        assert!(refused.to_string().contains("crm.zoho.meeting_kind"), "{refused}");
    }
}
