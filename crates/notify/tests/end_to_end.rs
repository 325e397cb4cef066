//! Grading → outbox → a real SMTP server on loopback, on both backends: what arrives, in which
//! locale, escaped; nothing twice; retries when the server is down; dead letters on 550.
#![expect(clippy::unwrap_used, reason = "tests")]

mod support;

use std::collections::HashSet;

use support::*;
use tierwise_domain::Period;
use tierwise_domain::grading::Policy;
use tierwise_notify::send::drain_blocking;
use tierwise_notify::{Templates, process_events, queue_period, queue_reminders};
use tierwise_store::backend_tests;
use tierwise_store::notify::{
    NewMessage, OutboxStatus, claim_due, dead_letter, enqueue, list_outbox, mark_sent,
    outbox_counts, pending_events, requeue,
};

fn counts(db: &tierwise_store::testing::TestDb) -> Vec<(String, i64)> {
    outbox_counts(&mut db.conn()).unwrap()
}

fn by_recipient<'a>(mail: &'a [Received], address: &str, subject_part: &str) -> &'a Received {
    mail.iter()
        .find(|m| {
            m.to.iter().any(|t| t.contains(address)) && m.header("Subject").contains(subject_part)
        })
        .unwrap_or_else(|| panic!("no message to {address} with '{subject_part}'"))
}

fn message(key: &str) -> NewMessage {
    NewMessage {
        dedupe_key: key.into(),
        kind: "digest".into(),
        owner_id: None,
        recipient: "a@example.com".into(),
        subject: "s".into(),
        body_text: "t".into(),
        body_html: "<p>h</p>".into(),
        message_id: format!("<{key}@tierwise.test>"),
    }
}

backend_tests! {
    fn the_outbox_dedupes_and_reclaims_what_a_dead_sender_left(db) {
        let now = chrono::NaiveDate::from_ymd_opt(2026, 11, 2).unwrap().and_hms_opt(8, 0, 0).unwrap();
        let mut conn = db.conn();
        assert_eq!(enqueue(&mut conn, &[message("k1"), message("k2")], now).unwrap(), 2);
        assert_eq!(enqueue(&mut conn, &[message("k1")], now).unwrap(), 0, "same dedupe key");
        let lease_end = now + chrono::TimeDelta::seconds(60);
        let claimed = claim_due(&mut conn, now, lease_end, 10).unwrap();
        assert_eq!(claimed.iter().map(|m| m.attempts).collect::<Vec<_>>(), vec![1, 1]);
        // Leased: nobody else claims them meanwhile.
        assert!(claim_due(&mut conn, now, lease_end, 10).unwrap().is_empty());
        // The sender died without marking them: after the lease they are claimed again.
        let later = lease_end + chrono::TimeDelta::seconds(1);
        let again = claim_due(&mut conn, later, later + chrono::TimeDelta::seconds(60), 10).unwrap();
        assert_eq!(again.len(), 2);
        assert!(again.iter().all(|m| m.attempts == 2 && m.status == "sending"));
        assert_eq!(again[0].message_id, "<k1@tierwise.test>", "the same Message-ID");
        assert!(mark_sent(&mut conn, again[0].id, later).unwrap());
        assert!(!mark_sent(&mut conn, again[0].id, later).unwrap(), "only a claimed message");
        dead_letter(&mut conn, again[1].id, "550 no such user").unwrap();
        assert!(requeue(&mut conn, again[1].id, later).unwrap());
        let requeued = claim_due(&mut conn, later, later + chrono::TimeDelta::seconds(60), 10).unwrap();
        assert_eq!((requeued.len(), requeued[0].attempts), (1, 1));
    }

    fn digests_arrive_once_in_the_owners_locale_and_escaped(db) {
        graded_book(&db);
        let policy = Policy::default();
        let settings = notify_settings();
        let templates = Templates::load(None).unwrap();
        let composer = composer(&policy, &settings, &templates);

        // Two publications are pending; only the newest period notifies.
        assert_eq!(pending_events(&mut db.conn()).unwrap().len(), 2);
        let outcomes = process_events(&mut db.conn(), &composer).unwrap();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes[0].skipped.as_deref().unwrap().contains("newest"), "{outcomes:?}");
        let queued = outcomes[1].queued.unwrap();
        // Three digests, the admins' digest, and churn alerts for li.lei (C02 went quiet).
        let kinds: Vec<String> = list_outbox(&mut db.conn(), None, 100)
            .unwrap()
            .into_iter()
            .map(|m| format!("{}:{}", m.kind, m.recipient))
            .collect();
        assert!(kinds.iter().filter(|k| k.starts_with("digest:")).count() == 3, "{kinds:?}");
        assert!(kinds.iter().any(|k| k.starts_with("admin_digest:") && k.contains("ops@example.com")));
        assert!(kinds.iter().any(|k| k.starts_with("churn_alert:") && k.contains("li.lei")), "{kinds:?}");
        assert_eq!(kinds.len(), queued);

        // Re-running queues nothing: no pending events, and the explicit digest is deduplicated.
        assert!(process_events(&mut db.conn(), &composer).unwrap().is_empty());
        let again = queue_period(&mut db.conn(), &composer, Period::parse("2026-10").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((again.composed, again.queued), (queued, 0));

        let server = SmtpServer::start();
        let report = drain_blocking(&db.db, &smtp(server.port), &sending()).unwrap();
        // bounce@example.com is refused with 550: dead-lettered, the rest still go.
        assert_eq!((report.sent, report.dead, report.retried), (queued - 1, 1, 0));
        let dead = list_outbox(&mut db.conn(), Some(OutboxStatus::Dead), 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].recipient.contains("bounce@example.com"));
        assert!(dead[0].last_error.as_deref().unwrap().contains("550"), "{:?}", dead[0].last_error);

        // A second pass sends nothing again.
        let report = drain_blocking(&db.db, &smtp(server.port), &sending()).unwrap();
        assert_eq!((report.sent, report.dead, report.retried), (0, 0, 0));
        let mail = server.received();
        assert_eq!(mail.len(), queued - 1);
        let ids: HashSet<String> = mail.iter().map(|m| m.header("Message-ID")).collect();
        assert_eq!(ids.len(), mail.len(), "every message arrived once");

        // 李雷 reads Chinese: subject, tier changes, both parts.
        let li = by_recipient(&mail, "li.lei@example.com", "客户分级");
        assert_eq!(li.to, vec!["li.lei@example.com".to_string()]);
        assert!(li.header("Subject").contains("2026年10月"), "{}", li.header("Subject"));
        let li_html = li.part("text/html").unwrap();
        let li_text = li.part("text/plain").unwrap();
        assert!(li_html.contains("等级变动") && li_text.contains("等级变动"));
        assert!(li_html.contains("Customer 02"), "C02's row is in the digest");
        // The customer named like markup is escaped in HTML and verbatim in text.
        assert!(!li_html.contains("<script>"), "unescaped customer name in HTML");
        assert!(li_html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; &amp; Co"), "{li_html}");
        assert!(li_text.contains(SCRIPT_NAME));
        // Follow-ups: C01 was called on 2026-10-20 (A: monthly, due 2026-11-20, not yet due);
        // the others count from the day they entered their tier.
        assert!(li_text.contains("已逾期"), "{li_text}");
        assert!(li_text.contains("http://127.0.0.1:8080/"));
        assert!(li_html.contains("127.0.0.1:8080"));

        // Emma reads English, with her customer's promotion explained.
        let emma = by_recipient(&mail, "emma@example.com", "tier changes");
        let emma_text = emma.part("text/plain").unwrap();
        assert!(emma.header("Subject").contains("October 2026"), "{}", emma.header("Subject"));
        assert!(emma_text.contains("Customer 07"), "{emma_text}");
        assert!(emma_text.contains("Tier changes"));
        assert!(emma.part("text/html").unwrap().contains("Your book by tier"));

        // The churn alert names the customer, what changed and the tier's action.
        let alert = by_recipient(&mail, "li.lei@example.com", "流失预警");
        let alert_text = alert.part("text/plain").unwrap();
        assert!(alert_text.contains("Customer 02"), "{alert_text}");
        assert!(alert_text.contains("有流失风险"), "{alert_text}");

        // The admins' digest carries the migration matrix and import health.
        let admin = by_recipient(&mail, "ops@example.com", "分级报告");
        let admin_html = admin.part("text/html").unwrap();
        assert!(admin_html.contains("等级迁移") && admin_html.contains("最近的导入"));
    }

    fn a_fall_in_p_alive_raises_a_churn_alert(db) {
        graded_book(&db);
        // C01 kept buying and its stage did not move: only the model's view of it changes.
        for (period, p_alive) in [("2026-09", 0.9), ("2026-10", 0.55)] {
            let period = Period::parse(period).unwrap();
            let changed = tierwise_store::testing::set_published_p_alive(&mut db.conn(), period, "C01", Some(p_alive)).unwrap();
            assert_eq!(changed, 1);
        }
        let policy = Policy::default();
        let settings = notify_settings();
        let templates = Templates::load(None).unwrap();
        let composer = composer(&policy, &settings, &templates);
        process_events(&mut db.conn(), &composer).unwrap();
        let alerts: Vec<_> = list_outbox(&mut db.conn(), None, 100)
            .unwrap()
            .into_iter()
            .filter(|m| m.kind == "churn_alert" && m.recipient.contains("li.lei"))
            .collect();
        assert!(
            alerts.iter().any(|m| m.body_text.contains("Customer 01") && m.body_text.contains("0.90→0.55")),
            "{:?}",
            alerts.iter().map(|m| &m.body_text).collect::<Vec<_>>()
        );
    }

    fn messages_wait_while_the_server_is_down_and_go_once_it_is_back(db) {
        graded_book(&db);
        let policy = Policy::default();
        // The admins' digest in English this time (the other test reads it in Chinese).
        let settings = tierwise_notify::NotifySettings {
            admin_locale: tierwise_domain::Locale::En,
            ..notify_settings()
        };
        let templates = Templates::load(None).unwrap();
        let composer = composer(&policy, &settings, &templates);
        process_events(&mut db.conn(), &composer).unwrap();
        let queued: i64 = counts(&db).iter().map(|(_, n)| n).sum();

        // Down: every attempt fails transiently, nothing is lost or dead.
        let port = closed_port();
        let report = drain_blocking(&db.db, &smtp(port), &sending()).unwrap();
        assert_eq!((report.sent, report.dead), (0, 0));
        assert_eq!(report.retried as i64, queued);
        assert_eq!(counts(&db), vec![("queued".to_string(), queued)]);
        // Retries are not due yet: an immediate pass sends nothing.
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let server = SmtpServer::start_on(listener);
        let report = drain_blocking(&db.db, &smtp(port), &sending()).unwrap();
        assert_eq!(report.sent + report.retried + report.dead, 0);

        // Back: after the one-second back-off everything goes, once.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let report = drain_blocking(&db.db, &smtp(port), &sending()).unwrap();
        assert_eq!(report.sent as i64, queued - 1);
        assert_eq!(report.dead, 1, "the 550 recipient");
        let report = drain_blocking(&db.db, &smtp(port), &sending()).unwrap();
        assert_eq!(report.sent, 0);
        let mail = server.received();
        assert_eq!(mail.len() as i64, queued - 1);
        let ids: HashSet<String> = mail.iter().map(|m| m.header("Message-ID")).collect();
        assert_eq!(ids.len(), mail.len());
        let sent = list_outbox(&mut db.conn(), Some(OutboxStatus::Sent), 100).unwrap();
        assert!(sent.iter().all(|m| m.attempts == 2), "one failed attempt, one good one");
        let admin = by_recipient(&mail, "ops@example.com", "customers graded");
        assert!(admin.part("text/plain").unwrap().contains("Tier migration"));
    }

    fn reminders_go_once_per_week(db) {
        graded_book(&db);
        let policy = Policy::default();
        let settings = notify_settings();
        let templates = Templates::load(None).unwrap();
        let mut composer = composer(&policy, &settings, &templates);
        // Late January: A customers (monthly calls) are overdue; C07, promoted to B on
        // 2026-10-31, is due for its quarterly call on 2027-01-31, within the week.
        composer.today = chrono::NaiveDate::from_ymd_opt(2027, 1, 27).unwrap();
        let week = tierwise_notify::iso_week(composer.today);
        let first = queue_reminders(&mut db.conn(), &composer).unwrap().unwrap();
        assert_eq!(first.period.as_deref(), Some("2026-10"));
        let queued: Vec<String> = list_outbox(&mut db.conn(), None, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.recipient)
            .collect();
        assert_eq!(first.queued, 3, "one per owner: {queued:?}");
        let again = queue_reminders(&mut db.conn(), &composer).unwrap().unwrap();
        assert_eq!(again.queued, 0, "same ISO week");
        composer.today += chrono::TimeDelta::days(7);
        let next_week = queue_reminders(&mut db.conn(), &composer).unwrap().unwrap();
        assert_eq!(next_week.queued, first.queued);

        let server = SmtpServer::start();
        drain_blocking(&db.db, &smtp(server.port), &sending()).unwrap();
        let mail = server.received();
        let emma = by_recipient(&mail, "emma@example.com", &week);
        let text = emma.part("text/plain").unwrap();
        assert!(text.contains("Customer 07") && text.contains("due in 4 days"), "{text}");
        let li = by_recipient(&mail, "li.lei@example.com", &week);
        let li_text = li.part("text/plain").unwrap();
        // C01 (B: a call every three months) was called on 2026-10-20: due 2027-01-20.
        assert!(
            li_text.contains("2027年1月20日, 已逾期 7 天; 上次联系 2026年10月20日"),
            "{li_text}"
        );
        // C02 (A: monthly), never called, counts from entering A on 2026-09-30.
        assert!(li_text.contains("Customer 02 [C02] (A) 电话: 到期日 2026年10月30日"), "{li_text}");
    }

    fn a_call_deleted_at_its_source_is_no_longer_a_contact(db) {
        graded_book(&db);
        let today = chrono::NaiveDate::from_ymd_opt(2027, 1, 27).unwrap();
        let c01 = tierwise_store::queries::find_customer(&mut db.conn(), "file", "C01").unwrap().unwrap().id.0;
        let before = tierwise_store::notify::last_contacts(&mut db.conn(), today).unwrap();
        assert_eq!(before[&c01].call, chrono::NaiveDate::from_ymd_opt(2026, 10, 20));
        let source = tierwise_domain::SourceName::parse("file").unwrap();
        let at = chrono::NaiveDate::from_ymd_opt(2026, 11, 2).unwrap().and_hms_opt(8, 0, 0).unwrap();
        let deletion = tierwise_store::load::Deletion { external_id: "A1", at, reason: "deleted in the CRM" };
        let marked = tierwise_store::load::mark_deleted(&mut db.conn(), &source, tierwise_store::load::DeletableTable::Activities, &[deletion]).unwrap();
        assert_eq!(marked, 1);
        let after = tierwise_store::notify::last_contacts(&mut db.conn(), today).unwrap();
        assert!(after.get(&c01).is_none_or(|c| c.call.is_none()), "{:?}", after.get(&c01).map(|c| c.call));
    }
}
