//! Test support: a real SMTP server on loopback (mailin-embedded, in-process) that keeps what
//! it receives, and a small graded book of customers.
#![allow(dead_code, reason = "each test file uses part of it")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use mailin_embedded::{Handler, Response, Server, SslConfig, response};
use tierwise_domain::Period;
use tierwise_domain::grading::Policy;
use tierwise_grading::{Mode, grade_period};
use tierwise_import::{ColumnMapping, FileImportOptions, ImportSettings, RecordKind, import_file};
use tierwise_notify::{Composer, NotifySettings, SendingSettings, SmtpSecurity, SmtpSettings};
use tierwise_store::testing::TestDb;

/// A message as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// RCPT TO addresses.
    pub to: Vec<String>,
    /// The raw message.
    pub data: Vec<u8>,
}

impl Received {
    /// The parsed message.
    pub fn parsed(&self) -> mailparse::ParsedMail<'_> {
        mailparse::parse_mail(&self.data).unwrap()
    }

    /// Header value (decoded).
    pub fn header(&self, name: &str) -> String {
        use mailparse::MailHeaderMap;
        self.parsed()
            .headers
            .get_first_value(name)
            .unwrap_or_default()
    }

    /// The decoded body of the part with `mime` type.
    pub fn part(&self, mime: &str) -> Option<String> {
        fn find(m: &mailparse::ParsedMail<'_>, mime: &str) -> Option<String> {
            if m.subparts.is_empty() {
                return (m.ctype.mimetype == mime).then(|| m.get_body().unwrap());
            }
            m.subparts.iter().find_map(|p| find(p, mime))
        }
        find(&self.parsed(), mime)
    }
}

#[derive(Clone)]
struct Collector {
    inbox: Arc<Mutex<Vec<Received>>>,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Collector {
    fn rcpt(&mut self, to: &str) -> Response {
        // An address the server does not know: a permanent 550.
        if to.contains("bounce@") {
            return response::NO_MAILBOX;
        }
        response::OK
    }

    fn data_start(&mut self, _domain: &str, _from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.to = to.to_vec();
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        self.inbox.lock().unwrap().push(Received {
            to: std::mem::take(&mut self.to),
            data: std::mem::take(&mut self.data),
        });
        response::OK
    }
}

/// An SMTP server on loopback, running on its own threads for the rest of the test process.
pub struct SmtpServer {
    /// Its port.
    pub port: u16,
    inbox: Arc<Mutex<Vec<Received>>>,
}

impl SmtpServer {
    /// Starts one on a free port.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Self::start_on(listener)
    }

    /// Starts one on `listener`.
    pub fn start_on(listener: TcpListener) -> Self {
        let port = listener.local_addr().unwrap().port();
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let handler = Collector {
            inbox: Arc::clone(&inbox),
            to: Vec::new(),
            data: Vec::new(),
        };
        let mut server = Server::new(handler);
        server
            .with_name("smtp.test")
            .with_ssl(SslConfig::None)
            .unwrap()
            .with_num_threads(4)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Self { port, inbox }
    }

    /// What it has received so far.
    pub fn received(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().clone()
    }
}

/// A port nothing listens on (free when this returns).
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SMTP settings for a loopback server without TLS.
pub fn smtp(port: u16) -> SmtpSettings {
    SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        from: "tierwise <noreply@tierwise.test>".into(),
        timeout_secs: 5,
        ..SmtpSettings::default()
    }
}

/// Sending settings with a one-second first retry, so tests can wait for it.
pub fn sending() -> SendingSettings {
    SendingSettings {
        concurrency: 3,
        max_attempts: 5,
        retry_base_secs: 1,
        retry_max_secs: 4,
        lease_secs: 60,
    }
}

/// `[notify]` with one admin.
pub fn notify_settings() -> NotifySettings {
    NotifySettings {
        admins: vec!["ops@example.com".into()],
        dashboard_url: "http://127.0.0.1:8080/".into(),
        ..NotifySettings::default()
    }
}

/// The customer whose name must be escaped in HTML.
pub const SCRIPT_NAME: &str = "<script>alert(1)</script> & Co";

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn import(db: &TestDb, path: &Path, kind: RecordKind) {
    let options = FileImportOptions::from_settings(
        &ImportSettings::default(),
        kind,
        ColumnMapping::default(),
    )
    .unwrap();
    let report = import_file(&db.db, path, &options).unwrap();
    assert_eq!(report.totals.rows_rejected, 0, "{}", path.display());
}

/// Three owners (李雷 zh-CN with C01–C05, Emma en with C06–C09, an address the SMTP server
/// rejects with C10), orders in September and October 2026, a few calls, and both months
/// graded. C02 buys every ten days in September, then stops: at risk in October.
pub fn graded_book(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let owners = "email,name,locale\n\
        li.lei@example.com,李雷,zh-CN\n\
        emma@example.com,Emma Wilson,en\n\
        bounce@example.com,Bounce,en\n";
    import(db, &write(d, "owners.csv", owners), RecordKind::Owners);
    let mut customers = String::from("customer_id,name,owner_email\n");
    for i in 1..=10 {
        let owner = match i {
            1..=5 => "li.lei@example.com",
            6..=9 => "emma@example.com",
            _ => "bounce@example.com",
        };
        let name = match i {
            3 => format!("\"{SCRIPT_NAME}\""),
            _ => format!("Customer {i:02}"),
        };
        customers.push_str(&format!("C{i:02},{name},{owner}\n"));
    }
    import(
        db,
        &write(d, "customers.csv", &customers),
        RecordKind::Customers,
    );
    let mut orders = String::from("order_id,customer_id,order_date,amount\n");
    for i in 1..=10 {
        let amount = 1100 - 100 * i;
        orders.push_str(&format!("S{i:02},C{i:02},2026-09-15,{amount}\n"));
    }
    orders.push_str("S2a,C02,2026-09-05,900\nS2b,C02,2026-09-25,900\n");
    orders.push_str("O10,C10,2026-10-10,5000\nO07,C07,2026-10-20,3000\n");
    import(db, &write(d, "orders.csv", &orders), RecordKind::Orders);
    let activities = "activity_id,customer_id,kind,occurred_at\n\
        A1,C01,call,2026-10-20T10:00:00Z\n\
        A2,C01,visit,2026-10-20T11:00:00Z\n";
    import(
        db,
        &write(d, "activities.csv", activities),
        RecordKind::Activities,
    );
    let policy = Policy::default();
    for period in ["2026-09", "2026-10"] {
        grade_period(
            &db.db,
            Period::parse(period).unwrap(),
            &policy,
            Mode::Publish,
        )
        .unwrap();
    }
}

/// The day the tests judge follow-ups on.
pub fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 2).unwrap()
}

/// A composer over the default policy.
pub fn composer<'a>(
    policy: &'a Policy,
    settings: &'a NotifySettings,
    templates: &'a tierwise_notify::Templates,
) -> Composer<'a> {
    Composer {
        policy,
        settings,
        templates,
        mail_domain: "tierwise.test",
        today: today(),
    }
}
