//! The HubSpot connector against a local server that behaves like HubSpot's CRM v3 API: bearer
//! token check (401 `INVALID_AUTHENTICATION`), list endpoints with `after` paging and at most 100
//! a page (deals with `associations=companies`), the search endpoint with `GTE`/`EQ`/`GT`
//! filters, sorts, at most 200 a page and HTTP 400 once `after` reaches the result cap, search
//! results without associations, the v4 associations batch read, 429 with `policyName` and
//! `Retry-After`, a `DAILY` 429, 5xx and a malformed page. Every test runs on SQLite and
//! PostgreSQL and compares the store with the source.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test"
)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use secrecy::SecretString;
use serde_json::{Value, json};
use tierwise_import::crm::hubspot::{Hubspot, HubspotSettings};
use tierwise_import::crm::{CrmError, SyncOptions, SyncReport, sync};
use tierwise_store::backend_tests;
use tierwise_store::testing::{
    TestDb, activity_snapshot, assert_same_rows, deleted_snapshot, invoice_snapshot,
    source_snapshot,
};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

mod support;
use support::{CustomerRow, OrderRow, OwnerRow, expected_rows, fast_http, serve};

const TOKEN: &str = "pat-na1-11111111-2222-3333-4444-555555555555";
/// The search cap of this fake (HubSpot's is 10,000), and the connector's setting.
const CAP: usize = 60;
const SEARCH_PAGE: usize = 20;
/// Longer than the connector's timeout in these tests (0.5 s).
const SLOW: std::time::Duration = std::time::Duration::from_millis(1500);

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The answer comes later than the connector's timeout.
    Slow,
    Throttled,
    Daily,
    ServerError,
    Malformed,
}

#[derive(Debug, Default)]
struct Source {
    owners: Vec<Value>,
    companies: Vec<Value>,
    deals: Vec<Value>,
    calls: Vec<Value>,
    meetings: Vec<Value>,
    invoices: Vec<Value>,
    faults: VecDeque<Option<Fault>>,
    /// Every search body, and every list query.
    searches: Vec<Value>,
    lists: Vec<BTreeMap<String, String>>,
}

#[derive(Clone)]
struct FakeHubspot(Arc<Mutex<Source>>);

fn error(status: u16, category: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"status": "error", "message": message,
        "correlationId": "43b7-fake", "category": category}))
}

fn millis(iso: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(iso)
        .unwrap()
        .timestamp_millis()
}

/// A record as the API returns it: only the requested properties (plus hs_object_id).
fn shaped(record: &Value, properties: &[String]) -> Value {
    let mut props = serde_json::Map::new();
    for p in properties
        .iter()
        .map(String::as_str)
        .chain(["hs_object_id"])
    {
        if let Some(v) = record["properties"].get(p) {
            props.insert(p.to_owned(), v.clone());
        }
    }
    let mut out = json!({"id": record["id"], "properties": props, "archived": archived(record),
        "createdAt": record["properties"]["createdate"], "updatedAt": record["properties"]["hs_lastmodifieddate"]});
    if archived(record) {
        out["archivedAt"] = record["archivedAt"].clone();
    }
    out
}

/// Archived (deleted or merged away): only `archived=true` lists show it, searches never do.
fn archived(record: &Value) -> bool {
    record["archived"].as_bool() == Some(true)
}

impl Respond for FakeHubspot {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut s = self.0.lock().unwrap();
        let path = request.url.path().to_owned();
        let authorised = request
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"));
        if !authorised {
            return error(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found.",
            );
        }
        let query: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
        if path == "/crm/v3/owners" {
            return ResponseTemplate::new(200).set_body_json(json!({"results": s.owners}));
        }
        if let Some(from_kind) = path
            .strip_prefix("/crm/v4/associations/")
            .and_then(|p| p.strip_suffix("/companies/batch/read"))
        {
            let from = match from_kind {
                "calls" => &s.calls,
                "meetings" => &s.meetings,
                "invoices" => &s.invoices,
                _ => &s.deals,
            };
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let results: Vec<Value> = body["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|input| {
                    let deal = from.iter().find(|d| d["id"] == input["id"])?;
                    let company = deal["company"].as_str()?;
                    Some(json!({"from": {"id": deal["id"]}, "to": [{"toObjectId": company.parse::<u64>().unwrap(),
                        "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": 5, "label": null}]}]}))
                })
                .collect();
            return ResponseTemplate::new(200)
                .set_body_json(json!({"status": "COMPLETE", "results": results}));
        }
        let mut delay = std::time::Duration::ZERO;
        match s.faults.pop_front().flatten() {
            Some(Fault::Slow) => delay = SLOW,
            Some(Fault::Throttled) => {
                return error(429, "RATE_LIMITS", "You have reached your ten_secondly_rolling limit.")
                    .insert_header("Retry-After", "0")
                    .set_body_json(json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                        "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"}));
            }
            Some(Fault::Daily) => {
                return ResponseTemplate::new(429).set_body_json(json!({"status": "error",
                    "message": "You have reached your daily limit.", "errorType": "RATE_LIMIT", "policyName": "DAILY"}));
            }
            Some(Fault::ServerError) => return error(502, "INTERNAL_ERROR", "bad gateway"),
            Some(Fault::Malformed) => {
                return ResponseTemplate::new(200).set_body_string("{\"results\": [{\"id\": \"1");
            }
            None => {}
        }
        let kind = path.trim_start_matches("/crm/v3/objects/");
        let (kind, search) = match kind.strip_suffix("/search") {
            Some(kind) => (kind, true),
            None => (kind, false),
        };
        if !search {
            s.lists.push(query.clone());
            let records = match kind {
                "deals" => &s.deals,
                "calls" => &s.calls,
                "meetings" => &s.meetings,
                "invoices" => &s.invoices,
                _ => &s.companies,
            };
            let limit: usize = query["limit"].parse().unwrap();
            if limit > 100 {
                return error(400, "VALIDATION_ERROR", "limit must be at most 100");
            }
            let properties: Vec<String> =
                query["properties"].split(',').map(str::to_owned).collect();
            let want_archived = query.get("archived").map(String::as_str) == Some("true");
            let mut sorted: Vec<&Value> = records
                .iter()
                .filter(|r| archived(r) == want_archived)
                .collect();
            sorted.sort_by_key(|r| r["id"].as_str().unwrap().parse::<u64>().unwrap());
            let start = query.get("after").map_or(0, |a| {
                sorted
                    .iter()
                    .position(|r| r["id"].as_str().unwrap() == a)
                    .unwrap()
            });
            let page: Vec<Value> = sorted[start..]
                .iter()
                .take(limit)
                .map(|r| {
                    let mut out = shaped(r, &properties);
                    if query.get("associations").map(String::as_str) == Some("companies") {
                        let to: Vec<Value> = r["company"]
                            .as_str()
                            .into_iter()
                            .map(|c| json!({"id": c, "type": "deal_to_company"}))
                            .collect();
                        out["associations"] = json!({"companies": {"results": to}});
                    }
                    out
                })
                .collect();
            let mut body = json!({"results": page});
            if let Some(next) = sorted.get(start + limit) {
                body["paging"] = json!({"next": {"after": next["id"], "link": "ignored"}});
            }
            return ResponseTemplate::new(200)
                .set_body_json(body)
                .set_delay(delay);
        }
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        s.searches.push(body.clone());
        let records = match kind {
            "deals" => &s.deals,
            "calls" => &s.calls,
            "meetings" => &s.meetings,
            "invoices" => &s.invoices,
            _ => &s.companies,
        };
        let limit = body["limit"].as_u64().unwrap() as usize;
        let after: usize = body
            .get("after")
            .map_or(0, |a| a.as_str().unwrap().parse().unwrap());
        if limit > 200 {
            return error(400, "VALIDATION_ERROR", "limit must be at most 200");
        }
        if after >= CAP {
            return error(400, "VALIDATION_ERROR", "paging beyond the result cap");
        }
        let filters = body["filterGroups"][0]["filters"]
            .as_array()
            .unwrap()
            .clone();
        let mut matching: Vec<&Value> = records
            .iter()
            .filter(|r| !archived(r))
            .filter(|r| {
                filters.iter().all(|f| {
                    let value: i64 = f["value"].as_str().unwrap().parse().unwrap();
                    let actual = match f["propertyName"].as_str().unwrap() {
                        "hs_lastmodifieddate" => {
                            millis(r["properties"]["hs_lastmodifieddate"].as_str().unwrap())
                        }
                        "hs_object_id" => r["id"].as_str().unwrap().parse().unwrap(),
                        other => panic!("unexpected filter on {other}"),
                    };
                    match f["operator"].as_str().unwrap() {
                        "GTE" => actual >= value,
                        "EQ" => actual == value,
                        "GT" => actual > value,
                        other => panic!("unexpected operator {other}"),
                    }
                })
            })
            .collect();
        let sort = body["sorts"][0]["propertyName"]
            .as_str()
            .unwrap()
            .to_owned();
        matching.sort_by_key(|r| match sort.as_str() {
            "hs_lastmodifieddate" => {
                millis(r["properties"]["hs_lastmodifieddate"].as_str().unwrap())
            }
            _ => r["id"].as_str().unwrap().parse().unwrap(),
        });
        let properties: Vec<String> = body["properties"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        let page: Vec<Value> = matching
            .iter()
            .skip(after)
            .take(limit)
            .map(|r| shaped(r, &properties))
            .collect();
        let mut answer = json!({"total": matching.len(), "results": page});
        if after + limit < matching.len() {
            answer["paging"] = json!({"next": {"after": (after + limit).to_string()}});
        }
        ResponseTemplate::new(200)
            .set_body_json(answer)
            .set_delay(delay)
    }
}

/// `2024-05-DD HH:MM:00.000Z`, with milliseconds.
fn at(day: u32, minute: u32) -> String {
    format!(
        "2024-05-{day:02}T{:02}:{:02}:00.{:03}Z",
        minute / 60,
        minute % 60,
        minute % 1000
    )
}

fn owner_id(n: u32) -> String {
    format!("4162977{n}")
}

/// 3 owners; 450 companies (120 sharing one change time); 600 deals, two in three won; 240
/// invoices: open, paid, drafts and voided, some in another currency or without a due date. One
/// company has no name, one won deal no company and one open invoice no company: all three must
/// be rejected.
fn seeded() -> Source {
    let mut s = Source::default();
    for (n, email, first, last) in [
        (1, "li.wei@example.com", "Wei", "Li"),
        (2, "wang.fang@example.com", "Fang", "Wang"),
        (3, "amy@example.com", "Amy", ""),
    ] {
        s.owners.push(json!({"id": owner_id(n), "email": email, "firstName": first, "lastName": last,
            "userId": 9_000_000 + n, "createdAt": at(1, 0), "updatedAt": at(1, n), "archived": false}));
    }
    for i in 1..=450_u32 {
        let name = if i == 77 {
            Value::Null
        } else {
            json!(format!("Acme {i} GmbH"))
        };
        let modified = if (150..270).contains(&i) {
            at(3, 0)
        } else {
            at(1 + i % 20, i % 600)
        };
        s.companies.push(json!({"id": (18_342_000 + i).to_string(), "properties": {
            "name": name, "hubspot_owner_id": owner_id(1 + i % 3), "createdate": "2023-03-01T08:00:00.000Z",
            "hs_lastmodifieddate": modified, "hs_object_id": (18_342_000 + i).to_string()}}));
    }
    for i in 1..=600_u32 {
        let company = if i == 301 {
            Value::Null
        } else {
            json!((18_342_000 + 1 + i % 450).to_string())
        };
        let stage = if i % 3 == 0 {
            "appointmentscheduled"
        } else {
            "closedwon"
        };
        s.deals.push(
            json!({"id": (9_100_000 + i).to_string(), "company": company, "properties": {
            "dealname": format!("Deal {i}"), "amount": format!("{}.5", 1000 + i),
            "closedate": format!("2024-04-{:02}T00:00:00.000Z", 1 + i % 28), "dealstage": stage,
            "hs_lastmodifieddate": at(2 + i % 9, i % 500), "cost__c": (200 + i).to_string(),
            "hs_object_id": (9_100_000 + i).to_string()}}),
        );
    }
    for i in 1..=240_u32 {
        let company = if i == 121 {
            Value::Null
        } else {
            json!(
                (18_342_000
                    + match 1 + (i * 7) % 450 {
                        77 => 78,
                        n => n,
                    })
                .to_string()
            )
        };
        let status = match i % 6 {
            0 | 3 => "paid",
            1 | 4 => "open",
            2 => "draft",
            _ => "voided",
        };
        let due = if i % 10 == 4 {
            Value::Null
        } else {
            json!(format!("2024-05-{:02}", 1 + i % 28))
        };
        s.invoices.push(json!({"id": (7_300_000 + i).to_string(), "company": company, "properties": {
            "hs_invoice_status": status, "hs_invoice_date": format!("2024-04-{:02}T00:00:00.000Z", 1 + i % 28),
            "hs_due_date": due, "hs_amount_billed": format!("{}.75", 300 + i),
            "hs_currency": if i % 5 == 0 { "USD" } else { "CNY" },
            "hs_lastmodifieddate": at(2 + i % 20, i % 600), "hs_object_id": (7_300_000 + i).to_string()}}));
    }
    s
}

/// The invoices the store must hold: open and paid ones with a company; due on issue without a
/// due date; paid on the day of the last change.
fn expected_invoices(s: &Source) -> Vec<String> {
    let day = |t: &str| chrono::NaiveDate::parse_from_str(&t[..10], "%Y-%m-%d").unwrap();
    let mut rows: Vec<String> = s
        .invoices
        .iter()
        .filter(|i| {
            matches!(
                i["properties"]["hs_invoice_status"].as_str(),
                Some("open" | "paid")
            ) && !i["company"].is_null()
                && !archived(i)
        })
        .map(|i| {
            let p = &i["properties"];
            let issued = day(p["hs_invoice_date"].as_str().unwrap());
            let due = p["hs_due_date"].as_str().map_or(issued, day);
            let paid = (p["hs_invoice_status"] == "paid")
                .then(|| day(p["hs_lastmodifieddate"].as_str().unwrap()));
            let amount: f64 = p["hs_amount_billed"].as_str().unwrap().parse().unwrap();
            format!(
                "invoice {:?}",
                (
                    i["id"].as_str().unwrap().to_owned(),
                    i["company"].as_str().unwrap().to_owned(),
                    None::<String>,
                    issued,
                    due,
                    (amount * 100.0).round() as i64,
                    p["hs_currency"].as_str().unwrap().to_owned(),
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
        .owners
        .iter()
        .map(|o| {
            let name = [
                o["firstName"].as_str().unwrap(),
                o["lastName"].as_str().unwrap(),
            ]
            .iter()
            .filter(|p| !p.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
            // HubSpot owners carry no locale: the import's default (SyncOptions::default).
            (
                o["email"].as_str().unwrap().to_owned(),
                name,
                "en".to_owned(),
                Some(o["id"].as_str().unwrap().to_owned()),
            )
        })
        .collect();
    let email_of = |id: &Value| {
        s.owners
            .iter()
            .find(|o| o["id"] == *id)
            .map(|o| o["email"].as_str().unwrap().to_owned())
    };
    let mut customers: BTreeMap<String, CustomerRow> = BTreeMap::new();
    for c in s
        .companies
        .iter()
        .filter(|c| !c["properties"]["name"].is_null() && !archived(c))
    {
        let id = c["id"].as_str().unwrap().to_owned();
        customers.insert(
            id.clone(),
            (
                id,
                c["properties"]["name"].as_str().unwrap().to_owned(),
                email_of(&c["properties"]["hubspot_owner_id"]),
                chrono::NaiveDate::from_ymd_opt(2023, 3, 1),
            ),
        );
    }
    let mut orders: BTreeMap<String, OrderRow> = BTreeMap::new();
    for d in s.deals.iter().filter(|d| {
        d["properties"]["dealstage"] == "closedwon" && !d["company"].is_null() && !archived(d)
    }) {
        let id = d["id"].as_str().unwrap().to_owned();
        let p = &d["properties"];
        let amount: f64 = p["amount"].as_str().unwrap().parse().unwrap();
        orders.insert(
            id.clone(),
            (
                id,
                d["company"].as_str().unwrap().to_owned(),
                chrono::NaiveDate::parse_from_str(
                    &p["closedate"].as_str().unwrap()[..10],
                    "%Y-%m-%d",
                )
                .unwrap(),
                (amount * 100.0).round() as i64,
                Some(p["cost__c"].as_str().unwrap().parse::<i64>().unwrap() * 100),
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
        let (runtime, server) = serve(FakeHubspot(source.clone()));
        Self {
            runtime,
            server,
            source,
        }
    }

    fn connector(&self, token: &str) -> Hubspot {
        Hubspot::new(self.settings(token)).unwrap()
    }

    fn settings(&self, token: &str) -> HubspotSettings {
        HubspotSettings {
            enabled: true,
            base_url: self.server.uri(),
            access_token: SecretString::from(token.to_owned()),
            search_page_size: SEARCH_PAGE as u32,
            search_cap: CAP as u32,
            cost_property: Some("cost__c".into()),
            http: fast_http(0),
            ..HubspotSettings::default()
        }
    }

    fn sync_with(&self, db: &TestDb, options: &SyncOptions) -> Result<SyncReport, CrmError> {
        let connector = self.connector(TOKEN);
        self.runtime.block_on(sync(&db.db, &connector, options))
    }

    fn sync(&self, db: &TestDb) -> Result<SyncReport, CrmError> {
        self.sync_with(db, &SyncOptions::default())
    }
}

fn snapshot(db: &TestDb) -> Vec<String> {
    source_snapshot(&mut db.conn(), "hubspot")
}

backend_tests! {
    fn a_full_run_through_the_lists_with_faults_imports_the_source(db) {
        let harness = Harness::new(seeded());
        harness.source.lock().unwrap().faults =
            vec![None, Some(Fault::Throttled), Some(Fault::ServerError), Some(Fault::Malformed), Some(Fault::Slow)].into();
        let report = harness.sync(&db).unwrap();
        assert!(report.entities.iter().all(|e| e.completed), "{report:?}");
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "the store equals the source");
        assert_same_rows(&invoice_snapshot(&mut db.conn(), "hubspot"), &expected_invoices(&s), "invoices");
        assert_eq!(report.rejected(), 3, "{report:?}");
        let invoices = report.entities.iter().find(|e| e.entity == "invoices").unwrap();
        assert_eq!((invoices.pages, invoices.records), (3, 240));
        // 450 companies at 100 a page; no search in a full run; deals with their companies.
        assert_eq!((report.entities[1].pages, report.entities[1].records), (5, 450));
        assert!(s.searches.is_empty(), "{:?}", s.searches);
        assert!(s.lists.iter().any(|q| q.get("associations").map(String::as_str) == Some("companies")));
    }

    fn an_incremental_run_searches_past_the_cap_and_through_a_shared_change_time(db) {
        let harness = Harness::new(seeded());
        harness.sync(&db).unwrap();
        {
            let mut s = harness.source.lock().unwrap();
            // A month-end batch update touches 100 companies at the same millisecond: more than
            // one search (capped at 60) can return.
            for c in s.companies.iter_mut().skip(100).take(100) {
                c["properties"]["hs_lastmodifieddate"] = json!("2024-05-31T23:59:59.999Z");
                let renamed = format!("{} (renamed)", c["properties"]["name"].as_str().unwrap_or("?"));
                c["properties"]["name"] = json!(renamed);
            }
            let deal = s.deals.iter_mut().find(|d| d["properties"]["dealstage"] != "closedwon").unwrap();
            deal["properties"]["dealstage"] = json!("closedwon");
            deal["properties"]["hs_lastmodifieddate"] = json!(at(25, 11));
            // An invoice paid since: found by search, its company read through the associations.
            let open = s.invoices.iter_mut().find(|i| i["properties"]["hs_invoice_status"] == "open" && !i["company"].is_null()).unwrap();
            open["properties"]["hs_invoice_status"] = json!("paid");
            open["properties"]["hs_lastmodifieddate"] = json!(at(26, 30));
            s.searches.clear();
        }
        let report = harness.sync(&db).unwrap();
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "after the incremental run");
        assert_same_rows(&invoice_snapshot(&mut db.conn(), "hubspot"), &expected_invoices(&s), "invoices after the incremental run");
        // It walked the shared time by id, never paged past the cap, and read no list.
        let filters: Vec<String> = s.searches.iter().map(|b| b["filterGroups"][0]["filters"].to_string()).collect();
        assert!(filters.iter().any(|f| f.contains("\"EQ\"") && f.contains("hs_object_id")), "{filters:?}");
        assert!(s.searches.iter().all(|b| b.get("after").is_none_or(|a| a.as_str().unwrap().parse::<usize>().unwrap() < CAP)));
        assert!(report.entities[1].records >= 100 && report.entities[1].records < 250, "{report:?}");
        assert!(report.entities[2].records >= 1 && report.entities[2].records < 10, "{report:?}");
    }

    fn archived_companies_deals_invoices_calls_and_meetings_are_marked_deleted_and_kept(db) {
        let harness = Harness::new(seeded());
        {
            // A completed call and two meetings that took place, on companies 1 to 3.
            let mut s = harness.source.lock().unwrap();
            s.calls.push(json!({"id": "7700001", "company": "18342001", "properties": {"hs_timestamp": "2024-05-02T09:30:00.000Z",
                "hs_call_status": "COMPLETED", "hs_lastmodifieddate": at(4, 1), "hs_object_id": "7700001"}}));
            for n in [1, 2] {
                s.meetings.push(json!({"id": format!("780000{n}"), "company": format!("1834200{}", n + 1), "properties": {
                    "hs_timestamp": "2024-05-03T09:30:00.000Z", "hs_meeting_outcome": "COMPLETED",
                    "hs_lastmodifieddate": at(4, 2), "hs_object_id": format!("780000{n}")}}));
            }
        }
        harness.sync(&db).unwrap();
        assert_eq!(activity_snapshot(&mut db.conn(), "hubspot").len(), 3);
        assert!(deleted_snapshot(&mut db.conn(), "hubspot").is_empty());
        {
            // Company 5 merged into another, deal 1 deleted, deal 3 (never won) deleted too.
            let mut s = harness.source.lock().unwrap();
            let archive = |r: &mut Value| {
                r["archived"] = json!(true);
                r["archivedAt"] = json!("2024-05-28T10:00:00.000Z");
            };
            for r in s.companies.iter_mut().filter(|c| c["id"] == "18342005") {
                archive(r);
            }
            for r in s.deals.iter_mut().filter(|d| d["id"] == "9100001" || d["id"] == "9100003") {
                archive(r);
            }
            for r in s.invoices.iter_mut().filter(|i| i["id"] == "7300001") {
                archive(r);
            }
            // The call and the first meeting are deleted.
            archive(&mut s.calls[0]);
            archive(&mut s.meetings[0]);
        }
        let report = harness.sync(&db).unwrap();
        let marked: Vec<(&str, u64, u64)> = report.entities.iter()
            .filter(|e| e.entity.starts_with("deleted_"))
            .map(|e| (e.entity, e.records, e.deleted))
            .collect();
        assert_eq!(marked, [("deleted_customers", 1, 1), ("deleted_orders", 2, 1), ("deleted_invoices", 1, 1),
            ("deleted_activities", 2, 2)], "{report:?}");
        assert_eq!(
            deleted_snapshot(&mut db.conn(), "hubspot"),
            [
                "customer 18342005: archived in hubspot (deleted or merged)",
                "order 9100001: archived in hubspot (deleted or merged)",
                "invoice 7300001: archived in hubspot (deleted or merged)",
                "activity 7700001: archived in hubspot (deleted)",
                "activity 7800001: archived in hubspot (deleted)",
            ]
        );
        // The meeting left is the only contact that counts.
        let live = activity_snapshot(&mut db.conn(), "hubspot");
        assert!(live.len() == 1 && live[0].contains("7800002"), "{live:?}");
        assert_same_rows(&invoice_snapshot(&mut db.conn(), "hubspot"), &expected_invoices(&harness.source.lock().unwrap()), "live invoices");
        // The live rows are the source's, less the merged company (its deals stay: HubSpot
        // moves them to the surviving company, which an incremental run then reads).
        let live: Vec<String> = expected(&harness.source.lock().unwrap())
            .into_iter()
            .filter(|r| !r.starts_with("customer (\"18342005\""))
            .collect();
        assert_same_rows(&snapshot(&db), &live, "live rows");
        // Archived records are listed again every run; nothing is marked twice.
        let again = harness.sync(&db).unwrap();
        assert!(again.entities.iter().all(|e| e.deleted == 0), "{again:?}");
        let lists = &harness.source.lock().unwrap().lists;
        assert!(lists.iter().any(|q| q.get("archived").map(String::as_str) == Some("true")));
    }

    fn completed_calls_on_a_company_are_contacts_in_full_and_incremental_runs(db) {
        let harness = Harness::new(seeded());
        let call = |n: u32, company: Option<u32>, status: &str, at: &str, modified: String| {
            json!({"id": (7_700_000 + n).to_string(), "company": company.map(|c| (18_342_000 + c).to_string()),
                "properties": {"hs_timestamp": at, "hs_call_status": status, "hs_call_title": format!("Call {n}"),
                "hubspot_owner_id": owner_id(2), "hs_lastmodifieddate": modified, "hs_object_id": (7_700_000 + n).to_string()}})
        };
        harness.source.lock().unwrap().calls = vec![
            call(1, Some(1), "COMPLETED", "2024-05-02T09:30:00.000Z", at(4, 1)),
            call(2, Some(2), "NO_ANSWER", "2024-05-02T10:00:00.000Z", at(4, 2)),
            call(3, None, "COMPLETED", "2024-05-02T11:00:00.000Z", at(4, 3)),
            call(4, Some(4), "COMPLETED", "1714644000000", at(4, 4)),
        ];
        let report = harness.sync(&db).unwrap();
        let calls = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        assert_eq!((calls.records, calls.written, calls.rejected), (4, 2, 0), "{report:?}");
        let row = |n: u32, company: u32, at: &str| {
            let at = chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M").unwrap();
            format!("activity {:?}", ((7_700_000 + n).to_string(), (18_342_000 + company).to_string(),
                Some("wang.fang@example.com".to_owned()), "call".to_owned(), at, Some(format!("Call {n}"))))
        };
        // Epoch milliseconds are read too (1714644000000 = 2024-05-02 10:00 UTC).
        assert_eq!(activity_snapshot(&mut db.conn(), "hubspot"), [row(1, 1, "2024-05-02 09:30"), row(4, 4, "2024-05-02 10:00")]);
        // A call completed since: the incremental run searches calls and reads their companies
        // through the associations endpoint.
        harness.source.lock().unwrap().calls.push(call(5, Some(5), "COMPLETED", "2024-05-27T08:00:00.000Z", at(27, 0)));
        let report = harness.sync(&db).unwrap();
        let calls = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        assert_eq!(calls.written, 1, "{report:?}");
        let stored = activity_snapshot(&mut db.conn(), "hubspot");
        assert_eq!(stored.last().unwrap(), &row(5, 5, "2024-05-27 08:00"));
        assert!(harness.source.lock().unwrap().searches.iter().any(|b| b["properties"].as_array().unwrap().iter().any(|p| p == "hs_call_status")));
    }

    fn a_daily_limit_stops_cleanly_and_the_next_run_resumes(db) {
        let harness = Harness::new(seeded());
        harness.source.lock().unwrap().faults = vec![None, None, Some(Fault::Daily)].into();
        let err = harness.sync(&db).unwrap_err();
        assert!(matches!(err, CrmError::QuotaExhausted(_)), "{err}");
        let state = tierwise_store::crm::sync_state(&mut db.conn(), "hubspot", "customers").unwrap();
        assert!(state.in_progress && state.run_pages == 2, "{state:?}");
        let report = harness.sync(&db).unwrap();
        assert!(report.entities[1].resumed, "{report:?}");
        assert_eq!(report.entities[1].records, 250, "only the companies after the stored position");
        assert_same_rows(&snapshot(&db), &expected(&harness.source.lock().unwrap()), "after resuming");
    }

    fn a_wrong_token_says_what_to_fix_and_never_shows_the_token(db) {
        let harness = Harness::new(seeded());
        let connector = harness.connector("pat-na1-revoked-0000");
        let err = harness.runtime.block_on(sync(&db.db, &connector, &SyncOptions::default())).unwrap_err();
        assert!(matches!(err, CrmError::Auth { status: 401, .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("TIERWISE__CRM__HUBSPOT__ACCESS_TOKEN"), "{text}");
        for shown in [text, format!("{err:?}"), format!("{connector:?}")] {
            assert!(!shown.contains("pat-na1-revoked-0000"), "{shown}");
        }
    }

    fn meetings_that_took_place_are_contacts_after_the_calls(db) {
        let harness = Harness::new(seeded());
        // 130 meetings (two list pages): completed, no-shows and scheduled ones; every 20th
        // without a company; every 10th (from the 3rd) with its start time only.
        let meeting = |n: u32, modified: String| {
            let outcome = ["COMPLETED", "NO_SHOW", "SCHEDULED", "COMPLETED"][n as usize % 4];
            let start = format!("2024-05-{:02}T{:02}:00:00.000Z", 1 + n % 20, 8 + n % 9);
            let mut properties = json!({"hs_meeting_start_time": start, "hs_meeting_outcome": outcome,
                "hs_meeting_title": format!("Meeting {n}"), "hubspot_owner_id": owner_id(1 + n % 3),
                "hs_lastmodifieddate": modified, "hs_object_id": (7_800_000 + n).to_string()});
            if n % 10 != 3 {
                properties["hs_timestamp"] = json!(start);
            }
            let company = (!n.is_multiple_of(20)).then(|| (18_342_000 + 1 + n % 70).to_string());
            json!({"id": (7_800_000 + n).to_string(), "company": company, "properties": properties})
        };
        harness.source.lock().unwrap().meetings = (1..=130).map(|n| meeting(n, at(4, n))).collect();
        let expected = |s: &Source| -> Vec<String> {
            let mut rows: Vec<String> = s.meetings.iter().filter(|m| {
                m["properties"]["hs_meeting_outcome"] == "COMPLETED" && !m["company"].is_null()
            }).map(|m| {
                let p = &m["properties"];
                let at = chrono::DateTime::parse_from_rfc3339(p["hs_meeting_start_time"].as_str().unwrap()).unwrap().naive_utc();
                let owner = s.owners.iter().find(|o| o["id"] == p["hubspot_owner_id"]).map(|o| o["email"].as_str().unwrap().to_owned());
                format!("activity {:?}", (m["id"].as_str().unwrap().to_owned(), m["company"].as_str().unwrap().to_owned(),
                    owner, "meeting".to_owned(), at, p["hs_meeting_title"].as_str().map(str::to_owned)))
            }).collect();
            rows.sort();
            rows
        };
        let report = harness.sync(&db).unwrap();
        let activities = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        // One (empty) page of calls, then two of meetings.
        assert_eq!((activities.pages, activities.records, activities.rejected), (3, 130, 0), "{report:?}");
        let pages_to_first_meetings_page: u64 =
            report.entities.iter().take_while(|e| e.entity != "activities").map(|e| e.pages).sum::<u64>() + 2;
        let want = expected(&harness.source.lock().unwrap());
        assert!(want.len() > 50, "{}", want.len());
        assert_same_rows(&activity_snapshot(&mut db.conn(), "hubspot"), &want, "meetings");
        // A meeting held since: the incremental run searches the calls, then the meetings.
        harness.source.lock().unwrap().meetings.push(meeting(204, at(27, 0)));
        let report = harness.sync(&db).unwrap();
        let activities = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        assert_eq!(activities.written, 1, "{report:?}");
        assert_same_rows(&activity_snapshot(&mut db.conn(), "hubspot"), &expected(&harness.source.lock().unwrap()), "meetings after the incremental run");
        {
            let searches = &harness.source.lock().unwrap().searches;
            assert!(
                searches.iter().any(|b| b["properties"].as_array().unwrap().iter().any(|p| p == "hs_meeting_outcome")),
                "meetings searched"
            );
        }
        // A run that dies after the first page of meetings resumes among the meetings and ends
        // with the same contacts.
        let fresh = TestDb::new(db.backend());
        let stop_at = pages_to_first_meetings_page;
        let stopped = harness.sync_with(&fresh, &SyncOptions { max_pages: Some(stop_at), ..SyncOptions::default() }).unwrap();
        assert!(!stopped.entities.last().unwrap().completed, "{stopped:?}");
        let state = tierwise_store::crm::sync_state(&mut fresh.conn(), "hubspot", "activities").unwrap();
        assert!(state.in_progress && state.run_cursor.as_deref().is_some_and(|c| c.starts_with("meetings:list:")), "{state:?}");
        let resumed = harness.sync_with(&fresh, &SyncOptions::default()).unwrap();
        let activities = resumed.entities.iter().find(|e| e.entity == "activities").unwrap();
        assert!(activities.resumed && activities.completed && activities.pages == 1, "{resumed:?}");
        assert_same_rows(&activity_snapshot(&mut fresh.conn(), "hubspot"), &expected(&harness.source.lock().unwrap()), "meetings after resuming");
        // Teams logging visits as meetings can count them as visits; other kinds are refused.
        let visits = Hubspot::new(HubspotSettings { meeting_kind: "visit".into(), ..harness.settings(TOKEN) }).unwrap();
        harness.runtime.block_on(sync(&db.db, &visits, &SyncOptions { full: true, ..SyncOptions::default() })).unwrap();
        assert!(activity_snapshot(&mut db.conn(), "hubspot").iter().all(|r| r.contains("\"visit\"")));
        let refused = Hubspot::new(HubspotSettings { meeting_kind: "lunch".into(), ..harness.settings(TOKEN) }).unwrap_err();
        assert!(refused.to_string().contains("crm.hubspot.meeting_kind"), "{refused}");
    }
}
