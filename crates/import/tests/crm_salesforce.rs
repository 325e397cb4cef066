//! The Salesforce connector against a local server that behaves like Salesforce: an OAuth token
//! endpoint (refusals as HTTP 400 `invalid_grant`), sessions that end mid-run (401
//! `INVALID_SESSION_ID` as a JSON array), SOQL over the query resource with `batchSize`,
//! `nextRecordsUrl` locators holding the result fixed at query time, locators that expire
//! (`INVALID_QUERY_LOCATOR`), `Sforce-Limit-Info`, 403 `REQUEST_LIMIT_EXCEEDED`, 5xx and a
//! malformed page. Every test runs on SQLite and PostgreSQL and compares the store with the
//! source.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test"
)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use secrecy::SecretString;
use serde_json::{Value, json};
use tierwise_import::crm::salesforce::{InvoiceObject, Salesforce, SalesforceSettings};
use tierwise_import::crm::{CrmError, SyncOptions, SyncReport, sync};
use tierwise_store::backend_tests;
use tierwise_store::testing::{
    TestDb, activity_snapshot, assert_same_rows, deleted_snapshot, invoice_snapshot,
    source_snapshot,
};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

mod support;
use support::{CustomerRow, OrderRow, OwnerRow, expected_rows, fast_http, owner_row, serve};

const CLIENT_SECRET: &str = "sf-consumer-secret-5d1";
const REFRESH: &str = "5Aep861refresh.token.c0ffee";
const QUERY: &str = "/services/data/v60.0/query";
/// The query resource that also returns deleted rows (`IsDeleted = true`).
const QUERY_ALL: &str = "/services/data/v60.0/queryAll";
/// Longer than the connector's timeout in these tests (0.5 s).
const SLOW: std::time::Duration = std::time::Duration::from_millis(1500);

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The answer comes later than the connector's timeout.
    Slow,
    ServerError,
    Malformed,
    LimitExceeded,
}

#[derive(Debug, Default)]
struct Source {
    /// The server's address: the instance URL tokens come with.
    uri: String,
    users: Vec<Value>,
    accounts: Vec<Value>,
    opportunities: Vec<Value>,
    tasks: Vec<Value>,
    events: Vec<Value>,
    /// Records of the org's invoice object (`Invoice__c`).
    invoices: Vec<Value>,
    live_tokens: Vec<String>,
    minted: u32,
    /// End every live session after this many more query calls.
    expire_after: Option<u32>,
    /// Faults for the coming query calls; None = serve.
    faults: VecDeque<Option<Fault>>,
    /// Open query locators: the result as of the query, by locator id.
    locators: HashMap<String, Vec<Value>>,
    /// The SOQL of every new query.
    soql_seen: Vec<String>,
    /// Query calls served, and the org's daily allocation (for `Sforce-Limit-Info`).
    calls: u32,
    daily_limit: u32,
}

#[derive(Clone)]
struct FakeSalesforce(Arc<Mutex<Source>>);

fn sf_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!([{"message": message, "errorCode": code}]))
}

/// The tiny SOQL subset the connector sends: `SELECT … FROM <object> [WHERE [IsWon = true AND]
/// [SystemModstamp >= <datetime>]] ORDER BY SystemModstamp, Id`.
fn run_soql(s: &Source, soql: &str, with_deleted: bool) -> Vec<Value> {
    let object = soql
        .split(" FROM ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let literal = |after: &str| {
        soql.split(after).nth(1).map(|rest| {
            let value = rest.split([' ', ')']).next().unwrap();
            chrono::DateTime::parse_from_rfc3339(value).unwrap()
        })
    };
    let since = literal("SystemModstamp >= ");
    let started_by = literal("StartDateTime <= ");
    // Events also match when they started since the watermark.
    let or_started = soql.contains("OR StartDateTime >= ");
    let records = match object {
        "User" => &s.users,
        "Account" => &s.accounts,
        "Opportunity" => &s.opportunities,
        "Task" => &s.tasks,
        "Event" => &s.events,
        "Invoice__c" => &s.invoices,
        other => panic!("unexpected object {other}"),
    };
    let start = |r: &Value| {
        chrono::DateTime::parse_from_str(
            r["StartDateTime"].as_str().unwrap(),
            "%Y-%m-%dT%H:%M:%S%.f%z",
        )
        .unwrap()
    };
    let stamp = |r: &Value| {
        chrono::DateTime::parse_from_str(
            r["SystemModstamp"].as_str().unwrap(),
            "%Y-%m-%dT%H:%M:%S%.f%z",
        )
        .unwrap()
    };
    let mut matching: Vec<Value> = records
        .iter()
        .filter(|r| with_deleted || r["IsDeleted"] != true)
        .filter(|r| {
            since.is_none_or(|since| stamp(r) >= since || (or_started && start(r) >= since))
        })
        .filter(|r| started_by.is_none_or(|by| start(r) <= by))
        .filter(|r| !soql.contains("IsClosed = true") || r["IsClosed"] == true)
        .filter(|r| !soql.contains("IsDeleted = false") || r["IsDeleted"] != true)
        .filter(|r| !soql.contains("IsWon = true") || r["IsWon"] == true)
        .cloned()
        .collect();
    matching.sort_by_key(|r| (stamp(r), r["Id"].as_str().unwrap().to_owned()));
    matching
}

impl Respond for FakeSalesforce {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut s = self.0.lock().unwrap();
        let path = request.url.path().to_owned();
        if path == "/services/oauth2/token" {
            let form: BTreeMap<String, String> = url::form_urlencoded::parse(&request.body)
                .into_owned()
                .collect();
            if form.get("grant_type").map(String::as_str) != Some("refresh_token")
                || form.get("refresh_token").map(String::as_str) != Some(REFRESH)
                || form.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
            {
                return ResponseTemplate::new(400).set_body_json(
                    json!({"error": "invalid_grant", "error_description": "expired access/refresh token"}),
                );
            }
            s.minted += 1;
            let token = format!("00Dxx0000001gPL!AR8AQ.{}", s.minted);
            s.live_tokens.push(token.clone());
            return ResponseTemplate::new(200).set_body_json(json!({"access_token": token,
                "instance_url": s.uri, "id": "https://login.salesforce.com/id/00Dxx/005xx",
                "token_type": "Bearer", "issued_at": "1714560000000", "signature": "x"}));
        }
        if let Some(n) = s.expire_after.as_mut() {
            if *n == 0 {
                s.live_tokens.clear();
                s.expire_after = None;
            } else {
                *n -= 1;
            }
        }
        let token = request
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::to_owned);
        if !token.is_some_and(|t| s.live_tokens.contains(&t)) {
            return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid");
        }
        s.calls += 1;
        let usage = format!("api-usage={}/{}", s.calls, s.daily_limit);
        let mut delay = std::time::Duration::ZERO;
        match s.faults.pop_front().flatten() {
            Some(Fault::Slow) => delay = SLOW,
            Some(Fault::ServerError) => return sf_error(503, "SERVER_UNAVAILABLE", "try later"),
            Some(Fault::Malformed) => {
                return ResponseTemplate::new(200)
                    .set_body_string("{\"totalSize\": 3, \"done\": fa");
            }
            Some(Fault::LimitExceeded) => {
                return sf_error(
                    403,
                    "REQUEST_LIMIT_EXCEEDED",
                    "TotalRequests Limit exceeded.",
                );
            }
            None => {}
        }
        let batch: usize = request
            .headers
            .get("sforce-query-options")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("batchSize="))
            .map_or(2000, |n| n.parse().unwrap());
        let (locator, offset) = if path == QUERY || path == QUERY_ALL {
            let soql = request
                .url
                .query_pairs()
                .find(|(k, _)| k == "q")
                .unwrap()
                .1
                .into_owned();
            s.soql_seen.push(soql.clone());
            let result = run_soql(&s, &soql, path == QUERY_ALL);
            let locator = format!("01gRO00000{:08}", s.locators.len() + 1);
            s.locators.insert(locator.clone(), result);
            (locator, 0)
        } else if let Some(rest) = path.strip_prefix(&format!("{QUERY}/")) {
            let (locator, offset) = rest.split_once('-').unwrap();
            if !s.locators.contains_key(locator) {
                return sf_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator");
            }
            (locator.to_owned(), offset.parse().unwrap())
        } else {
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist");
        };
        let result = &s.locators[&locator];
        let page: Vec<&Value> = result.iter().skip(offset).take(batch).collect();
        let done = offset + batch >= result.len();
        let mut body = json!({"totalSize": result.len(), "done": done, "records": page});
        if !done {
            body["nextRecordsUrl"] = json!(format!("{QUERY}/{locator}-{}", offset + batch));
        }
        ResponseTemplate::new(200)
            .insert_header("Sforce-Limit-Info", usage.as_str())
            .set_body_json(body)
            .set_delay(delay)
    }
}

/// A Salesforce datetime on 2024-05-DD at HH:MM UTC.
fn at(day: u32, minute: u32) -> String {
    format!(
        "2024-05-{day:02}T{:02}:{:02}:00.000+0000",
        minute / 60,
        minute % 60
    )
}

fn user_id(n: u32) -> String {
    format!("005xx00000000{n:02}AAA")
}

/// 3 users; 450 accounts (120 sharing one SystemModstamp across a batch boundary; every fifth
/// without the Owner relationship, looked up by OwnerId); 600 opportunities, two in three won.
/// One account has no name and one won opportunity no account: both must be rejected.
fn seeded() -> Source {
    let mut s = Source {
        daily_limit: 100_000,
        ..Source::default()
    };
    for (n, email, locale) in [
        (1, "li.wei@example.com", "zh_CN"),
        (2, "wang.fang@example.com", "zh_CN"),
        (3, "amy@example.com", "en_US"),
    ] {
        s.users
            .push(json!({"attributes": {"type": "User"}, "Id": user_id(n),
            "Name": email.split('@').next().unwrap(), "Email": email, "LanguageLocaleKey": locale,
            "SystemModstamp": at(1, n * 7)}));
    }
    for i in 1..=450_u32 {
        let owner = 1 + i % 3;
        let email = s.users[owner as usize - 1]["Email"].clone();
        let name = if i == 77 {
            Value::Null
        } else {
            json!(format!("Acme {i} Ltd"))
        };
        let modstamp = if (150..270).contains(&i) {
            at(3, 0)
        } else {
            at(1 + i % 20, i % 600)
        };
        let relationship = if i % 5 == 0 {
            Value::Null
        } else {
            json!({"attributes": {"type": "User"}, "Email": email})
        };
        s.accounts.push(
            json!({"attributes": {"type": "Account"}, "Id": format!("001xx{i:013}"),
            "Name": name, "OwnerId": user_id(owner), "Owner": relationship,
            "CreatedDate": "2023-02-11T01:14:03.000+0000", "SystemModstamp": modstamp}),
        );
    }
    for i in 1..=600_u32 {
        let account = if i == 301 {
            Value::Null
        } else {
            json!(format!("001xx{:013}", 1 + i % 450))
        };
        s.opportunities
            .push(json!({"attributes": {"type": "Opportunity"},
            "Id": format!("006xx{i:013}"), "AccountId": account, "Amount": 1000.5 + f64::from(i),
            "CloseDate": format!("2024-04-{:02}", 1 + i % 28), "IsWon": i % 3 != 0,
            "SystemModstamp": at(2 + i % 9, i % 500), "Cost__c": 200 + i}));
    }
    s
}

fn expected(s: &Source) -> Vec<String> {
    let owners: Vec<OwnerRow> = s
        .users
        .iter()
        .map(|u| {
            let user =
                json!({"email": u["Email"], "locale": u["LanguageLocaleKey"], "Name": u["Name"]});
            owner_row(&user, u["Id"].as_str().unwrap().to_owned(), "Name")
        })
        .collect();
    let email_of = |owner_id: &Value| {
        s.users
            .iter()
            .find(|u| u["Id"] == *owner_id)
            .map(|u| u["Email"].as_str().unwrap().to_owned())
    };
    let mut customers: BTreeMap<String, CustomerRow> = BTreeMap::new();
    for a in s
        .accounts
        .iter()
        .filter(|a| !a["Name"].is_null() && a["IsDeleted"] != true)
    {
        let id = a["Id"].as_str().unwrap().to_owned();
        customers.insert(
            id.clone(),
            (
                id,
                a["Name"].as_str().unwrap().to_owned(),
                email_of(&a["OwnerId"]),
                chrono::NaiveDate::from_ymd_opt(2023, 2, 11),
            ),
        );
    }
    let mut orders: BTreeMap<String, OrderRow> = BTreeMap::new();
    for o in s
        .opportunities
        .iter()
        .filter(|o| o["IsWon"] == true && !o["AccountId"].is_null() && o["IsDeleted"] != true)
    {
        let id = o["Id"].as_str().unwrap().to_owned();
        orders.insert(
            id.clone(),
            (
                id,
                o["AccountId"].as_str().unwrap().to_owned(),
                chrono::NaiveDate::parse_from_str(o["CloseDate"].as_str().unwrap(), "%Y-%m-%d")
                    .unwrap(),
                (o["Amount"].as_f64().unwrap() * 100.0).round() as i64,
                Some(o["Cost__c"].as_i64().unwrap() * 100),
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
        let (runtime, server) = serve(FakeSalesforce(source.clone()));
        source.lock().unwrap().uri = server.uri();
        Self {
            runtime,
            server,
            source,
        }
    }

    fn connector(&self, refresh: &str) -> Salesforce {
        Salesforce::new(self.settings(refresh)).unwrap()
    }

    fn settings(&self, refresh: &str) -> SalesforceSettings {
        SalesforceSettings {
            enabled: true,
            login_url: self.server.uri(),
            client_id: "3MVG9consumer.key".into(),
            client_secret: SecretString::from(CLIENT_SECRET.to_owned()),
            refresh_token: SecretString::from(refresh.to_owned()),
            batch_size: 200,
            cost_field: Some("Cost__c".into()),
            http: fast_http(1),
            ..SalesforceSettings::default()
        }
    }

    fn with_customer_fields(&self) -> Salesforce {
        let mut settings = SalesforceSettings {
            enabled: true,
            login_url: self.server.uri(),
            client_id: "3MVG9consumer.key".into(),
            client_secret: SecretString::from(CLIENT_SECRET.to_owned()),
            refresh_token: SecretString::from(REFRESH.to_owned()),
            batch_size: 200,
            ..SalesforceSettings::default()
        };
        settings.customer_fields.prospect_rating = Some("Rating__c".into());
        settings
            .customer_fields
            .attributes
            .insert("nps".into(), "NPS__c".into());
        Salesforce::new(settings).unwrap()
    }

    fn sync(&self, db: &TestDb, options: &SyncOptions) -> Result<SyncReport, CrmError> {
        let connector = self.connector(REFRESH);
        self.runtime.block_on(sync(&db.db, &connector, options))
    }
}

fn snapshot(db: &TestDb) -> Vec<String> {
    source_snapshot(&mut db.conn(), "salesforce")
}

backend_tests! {
    fn a_full_run_with_an_ending_session_and_faults_imports_the_source(db) {
        let harness = Harness::new(seeded());
        {
            let mut s = harness.source.lock().unwrap();
            // The session ends after 2 calls; a 503, a cut-off body and an answer slower than
            // the timeout hit the accounts.
            s.expire_after = Some(2);
            s.faults = vec![None, None, Some(Fault::ServerError), Some(Fault::Malformed), Some(Fault::Slow)].into();
        }
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        assert!(report.entities.iter().all(|e| e.completed), "{report:?}");
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "the store equals the source");
        assert_eq!(s.minted, 2, "one session, renewed once when it ended");
        // Users 1, accounts 3 pages + 3 failed tries (503, cut-off, too slow), opportunities 2,
        // activities 2 (Tasks, then Events): the slow answer was abandoned and asked again.
        assert_eq!(s.calls, 11);
        assert_eq!(report.rejected(), 2, "{report:?}");
        let customers = &report.entities[1];
        let rejects = tierwise_store::runs::rejects_of_run(&mut db.conn(), customers.run.unwrap(), 10).unwrap();
        assert_eq!(rejects[0].field.as_deref(), Some("name"), "{rejects:?}");
        assert!(rejects[0].raw_record.contains("001xx0000000000077"), "{rejects:?}");
        // The won opportunity of the rejected account created it, named by its id.
        assert_eq!(report.entities[2].customers_created, 1, "{report:?}");
        // 450 accounts in batches of 200; a full run sends no SystemModstamp condition.
        assert_eq!((customers.pages, customers.records), (3, 450));
        assert!(s.soql_seen.iter().all(|q| !q.contains("SystemModstamp >=")), "{:?}", s.soql_seen);
        assert!(s.soql_seen.iter().any(|q| q.contains("FROM Opportunity WHERE IsWon = true")));
    }

    fn an_incremental_run_asks_from_the_watermark_and_reads_the_changes(db) {
        let harness = Harness::new(seeded());
        harness.sync(&db, &SyncOptions::default()).unwrap();
        {
            let mut s = harness.source.lock().unwrap();
            s.accounts[9]["Name"] = json!("Renamed 10");
            s.accounts[9]["SystemModstamp"] = json!(at(25, 10));
            let lost = s.opportunities.iter_mut().find(|o| o["IsWon"] == false).unwrap();
            lost["IsWon"] = json!(true);
            lost["SystemModstamp"] = json!(at(25, 11));
            s.soql_seen.clear();
        }
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "after the incremental run");
        // The newest account change of the first run, less the 5-minute overlap.
        let accounts_soql = s.soql_seen.iter().find(|q| q.contains("FROM Account")).unwrap();
        let newest = seeded().accounts.iter().map(|a| a["SystemModstamp"].as_str().unwrap().to_owned()).max().unwrap();
        let newest = chrono::DateTime::parse_from_str(&newest, "%Y-%m-%dT%H:%M:%S%.f%z").unwrap();
        let from = (newest - chrono::TimeDelta::minutes(5)).format("%Y-%m-%dT%H:%M:%SZ").to_string();
        assert!(accounts_soql.contains(&format!("SystemModstamp >= {from}")), "{accounts_soql}");
        assert!(report.entities[1].records >= 1 && report.entities[1].records < 10, "{report:?}");
        assert!(report.entities[2].records >= 1 && report.entities[2].records < 10, "{report:?}");
    }

    fn deleted_and_merged_records_from_query_all_are_marked_and_kept(db) {
        let harness = Harness::new(seeded());
        harness.sync(&db, &SyncOptions::default()).unwrap();
        assert!(deleted_snapshot(&mut db.conn(), "salesforce").is_empty());
        {
            // Account 10 deleted, account 13 merged into account 12 (neither has a won
            // opportunity), won opportunity 1 deleted; queryAll returns them with IsDeleted.
            let mut s = harness.source.lock().unwrap();
            for (index, master) in [(9, None), (12, Some(s.accounts[11]["Id"].clone()))] {
                let a = &mut s.accounts[index];
                a["IsDeleted"] = json!(true);
                a["SystemModstamp"] = json!(at(26, 0));
                if let Some(master) = master {
                    a["MasterRecordId"] = master;
                }
            }
            s.opportunities[0]["IsDeleted"] = json!(true);
            s.opportunities[0]["SystemModstamp"] = json!(at(26, 1));
            s.soql_seen.clear();
        }
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        let marked: Vec<u64> = report.entities.iter().map(|e| e.deleted).collect();
        assert_eq!(marked, [0, 2, 1, 0], "{report:?}");
        assert_eq!(
            deleted_snapshot(&mut db.conn(), "salesforce"),
            [
                "customer 001xx0000000000010: deleted in salesforce",
                "customer 001xx0000000000013: merged into 001xx0000000000012 in salesforce",
                "order 006xx0000000000001: deleted in salesforce",
            ]
        );
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "live rows after deletions");
        assert!(s.soql_seen.iter().all(|q| !q.contains("FROM Account") || q.contains("IsDeleted")), "{:?}", s.soql_seen);
    }

    fn closed_call_and_email_tasks_and_past_events_are_contacts(db) {
        let harness = Harness::new(seeded());
        let account = |i: u32| format!("001xx{i:013}");
        {
            let mut s = harness.source.lock().unwrap();
            let owner = s.users[0]["Id"].clone();
            let task = |id: &str, account: Value, subtype: &str, closed: bool, completed: Value, deleted: bool| {
                json!({"attributes": {"type": "Task"}, "Id": id, "AccountId": account, "OwnerId": owner,
                    "Subject": format!("Task {id}"), "TaskSubtype": subtype, "IsClosed": closed,
                    "ActivityDate": "2024-05-03", "CompletedDateTime": completed, "IsDeleted": deleted,
                    "SystemModstamp": at(5, 10)})
            };
            s.tasks = vec![
                task("00Txx0000000001", json!(account(1)), "Call", true, json!("2024-05-03T08:15:00.000+0000"), false),
                task("00Txx0000000002", json!(account(2)), "Email", true, Value::Null, false),
                task("00Txx0000000003", json!(account(3)), "Call", false, Value::Null, false),
                task("00Txx0000000004", json!(account(4)), "Task", true, Value::Null, false),
                task("00Txx0000000005", Value::Null, "Call", true, Value::Null, false),
                task("00Txx0000000006", json!(account(6)), "Call", true, Value::Null, true),
            ];
            let event = |id: &str, account: u32, start: &str| {
                json!({"attributes": {"type": "Event"}, "Id": id, "AccountId": format!("001xx{account:013}"),
                    "OwnerId": owner, "Subject": format!("Visit {id}"), "StartDateTime": start,
                    "IsDeleted": false, "SystemModstamp": at(5, 20)})
            };
            s.events = vec![
                event("00Uxx0000000001", 7, "2024-05-10T02:00:00.000+0000"),
                event("00Uxx0000000002", 8, "2099-01-01T02:00:00.000+0000"),
            ];
        }
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        let activities = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        // Read: the five closed tasks (queryAll: the deleted one too, never held, so nothing to
        // mark) and the past event; three are contacts.
        assert_eq!((activities.records, activities.written, activities.rejected, activities.deleted), (6, 3, 0, 0), "{report:?}");
        let row = |id: &str, account: u32, kind: &str, at: &str, note: &str| {
            let at = chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M").unwrap();
            format!("activity {:?}", (id.to_owned(), format!("001xx{account:013}"), Some("li.wei@example.com".to_owned()), kind.to_owned(), at, Some(note.to_owned())))
        };
        assert_eq!(activity_snapshot(&mut db.conn(), "salesforce"), [
            row("00Txx0000000001", 1, "call", "2024-05-03 08:15", "Task 00Txx0000000001"),
            row("00Txx0000000002", 2, "email", "2024-05-03 00:00", "Task 00Txx0000000002"),
            row("00Uxx0000000001", 7, "meeting", "2024-05-10 02:00", "Visit 00Uxx0000000001"),
        ]);
        // The planned event takes place: it has not changed, yet the next run reads it because
        // it started since the watermark.
        harness.source.lock().unwrap().events[1]["StartDateTime"] = json!("2026-01-05T03:00:00.000+0000");
        harness.sync(&db, &SyncOptions::default()).unwrap();
        let stored = activity_snapshot(&mut db.conn(), "salesforce");
        assert_eq!(stored.len(), 4, "{stored:?}");
        assert_eq!(stored[3], row("00Uxx0000000002", 8, "meeting", "2026-01-05 03:00", "Visit 00Uxx0000000002"));
        let soql = harness.source.lock().unwrap().soql_seen.clone();
        assert!(soql.iter().any(|q| q.contains("FROM Task") && q.contains("IsClosed = true")), "{soql:?}");
        // The call task is deleted (to the recycle bin): the next run marks it; it no longer
        // counts as a contact.
        {
            let mut s = harness.source.lock().unwrap();
            s.tasks[0]["IsDeleted"] = json!(true);
            s.tasks[0]["SystemModstamp"] = json!(at(28, 0));
        }
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        assert_eq!(report.entities.iter().find(|e| e.entity == "activities").unwrap().deleted, 1, "{report:?}");
        assert_eq!(deleted_snapshot(&mut db.conn(), "salesforce"), ["activity 00Txx0000000001: deleted in salesforce"]);
        assert_eq!(activity_snapshot(&mut db.conn(), "salesforce").len(), 3);
    }

    fn a_resumed_run_whose_locator_expired_reads_again_and_ends_the_same(db) {
        let harness = Harness::new(seeded());
        // Stops after the users page and one page of accounts, holding a locator.
        let stopped = harness.sync(&db, &SyncOptions { max_pages: Some(2), ..SyncOptions::default() }).unwrap();
        assert!(!stopped.entities[1].completed, "{stopped:?}");
        let state = tierwise_store::crm::sync_state(&mut db.conn(), "salesforce", "customers").unwrap();
        assert!(state.run_cursor.as_deref().is_some_and(|c| c.contains("/query/01gRO")), "{state:?}");
        // Two days later the locator is gone.
        harness.source.lock().unwrap().locators.clear();
        let resumed = harness.sync(&db, &SyncOptions::default()).unwrap();
        assert!(resumed.entities[1].resumed && resumed.entities[1].completed, "{resumed:?}");
        assert_same_rows(&snapshot(&db), &expected(&harness.source.lock().unwrap()), "same as an uninterrupted run");
    }

    fn a_spent_or_nearly_spent_allocation_stops_cleanly_and_the_next_run_resumes(db) {
        let harness = Harness::new(seeded());
        harness.source.lock().unwrap().faults = vec![None, None, Some(Fault::LimitExceeded)].into();
        let err = harness.sync(&db, &SyncOptions::default()).unwrap_err();
        assert!(matches!(err, CrmError::QuotaExhausted(_)), "{err}");
        let state = tierwise_store::crm::sync_state(&mut db.conn(), "salesforce", "customers").unwrap();
        assert!(state.in_progress && state.run_pages == 1, "{state:?}");
        // Past 80 % of the allocation the connector stops by itself after the page it has.
        harness.source.lock().unwrap().daily_limit = 5;
        let err = harness.sync(&db, &SyncOptions::default()).unwrap_err();
        assert!(matches!(err, CrmError::QuotaExhausted(_)), "{err}");
        let calls = harness.source.lock().unwrap().calls;
        assert_eq!(calls, 3 + 1, "one call past the threshold, none after it");
        harness.source.lock().unwrap().daily_limit = 100_000;
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        assert!(report.entities.iter().all(|e| e.completed), "{report:?}");
        assert_same_rows(&snapshot(&db), &expected(&harness.source.lock().unwrap()), "after resuming");
    }

    fn custom_fields_named_in_the_configuration_are_imported(db) {
        let mut source = seeded();
        for (i, a) in source.accounts.iter_mut().enumerate() {
            a["NPS__c"] = json!(i as f64 - 20.0);
            a["Rating__c"] = if i % 4 == 0 { json!(1 + i % 5) } else { Value::Null };
        }
        source.accounts[5]["NPS__c"] = json!("n/a");
        let harness = Harness::new(source);
        let connector = harness.with_customer_fields();
        let report = harness.runtime.block_on(sync(&db.db, &connector, &SyncOptions::default())).unwrap();
        // The account without a name, the one whose NPS is not a number, the won opportunity
        // without an account.
        assert_eq!(report.rejected(), 3, "{report:?}");
        let rejects = tierwise_store::runs::rejects_of_run(&mut db.conn(), report.entities[1].run.unwrap(), 10).unwrap();
        assert!(rejects.iter().any(|r| r.field.as_deref() == Some("NPS__c") && r.reason.contains("'n/a' is not a number")), "{rejects:?}");
        let s = harness.source.lock().unwrap();
        let accounts_soql = s.soql_seen.iter().find(|q| q.contains("FROM Account")).unwrap();
        assert!(accounts_soql.contains(", Rating__c, NPS__c FROM"), "{accounts_soql}");
        let stored = tierwise_store::queries::find_customer(&mut db.conn(), "salesforce", "001xx0000000000009").unwrap().unwrap();
        assert_eq!(stored.attributes.get("nps"), Some(&-12.0));
        assert_eq!(stored.prospect_rating, Some(4));
        let unrated = tierwise_store::queries::find_customer(&mut db.conn(), "salesforce", "001xx0000000000010").unwrap().unwrap();
        assert_eq!((unrated.prospect_rating, unrated.attributes.get("nps")), (None, Some(&-11.0)));
    }

    fn a_refused_refresh_token_says_what_to_fix_and_shows_no_secret(db) {
        let harness = Harness::new(seeded());
        let connector = harness.connector("5Aep861revoked.0000");
        let err = harness.runtime.block_on(sync(&db.db, &connector, &SyncOptions::default())).unwrap_err();
        assert!(matches!(err, CrmError::Auth { status: 400, .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("invalid_grant") && text.contains("TIERWISE__CRM__SALESFORCE__REFRESH_TOKEN"), "{text}");
        for shown in [text, format!("{err:?}"), format!("{connector:?}")] {
            assert!(!shown.contains("5Aep861revoked.0000") && !shown.contains(CLIENT_SECRET), "{shown}");
        }
    }

    fn records_of_a_configured_invoice_object_are_invoices(db) {
        let harness = Harness::new(seeded());
        let account = |i: u32| format!("001xx{i:013}");
        let invoice = |n: u32, account: Value, status: &str, paid: Value, modified: String| {
            json!({"attributes": {"type": "Invoice__c"}, "Id": format!("a0Bxx{n:013}"), "Account__c": account,
                "Invoice_Date__c": "2024-04-01", "Due_Date__c": if n == 2 { Value::Null } else { json!("2024-05-01") },
                "Amount__c": 1200.5 + f64::from(n), "Paid_Date__c": paid, "Status__c": status,
                "IsDeleted": n == 6, "SystemModstamp": modified})
        };
        harness.source.lock().unwrap().invoices = vec![
            invoice(1, json!(account(1)), "Open", Value::Null, at(6, 1)),
            invoice(2, json!(account(2)), "Paid", json!("2024-05-10"), at(6, 2)),
            // Paid by status alone: dated by its last change.
            invoice(3, json!(account(3)), "Paid", Value::Null, at(7, 3)),
            invoice(4, json!(account(4)), "Draft", Value::Null, at(6, 4)),
            invoice(5, Value::Null, "Open", Value::Null, at(6, 5)),
            invoice(6, json!(account(6)), "Open", Value::Null, at(6, 6)),
        ];
        let settings = SalesforceSettings {
            invoices: InvoiceObject {
                object: "Invoice__c".into(),
                account_field: "Account__c".into(),
                issued_field: "Invoice_Date__c".into(),
                due_field: Some("Due_Date__c".into()),
                amount_field: "Amount__c".into(),
                paid_date_field: Some("Paid_Date__c".into()),
                status_field: Some("Status__c".into()),
                paid_statuses: vec!["Paid".into()],
                skipped_statuses: vec!["Draft".into(), "Cancelled".into()],
            },
            ..harness.settings(REFRESH)
        };
        let connector = Salesforce::new(settings.clone()).unwrap();
        let run = || harness.runtime.block_on(sync(&db.db, &connector, &SyncOptions::default())).unwrap();
        let report = run();
        let invoices = report.entities.iter().find(|e| e.entity == "invoices").unwrap();
        // Six read (queryAll: the deleted one too), three stored, the one without an account
        // rejected, the draft skipped.
        assert_eq!((invoices.records, invoices.written, invoices.rejected), (6, 3, 1), "{report:?}");
        let day = |d: &str| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
        let row = |n: u32, due: &str, paid: Option<&str>| {
            format!("invoice {:?}", (format!("a0Bxx{n:013}"), account(n), None::<String>, day("2024-04-01"), day(due),
                120_050 + i64::from(n) * 100, "CNY".to_owned(), paid.map(day)))
        };
        assert_eq!(invoice_snapshot(&mut db.conn(), "salesforce"), [
            row(1, "2024-05-01", None),
            row(2, "2024-04-01", Some("2024-05-10")),
            row(3, "2024-05-01", Some("2024-05-07")),
        ]);
        let rejects = tierwise_store::runs::rejects_of_run(&mut db.conn(), invoices.run.unwrap(), 10).unwrap();
        assert!(rejects[0].field.as_deref() == Some("Account__c") && rejects[0].raw_record.contains("a0Bxx0000000000005"), "{rejects:?}");
        // The open invoice is deleted: the next run marks it.
        {
            let mut s = harness.source.lock().unwrap();
            s.invoices[0]["IsDeleted"] = json!(true);
            s.invoices[0]["SystemModstamp"] = json!(at(28, 0));
        }
        let report = run();
        assert_eq!(report.entities.iter().find(|e| e.entity == "invoices").unwrap().deleted, 1, "{report:?}");
        assert_eq!(deleted_snapshot(&mut db.conn(), "salesforce"), ["invoice a0Bxx0000000000001: deleted in salesforce"]);
        let soql = harness.source.lock().unwrap().soql_seen.clone();
        assert!(soql.iter().any(|q| q.contains("FROM Invoice__c") && q.contains("Paid_Date__c")), "{soql:?}");
        // An object without a way to tell paid invoices is refused, naming the settings.
        let mut unpaid_forever = settings.clone();
        unpaid_forever.invoices.paid_date_field = None;
        unpaid_forever.invoices.status_field = None;
        let refused = Salesforce::new(unpaid_forever).unwrap_err().to_string();
        assert!(refused.contains("crm.salesforce.invoices.paid_date_field") && refused.contains("paid_statuses"), "{refused}");
    }
}
