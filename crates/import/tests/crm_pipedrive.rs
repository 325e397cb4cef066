//! The Pipedrive connector against a local server that behaves like Pipedrive's API: token
//! check, cursor paging ordered by id, `updated_since`, `status=won`, rate-limit headers, and
//! faults on demand (429 with or without `Retry-After`, 5xx, a body cut short, an answer slower
//! than the timeout, a spent daily budget, 403 after throttling). Every test runs on SQLite and
//! PostgreSQL and compares the store with the source record by record.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test"
)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use tierwise_import::crm::http::HttpSettings;
use tierwise_import::crm::pipedrive::{Pipedrive, PipedriveSettings};
use tierwise_import::crm::{CrmError, CustomerFields, SyncOptions, SyncReport, sync};
use tierwise_store::backend_tests;
use tierwise_store::testing::{
    TestDb, activity_snapshot, assert_same_rows, deleted_snapshot, source_snapshot,
};
use wiremock::{MockServer, Request, Respond, ResponseTemplate};

mod support;
use support::{CustomerRow, OrderRow, OwnerRow, expected_rows, owner_row, serve};

const TOKEN: &str = "pd-test-token-5f0c2a9e";

/// A fault the server applies to one request.
#[derive(Debug, Clone)]
enum Fault {
    /// 429, with `Retry-After` seconds or only `x-ratelimit-reset`.
    Throttle { retry_after: Option<f64> },
    /// 503.
    Unavailable,
    /// 200 with half a JSON body.
    CutShort,
    /// The right answer, later than the client waits.
    Slow(Duration),
    /// 429 with the daily token budget at 0.
    DailyBudgetSpent,
    /// 403, as Pipedrive answers clients that keep calling through 429s.
    Blocked,
}

/// What the server holds and does.
#[derive(Debug, Default)]
struct Source {
    users: Vec<Value>,
    organizations: BTreeMap<i64, Value>,
    deals: BTreeMap<i64, Value>,
    activities: BTreeMap<i64, Value>,
    /// Faults for the coming list requests (organizations and deals), in order; `None` = serve.
    faults: VecDeque<Option<Fault>>,
    /// `updated_since` of every list request, as sent.
    since_seen: Vec<Option<String>>,
    /// `updated_since` of every request for deleted deals, as sent.
    deleted_since_seen: Vec<Option<String>>,
    /// Records served by list requests.
    served: u64,
    /// Every list answer takes this long (to stop a run mid-way by dropping it).
    delay: Option<Duration>,
}

#[derive(Clone)]
struct FakePipedrive(Arc<Mutex<Source>>);

fn envelope(data: Vec<Value>, next: Option<String>) -> Value {
    json!({"success": true, "data": data, "additional_data": {"next_cursor": next}})
}

impl Respond for FakePipedrive {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let authorised = request
            .headers
            .get("x-api-token")
            .is_some_and(|t| t.to_str().ok() == Some(TOKEN));
        if !authorised {
            return ResponseTemplate::new(401).set_body_json(json!({
                "success": false, "error": "Unauthorized",
                "error_info": "Please check developers.pipedrive.com"}));
        }
        let mut source = self.0.lock().unwrap();
        let path = request.url.path().to_owned();
        if path == "/v1/users" {
            return ResponseTemplate::new(200)
                .set_body_json(json!({"success": true, "data": source.users}));
        }
        let query: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
        if query.get("status").map(String::as_str) == Some("deleted") {
            source
                .deleted_since_seen
                .push(query.get("updated_since").cloned());
        } else {
            source.since_seen.push(query.get("updated_since").cloned());
        }
        let fault = source.faults.pop_front().flatten();
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100);
        let after: i64 = query
            .get("cursor")
            .and_then(|c| c.strip_prefix("id:")?.parse().ok())
            .unwrap_or(0);
        let since = query.get("updated_since").cloned();
        let table = match path.as_str() {
            "/api/v2/deals" => &source.deals,
            "/api/v2/activities" => &source.activities,
            _ => &source.organizations,
        };
        let matching: Vec<Value> = table
            .range(after + 1..)
            .map(|(_, r)| r)
            .filter(|r| {
                since
                    .as_deref()
                    .is_none_or(|s| r["update_time"].as_str().unwrap_or("") >= s)
            })
            .filter(|r| {
                query
                    .get("status")
                    .is_none_or(|s| r["status"].as_str() == Some(s.as_str()))
            })
            .take(limit + 1)
            .cloned()
            .collect();
        let more = matching.len() > limit;
        let page: Vec<Value> = matching.into_iter().take(limit).collect();
        let next = more.then(|| format!("id:{}", page.last().unwrap()["id"]));
        let body = envelope(page.clone(), next);
        let ok = ResponseTemplate::new(200)
            .insert_header("x-ratelimit-limit", "80")
            .insert_header("x-ratelimit-remaining", "79")
            .insert_header("x-ratelimit-reset", "2");
        let ok = match source.delay {
            Some(delay) => ok.set_delay(delay),
            None => ok,
        };
        match fault {
            None => {
                source.served += page.len() as u64;
                ok.set_body_json(body)
            }
            Some(Fault::Slow(delay)) => ok.set_body_json(body).set_delay(delay),
            Some(Fault::Throttle { retry_after }) => {
                let mut r = ResponseTemplate::new(429)
                    .insert_header("x-ratelimit-remaining", "0")
                    .insert_header("x-ratelimit-reset", "0.05")
                    .set_body_json(json!({"success": false, "error": "Too many requests"}));
                if let Some(s) = retry_after {
                    r = r.insert_header("retry-after", s.to_string().as_str());
                }
                r
            }
            Some(Fault::Unavailable) => {
                ResponseTemplate::new(503).set_body_string("upstream unavailable")
            }
            Some(Fault::CutShort) => {
                let text = body.to_string();
                ok.set_body_string(text[..text.len() / 2].to_owned())
            }
            Some(Fault::DailyBudgetSpent) => ResponseTemplate::new(429)
                .insert_header("x-daily-ratelimit-token-remaining", "0")
                .set_body_json(json!({"success": false, "error": "Daily token budget exceeded"})),
            Some(Fault::Blocked) => ResponseTemplate::new(403)
                .set_body_json(json!({"success": false, "error": "Forbidden"})),
        }
    }
}

/// `2024-05-DD HH:MM` as Pipedrive writes it.
fn at(day: u32, minute: u32) -> String {
    format!("2024-05-{day:02}T{:02}:{:02}:00Z", minute / 60, minute % 60)
}

/// 3 users; 1,050 organisations (many sharing one `update_time` across page boundaries); 1,400
/// deals, two in three won. Two records are bad: an organisation without a name and a won deal
/// without an organisation.
fn seeded() -> Source {
    let mut s = Source::default();
    for (id, email) in [
        (11, "li.lei@example.com"),
        (12, "han.mei@example.com"),
        (13, "sam@example.com"),
    ] {
        s.users.push(
            json!({"id": id, "name": email.split('@').next().unwrap(), "email": email,
            "locale": if id == 13 { "en_US" } else { "zh_CN" }, "modified": "2024-04-01 10:00:00"}),
        );
    }
    for id in 1..=1_050_i64 {
        let name = if id == 777 {
            String::new()
        } else {
            format!("Org {id} 有限公司")
        };
        // Ids 100..=400 share one timestamp (a bulk update), crossing three page boundaries.
        let updated = if (100..=400).contains(&id) {
            at(3, 0)
        } else {
            at(1 + (id % 20) as u32, (id % 600) as u32)
        };
        s.organizations.insert(
            id,
            json!({"id": id, "name": name, "owner_id": 11 + id % 3,
            "add_time": "2023-01-05T08:00:00Z", "update_time": updated,
            "custom_fields": {"n9s": id % 11}}),
        );
    }
    for id in 1..=1_400_i64 {
        let status = if id % 3 == 0 { "lost" } else { "won" };
        let org = if id == 1_001 {
            Value::Null
        } else {
            json!(1 + id % 1_050)
        };
        s.deals.insert(id, json!({"id": id, "title": format!("Deal {id}"), "value": 100 + id * 7,
            "currency": "CNY", "org_id": org, "owner_id": 11, "status": status,
            "won_time": format!("2024-04-{:02}T15:00:00Z", 1 + id % 28), "update_time": at(2 + (id % 9) as u32, (id % 500) as u32),
            "custom_fields": {"c0st": {"type": "monetary", "value": 50 + id, "currency": "CNY"}}}));
    }
    // 240 activities on organisations 1..=240: calls, meetings, visits (a custom type),
    // emails and tasks; every fourth planned (not done); some on a person alone; one on an
    // organisation created after the customers pass (never imported): it must be rejected.
    for id in 1..=240_i64 {
        let kind = ["call", "meeting", "visit", "email", "task"][(id % 5) as usize];
        let org = match id {
            _ if id % 11 == 0 => Value::Null,
            101 => json!(5_000),
            _ => json!(id),
        };
        let done = id % 4 != 0;
        let marked = (done && id % 3 != 0)
            .then(|| format!("2024-04-{:02}T09:{:02}:00Z", 1 + id % 28, id % 60));
        s.activities.insert(id, json!({"id": id, "subject": format!("Contact {id}"), "type": kind,
            "owner_id": 11 + id % 3, "org_id": org, "person_id": 500 + id, "done": done,
            "due_date": format!("2024-04-{:02}", 1 + id % 28), "due_time": if id % 2 == 0 { json!("14:30:00") } else { Value::Null },
            "marked_as_done_time": marked, "is_deleted": false,
            "add_time": "2024-03-01T08:00:00Z", "update_time": at(4 + (id % 7) as u32, (id % 300) as u32)}));
    }
    s
}

/// The users' emails by their id.
fn user_emails(source: &Source) -> BTreeMap<i64, String> {
    source
        .users
        .iter()
        .map(|u| {
            (
                u["id"].as_i64().unwrap(),
                u["email"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The activities the store must hold: done contacts of a known kind on an imported
/// organisation, at the time marked done or else when due.
fn expected_activities(source: &Source) -> Vec<String> {
    let emails = user_emails(source);
    let mut out = Vec::new();
    for a in source.activities.values() {
        let kind = a["type"].as_str().unwrap();
        let org = a["org_id"].as_i64();
        if a["done"] != true || kind == "task" || org.is_none() || org == Some(5_000) {
            continue;
        }
        let at = match a["marked_as_done_time"].as_str() {
            Some(t) => chrono::DateTime::parse_from_rfc3339(t).unwrap().naive_utc(),
            None => chrono::NaiveDate::parse_from_str(a["due_date"].as_str().unwrap(), "%Y-%m-%d")
                .unwrap()
                .and_time(a["due_time"].as_str().map_or(chrono::NaiveTime::MIN, |t| {
                    chrono::NaiveTime::parse_from_str(t, "%H:%M:%S").unwrap()
                })),
        };
        let row = (
            a["id"].to_string(),
            org.unwrap().to_string(),
            emails.get(&a["owner_id"].as_i64().unwrap()).cloned(),
            kind.to_owned(),
            at,
            a["subject"].as_str().map(str::to_owned),
        );
        out.push((a["id"].to_string(), format!("activity {row:?}")));
    }
    out.sort();
    out.into_iter().map(|(_, r)| r).collect()
}

/// What the store must hold after importing `source`: the same snapshot rows the store renders.
fn expected(source: &Source) -> Vec<String> {
    let emails = user_emails(source);
    let owners: Vec<OwnerRow> = source
        .users
        .iter()
        .map(|u| owner_row(u, u["id"].to_string(), "name"))
        .collect();
    let mut customers: BTreeMap<String, CustomerRow> = BTreeMap::new();
    for o in source.organizations.values().filter(|o| o["name"] != "") {
        let id = o["id"].to_string();
        customers.insert(
            id.clone(),
            (
                id,
                o["name"].as_str().unwrap().to_owned(),
                emails.get(&o["owner_id"].as_i64().unwrap()).cloned(),
                chrono::NaiveDate::from_ymd_opt(2023, 1, 5),
            ),
        );
    }
    let mut orders: BTreeMap<String, OrderRow> = BTreeMap::new();
    for d in source
        .deals
        .values()
        .filter(|d| d["status"] == "won" && !d["org_id"].is_null())
    {
        let org = d["org_id"].to_string();
        let day = chrono::DateTime::parse_from_rfc3339(d["won_time"].as_str().unwrap())
            .unwrap()
            .date_naive();
        orders.insert(
            d["id"].to_string(),
            (
                d["id"].to_string(),
                org,
                day,
                d["value"].as_i64().unwrap() * 100,
                Some(d["custom_fields"]["c0st"]["value"].as_i64().unwrap() * 100),
                "CNY".to_owned(),
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
        let (runtime, server) = serve(FakePipedrive(source.clone()));
        Self {
            runtime,
            server,
            source,
        }
    }

    fn connector(&self, token: &str) -> Pipedrive {
        Pipedrive::new(PipedriveSettings {
            enabled: true,
            base_url: self.server.uri(),
            api_token: SecretString::from(token.to_owned()),
            page_size: 100,
            cost_field: Some("c0st".into()),
            customer_fields: CustomerFields {
                prospect_rating: None,
                attributes: [("nps".to_owned(), "n9s".to_owned())].into(),
            },
            http: HttpSettings {
                timeout_secs: 0.3,
                max_attempts: 6,
                backoff_ms: 10,
                max_backoff_secs: 1,
            },
            ..PipedriveSettings::default()
        })
        .unwrap()
    }

    fn sync(&self, db: &TestDb, options: &SyncOptions) -> Result<SyncReport, CrmError> {
        let connector = self.connector(TOKEN);
        self.runtime.block_on(sync(&db.db, &connector, options))
    }

    fn faults(&self, faults: Vec<Option<Fault>>) {
        self.source.lock().unwrap().faults = faults.into();
    }
}

fn snapshot(db: &TestDb) -> Vec<String> {
    source_snapshot(&mut db.conn(), "pipedrive")
}

backend_tests! {
    fn a_full_run_through_faults_imports_the_source_exactly(db) {
        let harness = Harness::new(seeded());
        // In order: the first organisations page is throttled (Retry-After), then 503, then cut
        // short, then slower than the timeout; the deals meet a throttle without Retry-After.
        harness.faults(vec![
            Some(Fault::Throttle { retry_after: Some(0.05) }), Some(Fault::Unavailable),
            Some(Fault::CutShort), Some(Fault::Slow(Duration::from_millis(800))),
            None, None, None, None, None, None, None, None, None, None, None,
            Some(Fault::Throttle { retry_after: None }),
        ]);
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        assert!(report.entities.iter().all(|e| e.completed), "{report:?}");
        let want = expected(&harness.source.lock().unwrap());
        assert_same_rows(&snapshot(&db), &want, "the store equals the source");
        // The custom field configured as the `nps` attribute, read from `custom_fields`.
        let org = tierwise_store::queries::find_customer(&mut db.conn(), "pipedrive", "30").unwrap().unwrap();
        assert_eq!(org.attributes.get("nps"), Some(&8.0));
        // The two bad records and the activity of an organisation never imported are kept with
        // their JSON and the reason; nothing else is.
        assert_eq!(report.rejected(), 3, "{report:?}");
        let customers = &report.entities[1];
        let run = customers.run.unwrap();
        let rejects = tierwise_store::runs::rejects_of_run(&mut db.conn(), run, 10).unwrap();
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0].field.as_deref(), Some("name"));
        assert!(rejects[0].raw_record.contains("\"id\":777"), "{:?}", rejects[0]);
        let orders = &report.entities[2];
        let rejects = tierwise_store::runs::rejects_of_run(&mut db.conn(), orders.run.unwrap(), 10).unwrap();
        assert_eq!((rejects.len(), rejects[0].field.as_deref()), (1, Some("org_id")));
        assert!(rejects[0].reason.contains("no organization"), "{:?}", rejects[0]);
        // 1,050 organisations at 100 a page: 11 pages, each loaded once.
        assert_eq!((customers.pages, customers.records), (11, 1_050));
    }

    fn an_incremental_run_reads_only_what_changed(db) {
        let harness = Harness::new(seeded());
        harness.sync(&db, &SyncOptions::default()).unwrap();
        // The next run asks from the newest change seen less the 5-minute overlap.
        let from = |records: &BTreeMap<i64, Value>, won_only: bool| {
            let newest = records.values()
                .filter(|r| !won_only || r["status"] == "won")
                .map(|r| r["update_time"].as_str().unwrap().to_owned())
                .max()
                .unwrap();
            let newest = chrono::DateTime::parse_from_rfc3339(&newest).unwrap();
            (newest - chrono::TimeDelta::minutes(5)).format("%Y-%m-%dT%H:%M:%SZ").to_string()
        };
        let (orgs_from, deals_from) = {
            let mut s = harness.source.lock().unwrap();
            let marks = (from(&s.organizations, false), from(&s.deals, true));
            for id in [5_i64, 150, 999] {
                let o = s.organizations.get_mut(&id).unwrap();
                o["name"] = json!(format!("Renamed {id}"));
                o["update_time"] = json!(at(25, 30));
            }
            s.organizations.insert(2_000, json!({"id": 2_000, "name": "New Org", "owner_id": 12,
                "add_time": "2023-01-05T08:00:00Z", "update_time": at(25, 31)}));
            let d = s.deals.get_mut(&3).unwrap();
            d["status"] = json!("won");
            d["update_time"] = json!(at(25, 32));
            s.since_seen.clear();
            marks
        };
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "after the incremental run");
        assert_eq!(s.since_seen.first().cloned().flatten(), Some(orgs_from.clone()), "{:?}", s.since_seen);
        // Organisations, deals, then activities.
        assert_eq!(s.since_seen[1].clone(), Some(deals_from.clone()), "{:?}", s.since_seen);
        // Read: the 4 changed organisations and the 1 changed deal, plus the few whose last
        // change lies inside the overlap; not the thousand others.
        let in_overlap = |records: &BTreeMap<i64, Value>, from: &str, won_only: bool| {
            records.values()
                .filter(|r| !won_only || r["status"] == "won")
                .filter(|r| r["update_time"].as_str().unwrap() >= from && r["update_time"].as_str().unwrap() < at(25, 0).as_str())
                .count() as u64
        };
        let orgs_overlap = in_overlap(&s.organizations, &orgs_from, false);
        let deals_overlap = in_overlap(&s.deals, &deals_from, true);
        assert!(orgs_overlap >= 1 && deals_overlap >= 1, "the newest change is always re-read");
        assert_eq!(report.entities[1].records, 4 + orgs_overlap, "{report:?}");
        assert_eq!(report.entities[2].records, 1 + deals_overlap, "{report:?}");
    }

    fn done_activities_are_imported_as_contacts_and_unknown_customers_rejected(db) {
        let harness = Harness::new(seeded());
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        let activities = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        let expected = expected_activities(&harness.source.lock().unwrap());
        assert_same_rows(&activity_snapshot(&mut db.conn(), "pipedrive"), &expected, "activities");
        assert!(expected.len() > 100, "{}", expected.len());
        // Activity 101 names organisation 5000, which is not imported: the activity is
        // rejected with its JSON, naming the customer.
        assert_eq!((activities.records, activities.rejected), (240, 1), "{report:?}");
        let rejects = tierwise_store::runs::rejects_of_run(&mut db.conn(), activities.run.unwrap(), 10).unwrap();
        assert!(rejects[0].reason.contains("customer 5000 is not imported") && rejects[0].raw_record.contains("\"id\":101"), "{rejects:?}");
        // A call logged since: the next run reads it.
        {
            let mut s = harness.source.lock().unwrap();
            s.activities.insert(1_000, json!({"id": 1_000, "subject": "Follow-up", "type": "call",
                "owner_id": 12, "org_id": 5, "done": true, "due_date": "2024-05-20", "due_time": null,
                "marked_as_done_time": "2024-05-20T10:00:00Z", "is_deleted": false,
                "add_time": "2024-05-20T09:00:00Z", "update_time": at(28, 0)}));
        }
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        let activities = report.entities.iter().find(|e| e.entity == "activities").unwrap();
        assert_eq!(activities.written, 1, "{report:?}");
        assert!(activities.records < 20, "only the recent changes are read: {report:?}");
        let expected = expected_activities(&harness.source.lock().unwrap());
        assert_same_rows(&activity_snapshot(&mut db.conn(), "pipedrive"), &expected, "activities after the incremental run");
        // The call is deleted (Pipedrive keeps listing it with is_deleted): marked, no longer
        // a contact.
        {
            let mut s = harness.source.lock().unwrap();
            let call = s.activities.get_mut(&1_000).unwrap();
            call["is_deleted"] = json!(true);
            call["update_time"] = json!(at(28, 5));
        }
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        assert_eq!(report.entities.iter().find(|e| e.entity == "activities").unwrap().deleted, 1, "{report:?}");
        assert_eq!(deleted_snapshot(&mut db.conn(), "pipedrive"), ["activity 1000: deleted in pipedrive"]);
        assert_eq!(activity_snapshot(&mut db.conn(), "pipedrive").len(), expected.len() - 1);
    }

    fn deleted_deals_are_marked_kept_and_revived_when_won_again(db) {
        let harness = Harness::new(seeded());
        harness.sync(&db, &SyncOptions::default()).unwrap();
        assert!(deleted_snapshot(&mut db.conn(), "pipedrive").is_empty());
        let delete = |ids: &[i64], minute: u32| {
            let mut s = harness.source.lock().unwrap();
            for id in ids {
                let d = s.deals.get_mut(id).unwrap();
                d["status"] = json!("deleted");
                d["update_time"] = json!(at(26, minute));
            }
        };
        // Deals 1 and 2 were imported as won; deal 3 was lost, so there is nothing to mark.
        delete(&[1, 2, 3], 0);
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        let deletions = report.entities.iter().find(|e| e.entity == "deleted_orders").unwrap();
        assert_eq!((deletions.records, deletions.deleted), (3, 2), "{report:?}");
        assert_eq!(
            deleted_snapshot(&mut db.conn(), "pipedrive"),
            ["order 1: deleted in pipedrive", "order 2: deleted in pipedrive"]
        );
        // The live rows are the source's live rows; the deleted deals are kept, marked.
        assert_same_rows(&snapshot(&db), &expected(&harness.source.lock().unwrap()), "after deletions");
        // The next run asks for deletions since the newest one seen (less the overlap) and
        // marks nothing twice.
        let again = harness.sync(&db, &SyncOptions::default()).unwrap();
        let deletions = again.entities.iter().find(|e| e.entity == "deleted_orders").unwrap();
        assert_eq!(deletions.deleted, 0);
        assert_eq!(
            harness.source.lock().unwrap().deleted_since_seen.last().cloned().flatten().as_deref(),
            Some("2024-05-25T23:55:00Z")
        );
        // Deal 1 restored and won again: live again, its mark cleared by the upsert.
        {
            let mut s = harness.source.lock().unwrap();
            let d = s.deals.get_mut(&1).unwrap();
            d["status"] = json!("won");
            d["update_time"] = json!(at(27, 0));
        }
        harness.sync(&db, &SyncOptions::default()).unwrap();
        assert_eq!(deleted_snapshot(&mut db.conn(), "pipedrive"), ["order 2: deleted in pipedrive"]);
        assert_same_rows(&snapshot(&db), &expected(&harness.source.lock().unwrap()), "after a revival");
    }

    fn a_run_that_stops_part_way_resumes_to_the_same_store(db) {
        let harness = Harness::new(seeded());
        let stopped = harness.sync(&db, &SyncOptions { max_pages: Some(4), ..SyncOptions::default() }).unwrap();
        assert!(!stopped.entities.last().unwrap().completed);
        harness.source.lock().unwrap().served = 0;
        let resumed = harness.sync(&db, &SyncOptions::default()).unwrap();
        assert!(resumed.entities[1].resumed, "{resumed:?}");
        // The resumed run fetched only the pages the first one had not committed.
        let customers_left = 1_050 - 300;
        assert_eq!(resumed.entities[1].records, customers_left);
        let s = harness.source.lock().unwrap();
        assert_same_rows(&snapshot(&db), &expected(&s), "same as an uninterrupted run");
    }

    fn a_spent_daily_budget_stops_cleanly_and_the_next_run_resumes(db) {
        let harness = Harness::new(seeded());
        harness.faults(vec![None, None, None, Some(Fault::DailyBudgetSpent)]);
        let err = harness.sync(&db, &SyncOptions::default()).unwrap_err();
        assert!(matches!(err, CrmError::QuotaExhausted(_)), "{err}");
        assert!(err.to_string().contains("resumes"), "{err}");
        let state = tierwise_store::crm::sync_state(&mut db.conn(), "pipedrive", "customers").unwrap();
        assert!(state.in_progress && state.run_pages == 3, "{state:?}");
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        assert!(report.entities[1].resumed);
        assert_same_rows(&snapshot(&db), &expected(&harness.source.lock().unwrap()), "after resuming");
    }

    fn a_403_after_throttling_is_a_hard_stop(db) {
        let harness = Harness::new(seeded());
        harness.faults(vec![Some(Fault::Throttle { retry_after: Some(0.01) }), Some(Fault::Blocked)]);
        let err = harness.sync(&db, &SyncOptions::default()).unwrap_err();
        assert!(err.to_string().contains("refused after throttling"), "{err}");
        // One throttled try and the 403: no third call into the block.
        assert_eq!(harness.source.lock().unwrap().since_seen.len(), 2);
    }

    fn the_token_never_shows_in_errors_or_stored_runs(db) {
        let harness = Harness::new(seeded());
        let connector = harness.connector("wrong-token-ffe2");
        let err = harness.runtime.block_on(sync(&db.db, &connector, &SyncOptions::default())).unwrap_err();
        assert!(matches!(err, CrmError::Auth { status: 401, .. }), "{err:?}");
        assert!(err.to_string().contains("TIERWISE__CRM__PIPEDRIVE__API_TOKEN"), "says how to fix it: {err}");
        for text in [err.to_string(), format!("{err:?}"), format!("{connector:?}")] {
            assert!(!text.contains("wrong-token-ffe2") && !text.contains(TOKEN), "{text}");
        }
        let runs = tierwise_store::runs::recent_import_runs(&mut db.conn(), 10).unwrap();
        assert!(!runs.is_empty());
        for run in runs {
            assert!(!format!("{run:?}").contains("wrong-token-ffe2"));
        }
    }

    fn a_run_dropped_mid_way_and_run_again_ends_with_the_same_store(db) {
        let harness = Harness::new(seeded());
        // 50 ms a page: at most 8 of the 11 organisation pages fit before the drop.
        harness.source.lock().unwrap().delay = Some(Duration::from_millis(50));
        let connector = harness.connector(TOKEN);
        // Dropped mid-run, as a process killed between pages or inside one would be.
        // Two pages per transaction, so that several are stored before the drop.
        let options = SyncOptions { batch_records: 200, ..SyncOptions::default() };
        let dropped = harness.runtime.block_on(async {
            tokio::time::timeout(Duration::from_millis(400), sync(&db.db, &connector, &options)).await
        });
        assert!(dropped.is_err(), "the run was still going when dropped");
        let states = tierwise_store::crm::sync_states(&mut db.conn()).unwrap();
        assert!(states.iter().any(|s| s.in_progress && s.run_pages >= 2), "{states:?}");
        harness.source.lock().unwrap().delay = None;
        let report = harness.sync(&db, &SyncOptions::default()).unwrap();
        assert!(report.entities.iter().all(|e| e.completed), "{report:?}");
        assert_same_rows(&snapshot(&db), &expected(&harness.source.lock().unwrap()), "same as an uninterrupted run");
    }

}
