//! The dashboard over HTTP, on both backends: login and throttling, every route refusing
//! anonymous requests, roles on overrides, CSRF, escaping of hostile customer names, the API.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::path::Path;

use actix_web::cookie::Cookie;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{App, test as atest, web};
use tierwise_dashboard::views::Views;
use tierwise_dashboard::{
    AppState, CONTENT_SECURITY_POLICY, configure, hash_password, security_headers,
    session_middleware,
};
use tierwise_domain::Period;
use tierwise_domain::grading::Policy;
use tierwise_grading::{Mode, grade_period};
use tierwise_import::{ColumnMapping, FileImportOptions, ImportSettings, RecordKind, import_file};
use tierwise_store::backend_tests;
use tierwise_store::testing::TestDb;
use tierwise_store::users::{NewUser, add_user};

const HOSTILE: &str = "<script>alert(1)</script> & Co";

fn import(db: &TestDb, dir: &Path, name: &str, kind: RecordKind, csv: &str) {
    let path = dir.join(name);
    std::fs::write(&path, csv).unwrap();
    let options = FileImportOptions::from_settings(
        &ImportSettings::default(),
        kind,
        ColumnMapping::default(),
    )
    .unwrap();
    assert_eq!(
        import_file(&db.db, &path, &options)
            .unwrap()
            .totals
            .rows_rejected,
        0
    );
}

/// Two owners, sixty customers (C03 named like markup, C04 like a formula; more than a page),
/// two graded months, three users.
fn fixture(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    import(
        db,
        d,
        "owners.csv",
        RecordKind::Owners,
        "email,name\nli@example.com,Li\nemma@example.com,Emma\n",
    );
    let mut customers = String::from("customer_id,name,owner_email\n");
    let mut orders = String::from("order_id,customer_id,order_date,amount\n");
    for i in 1..=60 {
        let owner = if i <= 30 {
            "li@example.com"
        } else {
            "emma@example.com"
        };
        let name = match i {
            3 => format!("\"{HOSTILE}\""),
            // A spreadsheet would run this as a formula.
            4 => "=1+2 Evil".to_owned(),
            _ => format!("Customer {i:02}"),
        };
        customers.push_str(&format!("C{i:02},{name},{owner}\n"));
        orders.push_str(&format!("S{i:02},C{i:02},2026-09-10,{}\n", 100 * i));
    }
    orders.push_str("O01,C01,2026-10-10,9000\n");
    import(db, d, "customers.csv", RecordKind::Customers, &customers);
    import(db, d, "orders.csv", RecordKind::Orders, &orders);
    for p in ["2026-09", "2026-10"] {
        grade_period(
            &db.db,
            Period::parse(p).unwrap(),
            &Policy::default(),
            Mode::Publish,
        )
        .unwrap();
    }
    let now = chrono::Utc::now().naive_utc();
    let hash = hash_password("s3cret-pass").unwrap();
    let mut conn = db.conn();
    let owners = tierwise_store::notify::owners(&mut conn).unwrap();
    let li = owners
        .iter()
        .find(|o| o.email == "li@example.com")
        .unwrap()
        .id;
    for (name, role, owner, locale) in [
        ("admin", "admin", None, "en"),
        ("viewer", "viewer", None, "en"),
        ("li", "manager", Some(li), "zh-CN"),
    ] {
        add_user(
            &mut conn,
            NewUser {
                username: name,
                password_hash: &hash,
                role,
                owner_id: owner,
                locale,
                now,
            },
        )
        .unwrap()
        .unwrap();
    }
}

fn customer_id(db: &TestDb, external: &str) -> i64 {
    tierwise_store::queries::find_customer(&mut db.conn(), "file", external)
        .unwrap()
        .unwrap()
        .id
        .0
}

async fn body(resp: ServiceResponse) -> String {
    String::from_utf8(atest::read_body(resp).await.to_vec()).unwrap()
}

fn session_cookie(resp: &ServiceResponse) -> Option<Cookie<'static>> {
    resp.response()
        .cookies()
        .find(|c| c.name() == "tierwise_session")
        .map(|c| c.into_owned())
}

fn csrf_of(html: &str) -> String {
    let start = html.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// Logs in; returns the session cookie and the CSRF token of the new session.
async fn login<S>(app: &S, user: &str, password: &str) -> (Option<Cookie<'static>>, StatusCode)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let resp = atest::call_service(app, atest::TestRequest::get().uri("/login").to_request()).await;
    let cookie = session_cookie(&resp).unwrap();
    let csrf = csrf_of(&body(resp).await);
    let resp = atest::call_service(
        app,
        atest::TestRequest::post()
            .uri("/login")
            .cookie(cookie)
            .set_form([
                ("username", user),
                ("password", password),
                ("csrf", &csrf),
                ("next", "/customers"),
            ])
            .to_request(),
    )
    .await;
    let status = resp.status();
    (session_cookie(&resp), status)
}

async fn get<S>(app: &S, cookie: &Cookie<'static>, uri: &str) -> (StatusCode, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse, Error = actix_web::Error>,
{
    let resp = atest::call_service(
        app,
        atest::TestRequest::get()
            .uri(uri)
            .cookie(cookie.clone())
            .to_request(),
    )
    .await;
    (resp.status(), body(resp).await)
}

macro_rules! app {
    ($db:expr) => {
        atest::init_service(
            App::new()
                .app_data(web::Data::new(AppState {
                    db: $db.db.clone(),
                    policy: Policy::default(),
                    default_locale: "zh-CN".into(),
                    views: Views::load().unwrap(),
                    jobs: vec![tierwise_jobs::JobDefinition::parse(
                        Path::new("jobs/monthly-grade.toml"),
                        "schedule = \"0 0 2 1 * *\"\nkind = \"grade\"",
                        tierwise_jobs::parse_timezone("UTC").unwrap(),
                    )
                    .unwrap()],
                    users: Default::default(),
                    cache: std::sync::Arc::default(),
                }))
                .wrap(session_middleware(&[7u8; 64], false))
                .wrap(security_headers())
                .configure(configure),
        )
        .await
    };
}

backend_tests! {
    fn every_response_carries_the_security_headers(db) {
        fixture(&db);
        actix_web::rt::System::new().block_on(async {
            let app = app!(db);
            let admin = login(&app, "admin", "s3cret-pass").await.0.unwrap();
            // A page, the API, the login page without a session, a static asset, a 404.
            for (uri, signed_in) in [("/", true), ("/api/v1/overview", true), ("/login", false), ("/static/app.css", false), ("/no-such-page", true)] {
                let mut request = atest::TestRequest::get().uri(uri);
                if signed_in {
                    request = request.cookie(admin.clone());
                }
                let resp = atest::call_service(&app, request.to_request()).await;
                let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
                assert_eq!(header("content-security-policy").as_deref(), Some(CONTENT_SECURITY_POLICY), "{uri}");
                assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{uri}");
                assert_eq!(header("x-frame-options").as_deref(), Some("DENY"), "{uri}");
                assert_eq!(header("referrer-policy").as_deref(), Some("same-origin"), "{uri}");
            }
        });
    }

    fn operations_pages_migrations_and_export(db) {
        fixture(&db);
        actix_web::rt::System::new().block_on(async {
            let app = app!(db);
            let admin = login(&app, "admin", "s3cret-pass").await.0.unwrap();
            // The migration matrix links each cell to its customers.
            let (status, html) = get(&app, &admin, "/migrations").await;
            assert_eq!(status, StatusCode::OK);
            let (_, json) = get(&app, &admin, "/api/v1/migrations").await;
            let m: serde_json::Value = serde_json::from_str(&json).unwrap();
            let tiers: Vec<String> = m["tiers"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
            let cells = m["cells"].as_array().unwrap();
            let (mut from, mut to, mut n) = (0, 0, 0);
            for (i, row) in cells.iter().enumerate() {
                for (j, c) in row.as_array().unwrap().iter().enumerate() {
                    if c.as_u64().unwrap() > n && i != j {
                        (from, to, n) = (i, j, c.as_u64().unwrap());
                    }
                }
            }
            assert!(n > 0, "some customer moved: {json}");
            let link = format!("/customers?period=2026-10&amp;from_tier={}&amp;tier={}", tiers[from], tiers[to]);
            assert!(html.contains(&link), "{link}");
            let (_, json) = get(&app, &admin, &format!("/api/v1/customers?period=2026-10&from_tier={}&tier={}", tiers[from], tiers[to])).await;
            let list: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(list["rows"].as_array().unwrap().len() as u64, n, "{json}");
            // Imports, their rejects, jobs, outbox.
            let (status, html) = get(&app, &admin, "/imports").await;
            assert_eq!(status, StatusCode::OK);
            assert!(html.contains("orders.csv"));
            // Every path of the OpenAPI document answers (ids filled in).
            let (_, json) = get(&app, &admin, "/api/openapi.json").await;
            let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
            let paths = doc["paths"].as_object().unwrap();
            assert_eq!(paths.len(), 10);
            for (path, ops) in paths {
                if ops.get("get").is_none() {
                    continue;
                }
                let uri = path.replace("{id}", "1");
                let (status, body) = get(&app, &admin, &uri).await;
                assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            }
            let (status, html) = get(&app, &admin, "/api/docs").await;
            assert_eq!(status, StatusCode::OK);
            assert!(html.contains("customers&#x2f;{id}"), "the viewer lists every path");
            let (status, _) = get(&app, &admin, "/imports/1").await;
            assert_eq!(status, StatusCode::OK);
            let (status, html) = get(&app, &admin, "/jobs").await;
            assert_eq!(status, StatusCode::OK);
            assert!(html.contains("monthly-grade") && html.contains("0 0 2 1 * *"));
            let csrf = csrf_of(&html);
            let resp = atest::call_service(&app, atest::TestRequest::post().uri("/jobs/monthly-grade/run")
                .cookie(admin.clone()).set_form([("csrf", csrf.as_str())]).to_request()).await;
            assert_eq!(resp.status(), StatusCode::SEE_OTHER);
            let viewer = login(&app, "viewer", "s3cret-pass").await.0.unwrap();
            let (_, html) = get(&app, &viewer, "/jobs").await;
            assert!(!html.contains("/jobs/monthly-grade/run"), "no run button for viewers");
            let resp = atest::call_service(&app, atest::TestRequest::post().uri("/jobs/monthly-grade/run")
                .cookie(viewer.clone()).set_form([("csrf", csrf_of(&html).as_str())]).to_request()).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            let (status, _) = get(&app, &viewer, "/outbox?status=dead").await;
            assert_eq!(status, StatusCode::OK);
            let (status, _) = get(&app, &viewer, "/api/v1/outbox?status=lost").await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            // The CSV export: every matching customer, formulas defused.
            let (status, csv) = get(&app, &viewer, "/customers.csv").await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(csv.lines().count(), 61, "header and sixty customers");
            assert!(csv.contains(",'=1+2 Evil,"), "{}", csv.lines().find(|l| l.contains("Evil")).unwrap_or(""));
            assert!(csv.contains(HOSTILE), "CSV keeps names verbatim");
            // The same list as a workbook: text stays text, amounts are numbers.
            let resp = atest::call_service(&app, atest::TestRequest::get().uri("/customers.xlsx?tier=A").cookie(viewer.clone()).to_request()).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let bytes = atest::read_body(resp).await.to_vec();
            use calamine::Reader;
            let mut book = calamine::Xlsx::new(std::io::Cursor::new(bytes)).unwrap();
            let sheet = book.worksheet_range("customers").unwrap();
            let rows: Vec<_> = sheet.rows().collect();
            assert_eq!(rows[0][1].to_string(), "name");
            assert_eq!(rows[0][14].to_string(), "p_alive");
            assert_eq!(rows[0][16].to_string(), "notes");
            assert!(rows.len() > 1 && rows[1..].iter().all(|r| r[9] == "A"), "only tier A");
            assert!(matches!(rows[1][7], calamine::Data::Float(_)), "monetary is a number: {:?}", rows[1][7]);
            let (_, csv_a) = get(&app, &viewer, "/customers.csv?tier=A").await;
            assert_eq!(csv_a.lines().count(), rows.len(), "CSV and XLSX hold the same customers");
        });
        let requests = tierwise_store::jobs::claim_requests(&mut db.conn(), chrono::Utc::now().naive_utc()).unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!((requests[0].job.as_str(), requests[0].requested_by.as_str()), ("monthly-grade", "admin"));
    }

    fn every_route_needs_a_login(db) {
        fixture(&db);
        actix_web::rt::System::new().block_on(async {
            let app = app!(db);
            for uri in ["/", "/customers", "/customers/1", "/?period=2026-10", "/migrations", "/imports", "/imports/1", "/jobs", "/outbox", "/customers.csv", "/policy"] {
                let resp = atest::call_service(&app, atest::TestRequest::get().uri(uri).to_request()).await;
                assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{uri}");
                let location = resp.headers().get("Location").unwrap().to_str().unwrap().to_owned();
                assert!(location.starts_with("/login?next="), "{location}");
            }
            for uri in ["/api/openapi.json", "/api/docs", "/api/v1/overview", "/api/v1/customers", "/api/v1/customers/1", "/api/v1/migrations", "/api/v1/imports", "/api/v1/imports/1/rejects", "/api/v1/jobs", "/api/v1/outbox", "/api/v1/policy"] {
                let resp = atest::call_service(&app, atest::TestRequest::get().uri(uri).to_request()).await;
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{uri}");
            }
            let resp = atest::call_service(&app, atest::TestRequest::post().uri("/customers/1/override").set_form([("csrf", "x")]).to_request()).await;
            assert!(matches!(resp.status(), StatusCode::SEE_OTHER | StatusCode::FORBIDDEN), "{}", resp.status());
            // The vendored chart library is served from the binary.
            let resp = atest::call_service(&app, atest::TestRequest::get().uri("/static/vendor/chart.umd.min.js").to_request()).await;
            assert_eq!(resp.status(), StatusCode::OK);
            assert!(body(resp).await.contains("Chart"));
        });
    }

    fn logins_are_checked_and_throttled(db) {
        fixture(&db);
        actix_web::rt::System::new().block_on(async {
            let app = app!(db);
            let (_, status) = login(&app, "admin", "wrong").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let (cookie, status) = login(&app, "admin", "s3cret-pass").await;
            assert_eq!(status, StatusCode::SEE_OTHER);
            let cookie = cookie.unwrap();
            let (status, html) = get(&app, &cookie, "/").await;
            assert_eq!(status, StatusCode::OK);
            assert!(html.contains("dist-data") && html.contains("chart.umd.min.js"));
            // The language switch keeps the choice with the user and returns to the page.
            assert!(html.contains("Log out"), "admin reads English");
            let resp = atest::call_service(&app, atest::TestRequest::post().uri("/account/language").cookie(cookie.clone())
                .insert_header(("Referer", "http://localhost:8080/customers?tier=A"))
                .set_form([("csrf", csrf_of(&html).as_str()), ("locale", "zh-CN")]).to_request()).await;
            assert_eq!(resp.status(), StatusCode::SEE_OTHER);
            assert_eq!(resp.headers().get("Location").unwrap(), "/customers?tier=A");
            let (_, html) = get(&app, &cookie, "/").await;
            assert!(html.contains("退出") && !html.contains("Log out"), "now Chinese");
            // Segments by their names in the reader's language, not by their keys.
            let names = ["重要价值客户", "重要发展客户", "重要保持客户", "重要挽留客户", "一般价值客户", "一般发展客户", "一般保持客户", "一般挽留客户"];
            assert!(names.iter().any(|n| html.contains(n)), "segment names on the overview");
            assert!(!html.contains(">important_") && !html.contains(">general_"), "no raw segment keys shown");
            let resp = atest::call_service(&app, atest::TestRequest::post().uri("/account/language").cookie(cookie.clone())
                .insert_header(("Referer", "http://evil.example/x"))
                .set_form([("csrf", csrf_of(&html).as_str()), ("locale", "en")]).to_request()).await;
            assert_eq!(resp.headers().get("Location").unwrap(), "/", "never back to another site");
            let resp = atest::call_service(&app, atest::TestRequest::post().uri("/account/language").cookie(cookie.clone())
                .set_form([("csrf", csrf_of(&html).as_str()), ("locale", "fr")]).to_request()).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            // Five wrong passwords lock the account, even for the right one.
            for _ in 0..5 {
                login(&app, "viewer", "nope").await;
            }
            let (_, status) = login(&app, "viewer", "s3cret-pass").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            // A login form without the session's token is refused.
            let resp = atest::call_service(&app, atest::TestRequest::post().uri("/login")
                .set_form([("username", "admin"), ("password", "s3cret-pass"), ("csrf", "forged")]).to_request()).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        });
    }

    fn pages_and_api_show_the_grades_escaped(db) {
        fixture(&db);
        let hostile = customer_id(&db, "C03");
        actix_web::rt::System::new().block_on(async {
            let app = app!(db);
            let cookie = login(&app, "admin", "s3cret-pass").await.0.unwrap();
            let (status, html) = get(&app, &cookie, "/customers").await;
            assert_eq!(status, StatusCode::OK);
            assert!(!html.contains("<script>alert"), "unescaped name in the list");
            assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; Co"));
            let (status, html) = get(&app, &cookie, &format!("/customers/{hostile}")).await;
            assert_eq!(status, StatusCode::OK);
            assert!(!html.contains("<script>alert"), "unescaped name on the customer page");
            assert!(html.contains("2026-09") && html.contains("2026-10"), "grade history");
            // The API: overview, filtered list with keyset pages, one customer.
            let (_, json) = get(&app, &cookie, "/api/v1/overview").await;
            let overview: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(overview["period"], "2026-10");
            assert_eq!(overview["previous"], "2026-09");
            assert_eq!(overview["graded"], 60);
            // Pages of fifty: the list links to the next page, which continues after it.
            let (_, html) = get(&app, &cookie, "/customers?lifecycle=new").await;
            let start = html.find("after=").unwrap() + "after=".len();
            let after: String = html[start..].chars().take_while(char::is_ascii_digit).collect();
            assert!(html.contains("lifecycle=new&amp;period=2026-10&amp;after="), "the filter is kept");
            let (status, html) = get(&app, &cookie, &format!("/customers?lifecycle=new&after={after}")).await;
            assert_eq!(status, StatusCode::OK);
            assert!(html.contains("Customer 5") || html.contains("Customer 6"), "the second page");
            // The filter form sends its empty "any" options; they filter nothing.
            let (status, html) = get(&app, &cookie, "/customers?q=&tier=A&segment=&abc=&lifecycle=&owner=&churn_risk=&overridden=&sort=id").await;
            assert_eq!(status, StatusCode::OK, "{html}");
            let (_, json) = get(&app, &cookie, "/api/v1/customers?tier=A").await;
            let list: serde_json::Value = serde_json::from_str(&json).unwrap();
            let rows = list["rows"].as_array().unwrap();
            assert!(!rows.is_empty() && rows.iter().all(|r| r["tier"] == "A"), "{json}");
            let (_, json) = get(&app, &cookie, &format!("/api/v1/customers?after={hostile}")).await;
            let list: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert!(list["rows"].as_array().unwrap().iter().all(|r| r["customer_id"].as_i64().unwrap() > hostile));
            // Sorted by score: the pages join into every customer once, best first.
            let mut seen = Vec::new();
            let mut uri = "/api/v1/customers?sort=score".to_owned();
            loop {
                let (status, json) = get(&app, &cookie, &uri).await;
                assert_eq!(status, StatusCode::OK, "{json}");
                let list: serde_json::Value = serde_json::from_str(&json).unwrap();
                for r in list["rows"].as_array().unwrap() {
                    seen.push((r["composite"].as_f64(), r["customer_id"].as_i64().unwrap()));
                }
                match list["next_after"].as_str() {
                    Some(after) => uri = format!("/api/v1/customers?sort=score&after={}", after),
                    None => break,
                }
            }
            assert_eq!(seen.len(), 60);
            let mut ids: Vec<i64> = seen.iter().map(|s| s.1).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 60, "no customer twice");
            assert!(seen.windows(2).all(|w| w[0].0.unwrap_or(f64::MIN) >= w[1].0.unwrap_or(f64::MIN)), "{seen:?}");
            let (status, _) = get(&app, &cookie, "/api/v1/customers?sort=score&after=12").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "an id is not a score position");
            let (status, _) = get(&app, &cookie, "/api/v1/customers?sort=name").await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            // Churn risk: at risk or churned, and nothing else.
            let (_, json) = get(&app, &cookie, "/api/v1/customers?churn_risk=yes").await;
            let risky: serde_json::Value = serde_json::from_str(&json).unwrap();
            let (_, json) = get(&app, &cookie, "/api/v1/customers?churn_risk=no").await;
            let safe: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert!(risky["rows"].as_array().unwrap().iter().all(|r| r["lifecycle"] == "at_risk" || r["lifecycle"] == "churned"));
            assert!(safe["rows"].as_array().unwrap().iter().all(|r| r["lifecycle"] != "at_risk" && r["lifecycle"] != "churned"));
            let (_, json) = get(&app, &cookie, &format!("/api/v1/customers?q={}", "Customer%2001")).await;
            let list: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(list["rows"].as_array().unwrap().len(), 1, "{json}");
            let (_, json) = get(&app, &cookie, &format!("/api/v1/customers/{hostile}")).await;
            let one: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(one["grade"]["name"], HOSTILE);
            // The score breakdown adds up to the composite; the order and the cadence are there.
            let points: f64 = one["breakdown"].as_array().unwrap().iter().map(|p| p["points"].as_f64().unwrap()).sum();
            let composite = one["grade"]["composite"].as_f64().unwrap();
            assert!((points - composite).abs() < 0.01, "{points} vs {composite}: {json}");
            // Stored positionally, shown with named fields.
            let shown: serde_json::Value = serde_json::from_str(one["grade"]["explanation"].as_str().unwrap()).unwrap();
            assert_eq!(shown, one["explanation"]);
            assert!(shown["components"]["value"].is_number() && shown["tier"]["kind"].is_string(), "{shown}");
            assert_eq!(one["records"]["orders"][0]["external_id"], "S03");
            let tier = one["grade"]["tier"].as_str().unwrap();
            let level = Policy::default().tiers.levels.into_iter().find(|l| l.name == tier).unwrap();
            assert_eq!(one["follow_ups"][0]["kind"], "call");
            assert_eq!(one["follow_ups"][0]["every_months"], level.call_every_months.unwrap());
            let (_, html) = get(&app, &cookie, &format!("/customers/{hostile}")).await;
            assert!(html.contains("id=\"score-breakdown\"") && html.contains("S03"));
            assert_eq!(one["may_override"], true);
            assert!(one["records"]["deleted"].is_null() && one["records"]["orders"][0]["deleted_reason"].is_null());
            // Deleted at its source: the page says so (escaped) and strikes the deleted order and
            // invoice.
            let dir = tempfile::tempdir().unwrap();
            import(&db, dir.path(), "invoices.csv", RecordKind::Invoices,
                "invoice_id,customer_id,issued_date,due_date,amount,paid_date\nI03,C03,2026-09-10,2026-10-10,300,\n");
            import(&db, dir.path(), "activities.csv", RecordKind::Activities,
                "activity_id,customer_id,kind,occurred_at\nA03,C03,visit,2026-10-20\nA04,C03,visit,2099-01-05\n");
            let (_, json) = get(&app, &cookie, &format!("/api/v1/customers/{hostile}")).await;
            let one: serde_json::Value = serde_json::from_str(&json).unwrap();
            // The visit planned for 2099 is not the last one yet.
            assert_eq!(one["records"]["last_visit"], "2026-10-20");
            let source = tierwise_domain::SourceName::parse("file").unwrap();
            let at = chrono::NaiveDate::from_ymd_opt(2026, 11, 2).unwrap().and_hms_opt(8, 0, 0).unwrap();
            for (table, id) in [
                (tierwise_store::load::DeletableTable::Customers, "C03"),
                (tierwise_store::load::DeletableTable::Orders, "S03"),
                (tierwise_store::load::DeletableTable::Invoices, "I03"),
                (tierwise_store::load::DeletableTable::Activities, "A03"),
            ] {
                let deletion = tierwise_store::load::Deletion { external_id: id, at, reason: "merged into <b>C04</b>" };
                assert_eq!(tierwise_store::load::mark_deleted(&mut db.conn(), &source, table, &[deletion]).unwrap(), 1);
            }
            let (_, html) = get(&app, &cookie, &format!("/customers/{hostile}")).await;
            assert!(html.contains("id=\"deleted\"") && html.contains("2026-11-02"), "{html}");
            assert!(html.contains("merged into &lt;b&gt;C04&lt;&#x2f;b&gt;") && !html.contains("<b>C04"), "{html}");
            assert_eq!(html.matches("<s title=").count(), 3, "the deleted order, invoice and visit are struck through");
            assert!(html.contains("2099-01-05"), "a planned visit is listed");
            let (_, json) = get(&app, &cookie, &format!("/api/v1/customers/{hostile}")).await;
            let one: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(one["records"]["deleted"][1], "merged into <b>C04</b>");
            assert_eq!(one["records"]["orders"][0]["deleted_reason"], "merged into <b>C04</b>");
            assert_eq!(one["records"]["invoices"][0]["deleted_reason"], "merged into <b>C04</b>");
            assert_eq!(one["records"]["activities"][1]["deleted_reason"], "merged into <b>C04</b>");
            assert!(one["records"]["last_visit"].is_null(), "a deleted visit is no contact: {}", one["records"]);
            let (status, _) = get(&app, &cookie, "/api/v1/customers/999999").await;
            assert_eq!(status, StatusCode::NOT_FOUND);
        });
    }

    fn roles_decide_who_may_pin(db) {
        fixture(&db);
        let own = customer_id(&db, "C02");
        let other = customer_id(&db, "C48");
        actix_web::rt::System::new().block_on(async {
            let app = app!(db);
            let post = |cookie: Cookie<'static>, id: i64, csrf: String| {
                atest::TestRequest::post()
                    .uri(&format!("/customers/{id}/override"))
                    .cookie(cookie)
                    .set_form([("csrf", csrf.as_str()), ("action", "pin"), ("tier", "A"), ("reason", "strategic")])
                    .to_request()
            };
            for (user, id, expected) in [
                ("viewer", own, StatusCode::FORBIDDEN),
                ("li", other, StatusCode::FORBIDDEN),
                ("li", own, StatusCode::SEE_OTHER),
                ("admin", other, StatusCode::SEE_OTHER),
            ] {
                let cookie = login(&app, user, "s3cret-pass").await.0.unwrap();
                let (_, html) = get(&app, &cookie, &format!("/customers/{id}")).await;
                let csrf = csrf_of(&html);
                let resp = atest::call_service(&app, post(cookie.clone(), id, csrf)).await;
                assert_eq!(resp.status(), expected, "{user} pinning {id}");
                // Without the token nobody gets through.
                let resp = atest::call_service(&app, post(cookie, id, String::new())).await;
                assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{user} without a CSRF token");
            }
            // The list notes each override; the others have none.
            let admin = login(&app, "admin", "s3cret-pass").await.0.unwrap();
            let (_, json) = get(&app, &admin, "/api/v1/customers?overridden=yes").await;
            let list: serde_json::Value = serde_json::from_str(&json).unwrap();
            let notes: Vec<&str> = list["rows"].as_array().unwrap().iter().map(|r| r["note"].as_str().unwrap()).collect();
            assert_eq!(notes, ["pin: strategic", "pin: strategic"], "{json}");
            let (_, json) = get(&app, &admin, "/api/v1/customers?overridden=no").await;
            let list: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert!(list["rows"].as_array().unwrap().iter().all(|r| r["note"].is_null()), "{json}");
        });
        let overrides = tierwise_store::grading::list_overrides(&mut db.conn()).unwrap();
        let pinned: Vec<i64> = overrides.iter().map(|(c, _)| c.0).collect();
        assert_eq!(pinned.len(), 2, "{pinned:?}");
        assert!(pinned.contains(&own) && pinned.contains(&other));
        let by_li = overrides.iter().find(|(c, _)| c.0 == own).unwrap();
        assert_eq!(by_li.1.author, "li");
    }

    fn policy_what_if_and_apply(db) {
        fixture(&db);
        let published = tierwise_store::grading::published_tiers(&mut db.conn(), Period::parse("2026-10").unwrap()).unwrap().unwrap();
        let in_a_now = published.values().filter(|t| t.as_deref() == Some("A")).count() as u64;
        actix_web::rt::System::new().block_on(async {
            let app = app!(db);
            let post = |uri: &str, cookie: &Cookie<'static>, fields: Vec<(&str, String)>| {
                atest::TestRequest::post().uri(uri).cookie(cookie.clone()).set_form(fields).to_request()
            };
            // Everyone may read the policy; only admins see the form enabled and may post it.
            let viewer = login(&app, "viewer", "s3cret-pass").await.0.unwrap();
            let (status, html) = get(&app, &viewer, "/policy").await;
            assert_eq!(status, StatusCode::OK);
            assert!(html.contains("name=\"weight.value\"") && html.contains(" disabled"));
            let resp = atest::call_service(&app, post("/policy/what-if", &viewer, vec![("csrf", csrf_of(&html)), ("weight.value", "1".into())])).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);

            let admin = login(&app, "admin", "s3cret-pass").await.0.unwrap();
            let (_, html) = get(&app, &admin, "/policy").await;
            let csrf = csrf_of(&html);
            assert!(html.contains(&Policy::default().hash()), "shows the hash in force");
            // Without the token: refused.
            let resp = atest::call_service(&app, post("/policy/what-if", &admin, vec![("tier.A.share", "5".into())])).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            // Shares that do not add up: the page says so and keeps the form.
            let resp = atest::call_service(&app, post("/policy/what-if", &admin, vec![("csrf", csrf.clone()), ("tier.A.share", "50".into())])).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            let html = body(resp).await;
            assert!(html.contains("what-if-error") && html.contains("add up to 1"), "{html}");
            // Twice the A share promotes customers at once (demotions would wait for the
            // hysteresis): the what-if counts them, and writes nothing.
            let knobs = vec![("csrf", csrf.clone()), ("tier.A.share", "20".into()), ("tier.D.share", "30".into()), ("weight.value", "0.35".into())];
            let resp = atest::call_service(&app, post("/policy/what-if", &admin, knobs.clone())).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let html = body(resp).await;
            assert!(html.contains("id=\"what-if-result\""));
            let (_, json) = {
                let resp = atest::call_service(&app, atest::TestRequest::post().uri("/api/v1/policy/what-if").cookie(admin.clone())
                    .set_json(serde_json::json!({"tiers": {"A": {"share": 0.2}, "D": {"share": 0.3}}})).to_request()).await;
                (resp.status(), body(resp).await)
            };
            let w: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(w["period"], "2026-10");
            assert_eq!(w["changes"], "A.share=0.2 D.share=0.3");
            let a = &w["tiers"][0];
            assert_eq!((a["name"].as_str(), a["current"].as_u64()), (Some("A"), Some(in_a_now)), "{json}");
            let promoted = a["candidate"].as_u64().unwrap() - in_a_now;
            assert!(promoted > 0, "{json}");
            assert!(w["up"].as_u64().unwrap() >= promoted, "{json}");
            assert!(html.contains(&format!("id=\"what-if-moved\">{}<", w["moved"])), "the page shows the same count");
            assert!(tierwise_store::policy::current_version(&mut db.conn()).unwrap().is_none(), "a what-if writes nothing");

            // Applying needs a reason; then the version is in force with its audit entry.
            let resp = atest::call_service(&app, post("/policy/apply", &admin, knobs.clone())).await;
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            let mut with_reason = knobs;
            with_reason.push(("reason", "more key accounts".into()));
            let resp = atest::call_service(&app, post("/policy/apply", &viewer, with_reason.clone())).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "viewer (its own token is not this one)");
            let resp = atest::call_service(&app, post("/policy/apply", &admin, with_reason)).await;
            assert_eq!(resp.status(), StatusCode::SEE_OTHER);
            let (_, html) = get(&app, &admin, resp.headers().get("Location").unwrap().to_str().unwrap()).await;
            assert!(html.contains("more key accounts") && html.contains("A.share=0.2 D.share=0.3"), "history lists it");
            // The JSON route: admins only, with a reason; then it is the newest version.
            let api_apply = |cookie: &Cookie<'static>, reason: &str| {
                atest::TestRequest::post().uri("/api/v1/policy").cookie(cookie.clone())
                    .set_json(serde_json::json!({"adjustment": {"tiers": {"A": {"share": 0.2}, "D": {"share": 0.3}}}, "reason": reason})).to_request()
            };
            assert_eq!(atest::call_service(&app, api_apply(&viewer, "mine")).await.status(), StatusCode::FORBIDDEN);
            assert_eq!(atest::call_service(&app, api_apply(&admin, " ")).await.status(), StatusCode::BAD_REQUEST);
            let resp = atest::call_service(&app, atest::TestRequest::post().uri("/api/v1/policy/what-if").cookie(viewer.clone())
                .set_json(serde_json::json!({})).to_request()).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            let resp = atest::call_service(&app, api_apply(&admin, "same again, by API")).await;
            assert_eq!(resp.status(), StatusCode::CREATED);
            let (_, json) = get(&app, &viewer, "/api/v1/policy").await;
            let p: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(p["version"]["author"], "admin");
            assert_eq!(p["version"]["reason"], "same again, by API");
            assert_eq!(p["history"].as_array().unwrap().len(), 2);
            assert_eq!(p["policy"]["tiers"]["levels"][0]["share"], 0.2);
        });
        // The next grading run grades under the version in force.
        let effective = tierwise_grading::effective_policy(&mut db.conn(), &Policy::default()).unwrap();
        assert_eq!(effective.policy.tiers.levels[0].share, 0.2);
        let report = grade_period(&db.db, Period::parse("2026-10").unwrap(), &effective.policy, Mode::Publish).unwrap();
        let a = report.summary.tiers.iter().find(|(n, _)| n == "A").unwrap().1.customers;
        assert!(a > in_a_now, "{a} > {in_a_now}");
        let version = tierwise_store::policy::current_version(&mut db.conn()).unwrap().unwrap();
        assert_eq!(version.policy_hash, effective.policy.hash());
        // The API applied the same knobs again: from that policy to itself.
        assert_eq!(version.previous_hash, version.policy_hash);
        let first = &tierwise_store::policy::history(&mut db.conn(), 10).unwrap()[1];
        assert_eq!(first.previous_hash, Policy::default().hash());
    }

    fn a_regraded_period_shows_at_once_though_the_newest_run_is_cached(db) {
        fixture(&db);
        let period = Period::parse("2026-10").unwrap();
        actix_web::rt::System::new().block_on(async {
            let app = app!(db);
            let viewer = login(&app, "viewer", "s3cret-pass").await.0.unwrap();
            let id = customer_id(&db, "C05");
            let (status, before) = get(&app, &viewer, "/api/v1/customers").await;
            assert_eq!(status, StatusCode::OK);
            let before: serde_json::Value = serde_json::from_str(&before).unwrap();
            assert_eq!(before["rows"].as_array().unwrap().len(), 50);
            // Re-grading replaces the period's run and deletes the old run's grades, while
            // the dashboard still trusts the run it read a moment ago.
            let old_run = tierwise_store::dashboard::published(&mut db.conn(), Some(period)).unwrap();
            grade_period(&db.db, period, &Policy::default(), Mode::Publish).unwrap();
            let new_run = tierwise_store::dashboard::published(&mut db.conn(), Some(period)).unwrap();
            assert_ne!(old_run, new_run);
            let (status, after) = get(&app, &viewer, "/api/v1/customers").await;
            assert_eq!(status, StatusCode::OK);
            let after: serde_json::Value = serde_json::from_str(&after).unwrap();
            assert_eq!(after["rows"], before["rows"], "the same grades, from the new run");
            let (status, page) = get(&app, &viewer, &format!("/api/v1/customers/{id}")).await;
            assert_eq!(status, StatusCode::OK);
            let page: serde_json::Value = serde_json::from_str(&page).unwrap();
            assert_eq!(page["period"], "2026-10");
            assert_eq!(page["grade"]["customer_id"], id, "{page}");
        });
    }

}
