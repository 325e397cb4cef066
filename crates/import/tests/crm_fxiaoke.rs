//! The Fxiaoke connector against a local server that behaves like the Fxiaoke Open API: every
//! answer HTTP 200 with the outcome in `errorCode`, a corp access token from app id, secret and
//! permanent code (20015 for a wrong code), tokens that expire mid-run (20016), throttling
//! (14001), "system busy" (-1), a malformed body, the daily quota (30002), offsets past 10,000
//! refused (10013), and `_id` / `last_modified_time` filters. Every test runs on SQLite and
//! PostgreSQL and compares the store with the source.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test"
)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use secrecy::SecretString;
use serde_json::{Value, json};
use tierwise_import::crm::fxiaoke::{ActivitySettings, Fxiaoke, FxiaokeSettings};
use tierwise_import::crm::{CrmError, SyncOptions, SyncReport, sync};
use tierwise_store::backend_tests;
use tierwise_store::testing::{
    TestDb, activity_snapshot, assert_same_rows, deleted_snapshot, invoice_snapshot,
    source_snapshot,
};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

mod support;
use support::{CustomerRow, OrderRow, OwnerRow, expected_rows, fast_http, serve};

const APP_SECRET: &str = "fx-app-secret-0c4";
const PERMANENT_CODE: &str = "FXPC-permanent-77a1";
const OPERATOR: &str = "FSUID_ADMIN01";
/// Longer than the connector's timeout in these tests (0.5 s).
const SLOW: std::time::Duration = std::time::Duration::from_millis(1500);

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The answer comes later than the connector's timeout.
    Slow,
    Throttled,
    Busy,
    Malformed,
    QuotaSpent,
}

#[derive(Debug, Default)]
struct Source {
    users: Vec<Value>,
    accounts: Vec<Value>,
    orders: Vec<Value>,
    /// Payment plans (回款计划).
    plans: Vec<Value>,
    /// Follow-up records (销售记录) of the tenant's activity object.
    activities: Vec<Value>,
    /// Payments (回款, `PaymentObj`).
    payments: Vec<Value>,
    live_tokens: Vec<String>,
    minted: u32,
    /// Expire every live token after this many more data calls.
    expire_after: Option<u32>,
    faults: VecDeque<Option<Fault>>,
    /// The filters of every query.
    filters_seen: Vec<Value>,
}

#[derive(Clone)]
struct FakeFxiaoke(Arc<Mutex<Source>>);

fn envelope(code: i64, message: &str) -> ResponseTemplate {
    // Fxiaoke answers every outcome with HTTP 200.
    ResponseTemplate::new(200).set_body_json(json!({"errorCode": code, "errorMessage": message,
        "traceId": "E-fake"}))
}

impl Respond for FakeFxiaoke {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut s = self.0.lock().unwrap();
        let path = request.url.path().to_owned();
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        if path == "/cgi/corpAccessToken/get/V2" {
            if body["appSecret"] != APP_SECRET {
                return envelope(20006, "appId or appSecret is wrong");
            }
            if body["permanentCode"] != PERMANENT_CODE {
                return envelope(20015, "permanentCode is wrong");
            }
            s.minted += 1;
            let token = format!("CAT-{}", s.minted);
            s.live_tokens.push(token.clone());
            return ResponseTemplate::new(200).set_body_json(json!({"errorCode": 0,
                "errorMessage": "success", "corpAccessToken": token, "corpId": "FSCID_ACME",
                "expiresIn": 7200}));
        }
        if let Some(n) = s.expire_after.as_mut() {
            if *n == 0 {
                s.live_tokens.clear();
                s.expire_after = None;
            } else {
                *n -= 1;
            }
        }
        let token = body["corpAccessToken"].as_str().unwrap_or_default();
        if !s.live_tokens.iter().any(|t| t == token) || body["corpId"] != "FSCID_ACME" {
            return envelope(20016, "corpAccessToken expired");
        }
        if body["currentOpenUserId"] != OPERATOR {
            return envelope(20012, "openUserId not found");
        }
        if path == "/cgi/user/list" {
            return ResponseTemplate::new(200).set_body_json(json!({"errorCode": 0,
                "errorMessage": "success", "userList": s.users}));
        }
        assert_eq!(path, "/cgi/crm/v2/data/query", "unexpected path");
        let info = &body["data"]["search_query_info"];
        s.filters_seen.push(info["filters"].clone());
        let mut delay = std::time::Duration::ZERO;
        match s.faults.pop_front().flatten() {
            Some(Fault::Slow) => delay = SLOW,
            Some(Fault::Throttled) => return envelope(14001, "interface call limit exceeded"),
            Some(Fault::Busy) => return envelope(-1, "system busy"),
            Some(Fault::Malformed) => {
                return ResponseTemplate::new(200)
                    .set_body_string("{\"errorCode\": 0, \"data\": {\"dataL");
            }
            Some(Fault::QuotaSpent) => return envelope(30002, "daily quota exhausted"),
            None => {}
        }
        let offset = info["offset"].as_u64().unwrap_or(0);
        if offset > 10_000 {
            return envelope(10013, "offset out of range 10000");
        }
        let limit = info["limit"].as_u64().unwrap() as usize;
        assert!(limit <= 1000, "limit {limit}");
        let records = match body["data"]["dataObjectApiName"].as_str().unwrap() {
            "AccountObj" => &s.accounts,
            "SalesOrderObj" => &s.orders,
            "PaymentPlanObj" => &s.plans,
            "ActiveRecordObj" => &s.activities,
            "PaymentObj" => &s.payments,
            other => panic!("unexpected object {other}"),
        };
        let mut matching: Vec<&Value> = records
            .iter()
            .filter(|r| {
                info["filters"].as_array().unwrap().iter().all(|f| {
                    let field = f["field_name"].as_str().unwrap();
                    match (field, f["operator"].as_str().unwrap()) {
                        ("_id", "GT") => {
                            r["_id"].as_str().unwrap() > f["field_values"][0].as_str().unwrap()
                        }
                        ("last_modified_time", "GT") => {
                            r[field].as_i64().unwrap() > f["field_values"][0].as_i64().unwrap()
                        }
                        ("order_id", "IN") => f["field_values"]
                            .as_array()
                            .unwrap()
                            .contains(&r["order_id"]),
                        other => panic!("unexpected filter {other:?}"),
                    }
                })
            })
            .collect();
        assert_eq!(info["orders"], json!([{"fieldName": "_id", "isAsc": true}]));
        matching.sort_by_key(|r| r["_id"].as_str().unwrap().to_owned());
        let page: Vec<&Value> = matching
            .into_iter()
            .skip(offset as usize)
            .take(limit)
            .collect();
        ResponseTemplate::new(200)
            .set_body_json(json!({"errorCode": 0, "errorMessage": "success",
            "data": {"dataList": page, "total": 0, "offset": offset, "limit": limit}}))
            .set_delay(delay)
    }
}

/// Epoch milliseconds of 2024-05-DD HH:MM in China time.
fn at(day: u32, minute: u32) -> i64 {
    chrono::NaiveDate::from_ymd_opt(2024, 5, day)
        .unwrap()
        .and_hms_opt(minute / 60, minute % 60, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
        - 8 * 3_600_000
}

/// Epoch milliseconds of midnight China time on `day`.
fn midnight_china(day: chrono::NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
        - 8 * 3_600_000
}

/// The day of epoch milliseconds in China time.
fn china_day(millis: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_millis(millis + 8 * 3_600_000)
        .unwrap()
        .date_naive()
}

/// 3 users; 450 accounts (120 sharing one last_modified_time; owners as lists of user ids);
/// 600 orders, one in ten voided, dated at midnight China time (the previous day in UTC); 250
/// payment plans, paid in full, in part or not at all, one in forty voided, some entered after
/// their due date. One account has no name, one order no customer and one plan no due date:
/// all three must be rejected.
fn seeded() -> Source {
    let mut s = Source::default();
    for (n, email) in [
        (1, "li.wei@example.com"),
        (2, "wang.fang@example.com"),
        (3, "zhao.min@example.com"),
    ] {
        s.users.push(
            json!({"openUserId": format!("FSUID_{n:04}"), "name": format!("用户{n}"),
            "email": email}),
        );
    }
    for i in 1..=450_u32 {
        let name = if i == 77 {
            Value::Null
        } else {
            json!(format!("杭州客户 {i} 科技有限公司"))
        };
        let modified = if (150..270).contains(&i) {
            at(3, 0)
        } else {
            at(1 + i % 20, i % 600)
        };
        s.accounts.push(json!({"_id": format!("65f0c1e2a1b2c3d4{i:08x}"), "name": name,
            "owner": [format!("FSUID_{:04}", 1 + i % 3)], "create_time": at(1, 0) - 86_400_000 * 400,
            "last_modified_time": modified}));
    }
    for i in 1..=600_u32 {
        let account = if i == 301 {
            Value::Null
        } else {
            json!(format!("65f0c1e2a1b2c3d4{:08x}", 1 + i % 450))
        };
        let day = chrono::NaiveDate::from_ymd_opt(2024, 4, 1 + i % 28).unwrap();
        let midnight_china = day
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
            .timestamp_millis()
            - 8 * 3_600_000;
        s.orders.push(
            json!({"_id": format!("66a0{i:020x}"), "account_id": account,
            "order_time": midnight_china, "order_amount": format!("{}.50", 1000 + i),
            "life_status": if i % 10 == 0 { "invalid" } else { "normal" },
            "last_modified_time": at(2 + i % 9, i % 500), "field_cost__c": 200 + i}),
        );
    }
    for i in 1..=250_u32 {
        let account = match 1 + (i * 7) % 450 {
            77 => 78,
            n => n,
        };
        let due = midnight_china(chrono::NaiveDate::from_ymd_opt(2024, 6, 1 + i % 28).unwrap());
        let created = if i % 25 == 0 {
            due + 40 * 86_400_000
        } else {
            at(1, 600)
        };
        let planned = format!("{}.00", 1000 + i);
        let received = match i % 3 {
            0 => json!(planned),
            1 => json!("100.00"),
            _ => Value::Null,
        };
        s.plans.push(json!({"_id": format!("67b0{i:020x}"),
            "account_id": format!("65f0c1e2a1b2c3d4{account:08x}"),
            "order_id": if i % 2 == 0 { json!(format!("66a0{i:020x}")) } else { json!("") },
            "plan_payment_amount": planned, "actual_payment_amount": received,
            "plan_payment_time": if i == 50 { Value::Null } else { json!(due) },
            "create_time": created,
            "life_status": if i % 40 == 0 { "invalid" } else { "normal" },
            "last_modified_time": at(2 + i % 20, i % 600)}));
    }
    // 200 follow-ups: calls (电话), visits (拜访) and WeChat messages (微信, not mapped to a
    // kind); every 25th with a lead instead of a customer (an empty lookup); one naming an
    // account that does not exist and one without a time: both must be rejected.
    for i in 1..=200_u32 {
        // Account 77 has no name and is rejected: its contacts would be too.
        let account = match (i, 1 + (i * 11) % 450) {
            (_, _) if i % 25 == 0 => json!([]),
            (123, _) => json!(["65f0c1e2a1b2c3d4ffffffff"]),
            (_, 77) => json!(["65f0c1e2a1b2c3d40000004e"]),
            (_, n) => json!([format!("65f0c1e2a1b2c3d4{n:08x}")]),
        };
        let kind = ["电话", "拜访", "微信"][i as usize % 3];
        s.activities.push(
            json!({"_id": format!("68c0{i:020x}"), "field_account__c": account,
            "field_type__c": kind,
            "create_time": if i == 7 { Value::Null } else { json!(at(1 + i % 20, i % 600)) },
            "field_note__c": if i % 4 == 0 { json!("") } else { json!(format!("跟进 {i}")) },
            "owner": [format!("FSUID_{:04}", 1 + i % 3)], "life_status": "normal",
            "last_modified_time": at(2 + i % 20, i % 600)}),
        );
    }
    s
}

/// The activity object's settings the tests use: a customer lookup, the type options of calls
/// and visits, a note.
fn activity_settings() -> ActivitySettings {
    ActivitySettings {
        object: "ActiveRecordObj".into(),
        customer_field: "field_account__c".into(),
        kind_field: "field_type__c".into(),
        kinds: [("电话", "call"), ("拜访", "visit")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        note_field: Some("field_note__c".into()),
        ..ActivitySettings::default()
    }
}

/// The contacts the store must hold: follow-ups of a mapped type on an imported account, at
/// their creation time.
fn expected_activities(s: &Source) -> Vec<String> {
    let mut rows: Vec<String> = s
        .activities
        .iter()
        .filter_map(|a| {
            let customer = a["field_account__c"][0].as_str()?;
            let kind = match a["field_type__c"].as_str().unwrap() {
                "电话" => "call",
                "拜访" => "visit",
                _ => return None,
            };
            if customer.ends_with("ffffffff") || a["create_time"].is_null() {
                return None;
            }
            let owner = s
                .users
                .iter()
                .find(|u| u["openUserId"] == a["owner"][0])
                .map(|u| u["email"].as_str().unwrap().to_owned());
            let at = chrono::DateTime::from_timestamp_millis(a["create_time"].as_i64().unwrap())
                .unwrap()
                .naive_utc();
            let note = a["field_note__c"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_owned);
            let row = (
                a["_id"].as_str().unwrap().to_owned(),
                customer.to_owned(),
                owner,
                kind.to_owned(),
                at,
                note,
            );
            Some(format!("activity {row:?}"))
        })
        .collect();
    rows.sort();
    rows
}

/// The invoices the store must hold: every plan with a due date that is not voided, issued when
/// created (or when due, if entered later), paid on the day of its last change once fully
/// received.
fn expected_invoices(s: &Source) -> Vec<String> {
    let mut rows: Vec<String> = s
        .plans
        .iter()
        .filter(|p| p["life_status"] != "invalid" && !p["plan_payment_time"].is_null())
        .map(|p| {
            let due = china_day(p["plan_payment_time"].as_i64().unwrap());
            let issued = china_day(p["create_time"].as_i64().unwrap()).min(due);
            let planned: f64 = p["plan_payment_amount"].as_str().unwrap().parse().unwrap();
            let received: f64 = p["actual_payment_amount"]
                .as_str()
                .map_or(0.0, |r| r.parse().unwrap());
            let paid = (received >= planned)
                .then(|| china_day(p["last_modified_time"].as_i64().unwrap()).max(issued));
            let order = p["order_id"]
                .as_str()
                .filter(|o| !o.is_empty())
                .map(str::to_owned);
            format!(
                "invoice {:?}",
                (
                    p["_id"].as_str().unwrap().to_owned(),
                    p["account_id"].as_str().unwrap().to_owned(),
                    order,
                    issued,
                    due,
                    (planned * 100.0).round() as i64,
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
    let owners: Vec<OwnerRow> = s
        .users
        .iter()
        .map(|u| {
            (
                u["email"].as_str().unwrap().to_owned(),
                u["name"].as_str().unwrap().to_owned(),
                // Fxiaoke users carry no locale: the import's default (SyncOptions::default).
                "en".to_owned(),
                Some(u["openUserId"].as_str().unwrap().to_owned()),
            )
        })
        .collect();
    let email_of = |id: &Value| {
        s.users
            .iter()
            .find(|u| u["openUserId"] == *id)
            .map(|u| u["email"].as_str().unwrap().to_owned())
    };
    let mut customers: BTreeMap<String, CustomerRow> = BTreeMap::new();
    for a in s
        .accounts
        .iter()
        .filter(|a| !a["name"].is_null() && a["life_status"] != "invalid")
    {
        let id = a["_id"].as_str().unwrap().to_owned();
        let created = chrono::DateTime::from_timestamp_millis(
            a["create_time"].as_i64().unwrap() + 8 * 3_600_000,
        )
        .unwrap()
        .date_naive();
        customers.insert(
            id.clone(),
            (
                id,
                a["name"].as_str().unwrap().to_owned(),
                email_of(&a["owner"][0]),
                Some(created),
            ),
        );
    }
    let mut orders: BTreeMap<String, OrderRow> = BTreeMap::new();
    for o in s
        .orders
        .iter()
        .filter(|o| o["life_status"] != "invalid" && !o["account_id"].is_null())
    {
        let id = o["_id"].as_str().unwrap().to_owned();
        // The day in China time.
        let day = chrono::DateTime::from_timestamp_millis(
            o["order_time"].as_i64().unwrap() + 8 * 3_600_000,
        )
        .unwrap()
        .date_naive();
        let amount: f64 = o["order_amount"].as_str().unwrap().parse().unwrap();
        orders.insert(
            id.clone(),
            (
                id,
                o["account_id"].as_str().unwrap().to_owned(),
                day,
                (amount * 100.0).round() as i64,
                Some(o["field_cost__c"].as_i64().unwrap() * 100),
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
        let (runtime, server) = serve(FakeFxiaoke(source.clone()));
        Self {
            runtime,
            server,
            source,
        }
    }

    fn connector(&self, permanent_code: &str) -> Fxiaoke {
        Fxiaoke::new(self.settings(permanent_code)).unwrap()
    }

    fn settings(&self, permanent_code: &str) -> FxiaokeSettings {
        FxiaokeSettings {
            enabled: true,
            base_url: self.server.uri(),
            app_id: "FSAID_131a2b3".into(),
            app_secret: SecretString::from(APP_SECRET.to_owned()),
            permanent_code: SecretString::from(permanent_code.to_owned()),
            operator_user_id: OPERATOR.into(),
            page_size: 100,
            cost_field: Some("field_cost__c".into()),
            http: fast_http(0),
            ..FxiaokeSettings::default()
        }
    }

    fn sync(&self, db: &TestDb) -> Result<SyncReport, CrmError> {
        let connector = self.connector(PERMANENT_CODE);
        self.runtime
            .block_on(sync(&db.db, &connector, &SyncOptions::default()))
    }
}

fn snapshot(db: &TestDb) -> Vec<String> {
    source_snapshot(&mut db.conn(), "fxiaoke")
}

backend_tests! {
    fn a_full_run_with_an_expiring_token_and_faults_imports_the_source(db) {
        let harness = Harness::new(seeded());
        {
            let mut s = harness.source.lock().unwrap();
            // The token dies after 3 calls; throttling, a busy system, a cut-off body and an
            // answer slower than the timeout hit the accounts.
            s.expire_after = Some(3);
            s.faults = vec![None, Some(Fault::Throttled), Some(Fault::Busy), Some(Fault::Malformed), Some(Fault::Slow)].into();
        }
        let report = harness.sync(&db).unwrap();
        assert!(report.entities.iter().all(|e| e.completed), "{report:?}");
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "the store equals the source");
        assert_same_rows(&invoice_snapshot(&mut db.conn(), "fxiaoke"), &expected_invoices(&s), "invoices");
        assert_eq!(s.minted, 2, "one token, minted again once when it expired");
        assert_eq!(report.rejected(), 3, "{report:?}");
        // 250 plans at 100 a page.
        assert_eq!((report.entities[3].pages, report.entities[3].records), (3, 250));
        let customers = &report.entities[1];
        // 450 accounts at 100 a page: 4 full pages and one of 50, read by _id keyset.
        assert_eq!((customers.pages, customers.records), (5, 450));
        assert!(s.filters_seen.iter().all(|f| f.as_array().unwrap().iter().all(|f| f["field_name"] != "last_modified_time")));
        assert!(s.filters_seen.iter().any(|f| f[0]["field_name"] == "_id"), "keyset paging");
    }

    fn an_incremental_run_filters_on_the_watermark_and_reads_the_changes(db) {
        let harness = Harness::new(seeded());
        harness.sync(&db).unwrap();
        let newest = seeded().accounts.iter().map(|a| a["last_modified_time"].as_i64().unwrap()).max().unwrap();
        {
            let mut s = harness.source.lock().unwrap();
            s.accounts[9]["name"] = json!("改名 10");
            s.accounts[9]["last_modified_time"] = json!(at(25, 10));
            let voided = s.orders.iter_mut().find(|o| o["life_status"] == "invalid").unwrap();
            voided["life_status"] = json!("normal");
            voided["last_modified_time"] = json!(at(25, 11));
            // A plan paid in full since: paid on the day of that change.
            let open = s.plans.iter_mut().find(|p| p["actual_payment_amount"].is_null()).unwrap();
            open["actual_payment_amount"] = open["plan_payment_amount"].clone();
            open["last_modified_time"] = json!(at(25, 12));
            s.filters_seen.clear();
        }
        let report = harness.sync(&db).unwrap();
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "after the incremental run");
        assert_same_rows(&invoice_snapshot(&mut db.conn(), "fxiaoke"), &expected_invoices(&s), "invoices after the incremental run");
        assert!(report.entities[3].records >= 1 && report.entities[3].records < 20, "{report:?}");
        // Accounts are asked for from the newest change less 5 minutes (GT that less 1 ms).
        assert_eq!(s.filters_seen[0][0]["field_values"][0], json!(newest - 5 * 60_000 - 1));
        assert!(report.entities[1].records >= 1 && report.entities[1].records < 10, "{report:?}");
    }

    fn voided_accounts_orders_and_payment_plans_are_marked_deleted_and_kept(db) {
        let harness = Harness::new(seeded());
        harness.sync(&db).unwrap();
        assert!(deleted_snapshot(&mut db.conn(), "fxiaoke").is_empty());
        {
            // Account 21 (whose orders are all voided already) and live order 1 are voided.
            let mut s = harness.source.lock().unwrap();
            s.accounts[20]["life_status"] = json!("invalid");
            s.accounts[20]["last_modified_time"] = json!(at(26, 0));
            s.orders[0]["life_status"] = json!("invalid");
            s.orders[0]["last_modified_time"] = json!(at(26, 1));
            // And the first payment plan.
            s.plans[0]["life_status"] = json!("invalid");
            s.plans[0]["last_modified_time"] = json!(at(26, 2));
        }
        let report = harness.sync(&db).unwrap();
        let marked: Vec<u64> = report.entities.iter().map(|e| e.deleted).collect();
        assert_eq!(marked, [0, 1, 1, 1], "{report:?}");
        let (account, order, plan) = {
            let s = harness.source.lock().unwrap();
            (s.accounts[20]["_id"].as_str().unwrap().to_owned(), s.orders[0]["_id"].as_str().unwrap().to_owned(),
                s.plans[0]["_id"].as_str().unwrap().to_owned())
        };
        assert_eq!(
            deleted_snapshot(&mut db.conn(), "fxiaoke"),
            [format!("customer {account}: voided in fxiaoke (作废)"), format!("order {order}: voided in fxiaoke (作废)"),
                format!("invoice {plan}: voided in fxiaoke (作废)")]
        );
        assert_same_rows(&snapshot(&db), &expected(&harness.source.lock().unwrap()), "live rows after voiding");
        assert_same_rows(&invoice_snapshot(&mut db.conn(), "fxiaoke"), &expected_invoices(&harness.source.lock().unwrap()), "live invoices after voiding");
        // Restored (back to normal): live again.
        {
            let mut s = harness.source.lock().unwrap();
            s.orders[0]["life_status"] = json!("normal");
            s.orders[0]["last_modified_time"] = json!(at(27, 0));
            s.plans[0]["life_status"] = json!("normal");
            s.plans[0]["last_modified_time"] = json!(at(27, 1));
        }
        harness.sync(&db).unwrap();
        assert_eq!(deleted_snapshot(&mut db.conn(), "fxiaoke"), [format!("customer {account}: voided in fxiaoke (作废)")]);
        assert_same_rows(&invoice_snapshot(&mut db.conn(), "fxiaoke"), &expected_invoices(&harness.source.lock().unwrap()), "invoices restored");
    }

    fn a_spent_daily_quota_stops_cleanly_and_the_next_run_resumes(db) {
        let harness = Harness::new(seeded());
        harness.source.lock().unwrap().faults = vec![None, None, Some(Fault::QuotaSpent)].into();
        let err = harness.sync(&db).unwrap_err();
        assert!(matches!(err, CrmError::QuotaExhausted(_)), "{err}");
        let state = tierwise_store::crm::sync_state(&mut db.conn(), "fxiaoke", "customers").unwrap();
        assert!(state.in_progress && state.run_pages == 2, "{state:?}");
        let report = harness.sync(&db).unwrap();
        assert!(report.entities[1].resumed, "{report:?}");
        assert_eq!(report.entities[1].records, 250, "only the accounts after the stored position");
        assert_same_rows(&snapshot(&db), &expected(&harness.source.lock().unwrap()), "after resuming");
    }

    fn a_wrong_permanent_code_says_what_to_fix_and_shows_no_secret(db) {
        let harness = Harness::new(seeded());
        let connector = harness.connector("FXPC-wrong-0000");
        let err = harness.runtime.block_on(sync(&db.db, &connector, &SyncOptions::default())).unwrap_err();
        assert!(matches!(err, CrmError::Auth { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("20015") && text.contains("TIERWISE__CRM__FXIAOKE__PERMANENT_CODE"), "{text}");
        for shown in [text, format!("{err:?}"), format!("{connector:?}")] {
            assert!(!shown.contains("FXPC-wrong-0000") && !shown.contains(APP_SECRET), "{shown}");
        }
    }

    fn follow_ups_of_the_configured_object_are_imported_as_contacts(db) {
        let harness = Harness::new(seeded());
        let connector = Fxiaoke::new(FxiaokeSettings {
            activities: activity_settings(),
            ..harness.settings(PERMANENT_CODE)
        })
        .unwrap();
        let run = || harness.runtime.block_on(sync(&db.db, &connector, &SyncOptions::default())).unwrap();
        let report = run();
        let activities = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        let expected = expected_activities(&harness.source.lock().unwrap());
        assert!(expected.len() > 100, "{}", expected.len());
        assert_same_rows(&activity_snapshot(&mut db.conn(), "fxiaoke"), &expected, "activities");
        // 200 records at 100 a page (and an empty third: a full page may have more behind
        // it); the unknown account and the missing time are rejected
        // with their JSON, naming what is wrong.
        assert_eq!((activities.pages, activities.records, activities.rejected), (3, 200, 2), "{report:?}");
        let rejects = tierwise_store::runs::rejects_of_run(&mut db.conn(), activities.run.unwrap(), 10).unwrap();
        assert!(
            rejects.iter().any(|r| r.field.as_deref() == Some("create_time") && r.reason.contains("missing")),
            "{rejects:?}"
        );
        assert!(
            rejects.iter().any(|r| r.reason.contains("65f0c1e2a1b2c3d4ffffffff is not imported")),
            "{rejects:?}"
        );
        assert!(rejects.iter().all(|r| r.raw_record.contains("field_type__c")), "{rejects:?}");
        // A visit logged since: the next run reads the recent changes only and adds it.
        {
            let mut s = harness.source.lock().unwrap();
            s.activities.push(json!({"_id": "68c0ffffffffffffffffffff", "field_account__c": ["65f0c1e2a1b2c3d400000005"],
                "field_type__c": "拜访", "create_time": at(28, 30), "owner": ["FSUID_0002"],
                "life_status": "normal", "last_modified_time": at(28, 31)}));
        }
        let report = run();
        let activities = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        assert_eq!(activities.written, 1, "{report:?}");
        assert!(activities.records < 20, "only the recent changes are read: {report:?}");
        assert_same_rows(&activity_snapshot(&mut db.conn(), "fxiaoke"), &expected_activities(&harness.source.lock().unwrap()), "activities after the incremental run");
        // The visit is voided (作废): marked deleted, no longer a contact.
        {
            let mut s = harness.source.lock().unwrap();
            let visit = s.activities.last_mut().unwrap();
            visit["life_status"] = json!("invalid");
            visit["last_modified_time"] = json!(at(29, 0));
        }
        let report = run();
        let activities = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        assert_eq!(activities.deleted, 1, "{report:?}");
        assert_eq!(deleted_snapshot(&mut db.conn(), "fxiaoke"), ["activity 68c0ffffffffffffffffffff: voided in fxiaoke (作废)"]);
        let live = activity_snapshot(&mut db.conn(), "fxiaoke");
        assert!(!live.iter().any(|r| r.contains("68c0ffffffffffffffffffff")), "{live:?}");
    }

    fn completed_plans_are_dated_by_the_payments_of_their_order(db) {
        let mut source = seeded();
        let day = |m: u32, d: u32| midnight_china(chrono::NaiveDate::from_ymd_opt(2024, m, d).unwrap());
        let account = "65f0c1e2a1b2c3d400000005";
        let plan = |id: &str, order: &str, due: i64| {
            json!({"_id": id, "account_id": account, "order_id": order, "plan_payment_amount": "100.00",
                "actual_payment_amount": "100.00", "plan_payment_time": due, "create_time": at(1, 600),
                "life_status": "normal", "last_modified_time": at(20, 0)})
        };
        // One order paid in three payments over two plans; another order without payments.
        source.plans.push(plan("67b0ffffffffffffffff0001", "66a0ffffffffffffffff0001", day(6, 1)));
        source.plans.push(plan("67b0ffffffffffffffff0002", "66a0ffffffffffffffff0001", day(7, 1)));
        source.plans.push(plan("67b0ffffffffffffffff0003", "66a0ffffffffffffffff0002", day(6, 1)));
        for (n, (paid, amount)) in [(day(6, 5), "60.00"), (day(6, 20) + 3_600_000, "40.00"), (day(7, 10), "100.00")].into_iter().enumerate() {
            source.payments.push(json!({"_id": format!("69d0{n:020x}"), "account_id": account,
                "order_id": "66a0ffffffffffffffff0001", "payment_amount": amount, "payment_time": paid,
                "life_status": "normal", "last_modified_time": paid}));
        }
        let harness = Harness::new(source);
        harness.sync(&db).unwrap();
        let stored = invoice_snapshot(&mut db.conn(), "fxiaoke");
        let paid_on = |id: &str| -> String {
            let row = stored.iter().find(|r| r.contains(id)).unwrap();
            row.rsplit_once(", ").unwrap().1.to_owned()
        };
        // The second payment completes the first plan, the third the second; the plan of an
        // order without payments keeps the day of its last change.
        assert_eq!(paid_on("67b0ffffffffffffffff0001"), "Some(2024-06-20))");
        assert_eq!(paid_on("67b0ffffffffffffffff0002"), "Some(2024-07-10))");
        assert_eq!(paid_on("67b0ffffffffffffffff0003"), "Some(2024-05-20))");
        let s = harness.source.lock().unwrap();
        assert!(s.filters_seen.iter().any(|f| f[0]["operator"] == "IN"), "payments asked for by order");
        // Every other plan is as before (none of their orders has payments).
        let others: Vec<String> = stored.into_iter().filter(|r| !r.contains("ffffffffffffffff")).collect();
        assert_same_rows(&others, &expected_invoices(&seeded()), "the other invoices");
    }
}

#[test]
fn an_activity_object_without_a_way_to_tell_kinds_is_refused_with_the_fix() {
    let harness = Harness::new(seeded());
    let refused = |activities: ActivitySettings| {
        Fxiaoke::new(FxiaokeSettings {
            activities,
            ..harness.settings(PERMANENT_CODE)
        })
        .unwrap_err()
        .to_string()
    };
    let no_kind = refused(ActivitySettings {
        kind_field: String::new(),
        ..activity_settings()
    });
    assert!(
        no_kind.contains("crm.fxiaoke.activities.kind_field") && no_kind.contains("default_kind"),
        "{no_kind}"
    );
    let unmapped = refused(ActivitySettings {
        kinds: BTreeMap::new(),
        ..activity_settings()
    });
    assert!(
        unmapped.contains("kinds") && unmapped.contains("field_type__c"),
        "{unmapped}"
    );
    let bad_kind = refused(ActivitySettings {
        default_kind: Some("fax".into()),
        kind_field: String::new(),
        ..activity_settings()
    });
    assert!(bad_kind.contains("default_kind"), "{bad_kind}");
    let no_customer = refused(ActivitySettings {
        customer_field: " ".into(),
        ..activity_settings()
    });
    assert!(
        no_customer.contains("customer_field") && no_customer.contains("ActiveRecordObj"),
        "{no_customer}"
    );
    // Without a kind field, every record is the default kind.
    let every_call = ActivitySettings {
        kind_field: String::new(),
        kinds: BTreeMap::new(),
        default_kind: Some("call".into()),
        ..activity_settings()
    };
    assert!(
        Fxiaoke::new(FxiaokeSettings {
            activities: every_call,
            ..harness.settings(PERMANENT_CODE)
        })
        .is_ok()
    );
}
