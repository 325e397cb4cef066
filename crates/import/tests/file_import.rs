//! File import on both backends: CSV and XLSX, UTF-8 and GBK, mappings, rejects, idempotence.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test"
)]

use std::path::{Path, PathBuf};

use tierwise_import::{
    ColumnMapping, FileImportOptions, ImportError, ImportSettings, RecordKind, import_file,
};
use tierwise_store::backend_tests;
use tierwise_store::queries::{find_customer, orders_of_customer, table_counts};
use tierwise_store::runs::{RunStatus, find_import_run, rejects_of_run};
use tierwise_store::testing::{activity_snapshot, data_snapshot, invoice_snapshot};

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn options(kind: RecordKind) -> FileImportOptions {
    FileImportOptions::from_settings(&ImportSettings::default(), kind, ColumnMapping::default())
        .unwrap()
}

fn zh_mapping() -> ColumnMapping {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/mapping-zh-CN.toml");
    let mapping: ColumnMapping = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    mapping.validate(&path).unwrap();
    mapping
}

const CUSTOMERS: &str = "customer_id,name,owner_email,contact_phone,created_date\n\
C1,Acme Ltd,li@example.com,+86 1,2025-01-01\n\
C2,杭州云帆科技有限公司,,,\n";

const ORDERS: &str = "order_id,customer_id,order_date,amount,cost,notes\n\
O1,C1,2026-01-05,100.50,60,first\n\
O2,C1,2026/02/05,\"1,200\",,\n\
O3,C2,2026-03-05,80,40,\n";

backend_tests! {
    fn a_large_first_load_rebuilds_the_index_by_customer_as_the_migration_made_it(db) {
        let dir = tempfile::tempdir().unwrap();
        let mut orders = String::from("order_id,customer_id,order_date,amount\n");
        for i in 0..1_200 {
            // Customers out of order, as in real files, and one id twice (the later wins).
            let id = if i == 700 { 5 } else { i };
            orders.push_str(&format!("O{id},C{},2026-01-{:02},{}.5\n", (i * 37) % 101, 1 + i % 28, i));
        }
        let orders = write(dir.path(), "orders.csv", orders.as_bytes());
        let mut invoices = String::from("invoice_id,customer_id,issued_date,due_date,amount,paid_date\n");
        for i in 0..1_200 {
            invoices.push_str(&format!("I{i},C{},2026-01-01,2026-02-{:02},{i},\n", (i * 53) % 101, 1 + i % 28));
        }
        let invoices = write(dir.path(), "invoices.csv", invoices.as_bytes());
        let migrated = [
            tierwise_store::testing::index_definitions(&mut db.conn(), "orders"),
            tierwise_store::testing::index_definitions(&mut db.conn(), "invoices"),
        ];
        assert!(migrated[0].iter().any(|d| d.starts_with("orders_customer_date_idx")), "{migrated:?}");

        let import = |db: &tierwise_store::testing::TestDb, path: &Path, kind, defer_from| {
            let mut opts = options(kind);
            opts.batch_size = 300;
            opts.defer_indexes_from_rows = defer_from;
            import_file(&db.db, path, &opts).unwrap()
        };
        let sqlite = db.backend() == tierwise_store::testing::TestBackend::Sqlite;
        for (path, kind) in [(&orders, RecordKind::Orders), (&invoices, RecordKind::Invoices)] {
            let report = import(&db, path, kind, 200);
            assert_eq!((report.totals.rows_read, report.totals.rows_rejected), (1_200, 0));
            // An empty table and chunks of 300 rows: SQLite rebuilds; PostgreSQL has no need.
            assert_eq!(report.indexes_rebuilt, usize::from(sqlite), "{kind:?}");
        }
        assert_eq!(
            [
                tierwise_store::testing::index_definitions(&mut db.conn(), "orders"),
                tierwise_store::testing::index_definitions(&mut db.conn(), "invoices"),
            ],
            migrated
        );

        // The same files loaded without deferring give the same rows, ids included.
        let plain = tierwise_store::testing::TestDb::new(db.backend());
        for (path, kind) in [(&orders, RecordKind::Orders), (&invoices, RecordKind::Invoices)] {
            assert_eq!(import(&plain, path, kind, 0).indexes_rebuilt, 0);
        }
        assert_eq!(data_snapshot(&mut db.conn()), data_snapshot(&mut plain.conn()));

        // Loaded again (in blocks of many rows a statement on SQLite): nothing is written but
        // O5, which two chunks carry with different amounts (each chunk's copy is written in
        // turn); with ten amounts changed, exactly those ten rows more.
        let others = |db: &tierwise_store::testing::TestDb| -> Vec<String> {
            data_snapshot(&mut db.conn()).into_iter().filter(|r| !r.contains("\"O5\"")).collect()
        };
        let before = others(&plain);
        let report = import(&plain, &orders, RecordKind::Orders, 200);
        assert_eq!((report.totals.rows_written, report.totals.rows_unchanged), (2, 1_198));
        assert_eq!(others(&plain), before);
        let changed: String = std::fs::read_to_string(&orders).unwrap().lines().enumerate()
            .map(|(n, line)| if (11..=20).contains(&n) { format!("{line}9\n") } else { format!("{line}\n") })
            .collect();
        let changed = write(dir.path(), "changed.csv", changed.as_bytes());
        let report = import(&plain, &changed, RecordKind::Orders, 200);
        // The ten changed rows, and O5's two copies as on every load.
        assert_eq!(report.totals.rows_written, 12);

        // A top-up smaller than a quarter of the table keeps its index up to date instead.
        let mut top_up = String::from("order_id,customer_id,order_date,amount\n");
        for i in 0..250 {
            top_up.push_str(&format!("N{i},C{},2026-03-01,1\n", i % 101));
        }
        let top_up = write(dir.path(), "top_up.csv", top_up.as_bytes());
        let report = import(&db, &top_up, RecordKind::Orders, 200);
        assert_eq!((report.totals.rows_written, report.indexes_rebuilt), (250, 0));
        let c5 = find_customer(&mut db.conn(), "file", "C5").unwrap().unwrap();
        assert!(!orders_of_customer(&mut db.conn(), c5.id).unwrap().is_empty());
    }

    fn customers_carry_across_chunks(db) {
        // Batches of 100 rows: later chunks meet customers created by earlier ones, and a
        // customer named only by a superseded duplicate must still be created when it reappears.
        let dir = tempfile::tempdir().unwrap();
        let mut csv = String::from("order_id,customer_id,order_date,amount\n");
        csv.push_str("DUP,GHOST,2026-01-01,1\nDUP,C0,2026-01-01,1\n");
        for i in 0..450 {
            csv.push_str(&format!("O{i},C{},2026-01-01,1\n", i % 7));
        }
        csv.push_str("LATE,GHOST,2026-01-02,2\n");
        let path = write(dir.path(), "orders.csv", csv.as_bytes());
        let mut opts = options(RecordKind::Orders);
        opts.batch_size = 100;
        let report = import_file(&db.db, &path, &opts).unwrap();
        assert_eq!((report.totals.rows_read, report.totals.rows_written, report.totals.rows_rejected), (453, 452, 0));
        assert_eq!(report.totals.customers_created, 8);
        let ghost = find_customer(&mut db.conn(), "file", "GHOST").unwrap().unwrap();
        assert_eq!(orders_of_customer(&mut db.conn(), ghost.id).unwrap().len(), 1);

        let mut activities = String::from("activity_id,customer_id,kind,occurred_at\n");
        for i in 0..250 {
            let customer = if i % 50 == 0 { "NOPE".to_string() } else { format!("C{}", i % 7) };
            activities.push_str(&format!("A{i},{customer},call,2026-02-01\n"));
        }
        let path = write(dir.path(), "activities.csv", activities.as_bytes());
        let mut opts = options(RecordKind::Activities);
        opts.batch_size = 100;
        let report = import_file(&db.db, &path, &opts).unwrap();
        assert_eq!((report.totals.rows_written, report.totals.rows_rejected), (245, 5));
    }

    fn csv_import_is_idempotent(db) {
        let dir = tempfile::tempdir().unwrap();
        let customers = write(dir.path(), "customers.csv", CUSTOMERS.as_bytes());
        let orders = write(dir.path(), "orders.csv", ORDERS.as_bytes());
        let report = import_file(&db.db, &customers, &options(RecordKind::Customers)).unwrap();
        assert_eq!((report.totals.rows_read, report.totals.rows_written), (2, 2));
        let report = import_file(&db.db, &orders, &options(RecordKind::Orders)).unwrap();
        assert_eq!(report.status, RunStatus::Succeeded);
        assert_eq!((report.totals.rows_read, report.totals.rows_written, report.totals.rows_rejected), (3, 3, 0));
        assert_eq!(report.totals.unused_columns, vec!["notes".to_string()]);
        let before = data_snapshot(&mut db.conn());

        let again = import_file(&db.db, &orders, &options(RecordKind::Orders)).unwrap();
        assert_eq!((again.totals.rows_written, again.totals.rows_unchanged), (0, 3));
        let again = import_file(&db.db, &customers, &options(RecordKind::Customers)).unwrap();
        assert_eq!(again.totals.rows_written, 0);
        assert_eq!(data_snapshot(&mut db.conn()), before);

        let mut conn = db.conn();
        let acme = find_customer(&mut conn, "file", "C1").unwrap().unwrap();
        assert_eq!(acme.owner_email.as_deref(), Some("li@example.com"));
        let amounts: Vec<i64> = orders_of_customer(&mut conn, acme.id).unwrap().iter().map(|o| o.amount_minor).collect();
        assert_eq!(amounts, vec![10_050, 120_000]);
    }

    fn bad_rows_are_kept_with_reasons_and_good_rows_load(db) {
        let dir = tempfile::tempdir().unwrap();
        let orders = write(dir.path(), "orders.csv", "order_id,customer_id,order_date,amount,quantity\n\
O1,C1,2026-01-05,100,1\n\
O2,C1,2026-13-05,100,1\n\
O3,C1,2026-01-06,abc,1\n\
O4,,2026-01-06,5,1\n\
O5,C1,2026-01-07,5,-1\n\
O6,C2,2026-01-08,7.5,2\n\
O7,C2,2026-01-08,7.5,2,extra\n".as_bytes());
        let report = import_file(&db.db, &orders, &options(RecordKind::Orders)).unwrap();
        assert_eq!(report.status, RunStatus::CompletedWithRejects);
        assert_eq!((report.totals.rows_read, report.totals.rows_written, report.totals.rows_rejected), (7, 2, 5));
        assert_eq!(report.totals.customers_created, 2);
        let mut conn = db.conn();
        assert_eq!(table_counts(&mut conn).unwrap().orders, 2);
        let rejects = rejects_of_run(&mut conn, report.run, 100).unwrap();
        let summary: Vec<(u64, Option<&str>)> = rejects.iter().map(|r| (r.line, r.field.as_deref())).collect();
        assert_eq!(summary, vec![(3, Some("order_date")), (4, Some("amount")), (5, Some("customer_id")), (6, Some("quantity")), (8, None)]);
        assert!(rejects[0].reason.contains("'2026-13-05' is not a date"), "{}", rejects[0].reason);
        assert_eq!(rejects[1].raw_record, "O3,C1,2026-01-06,abc,1");
        assert!(rejects[4].reason.contains("has 6 fields but the header has 5"), "{}", rejects[4].reason);
        let run = find_import_run(&mut conn, report.run).unwrap().unwrap();
        assert_eq!(run.totals.rows_rejected, 5);
    }

    fn unknown_customers_are_rejected_when_creation_is_off(db) {
        let dir = tempfile::tempdir().unwrap();
        let customers = write(dir.path(), "customers.csv", CUSTOMERS.as_bytes());
        import_file(&db.db, &customers, &options(RecordKind::Customers)).unwrap();
        let orders = write(dir.path(), "orders.csv", b"order_id,customer_id,order_date,amount\nO1,C1,2026-01-05,1\nO2,C404,2026-01-05,2\n");
        let settings = ImportSettings { create_missing_customers: false, ..ImportSettings::default() };
        let options = FileImportOptions::from_settings(&settings, RecordKind::Orders, ColumnMapping::default()).unwrap();
        let report = import_file(&db.db, &orders, &options).unwrap();
        assert_eq!((report.totals.rows_written, report.totals.rows_rejected), (1, 1));
        let rejects = rejects_of_run(&mut db.conn(), report.run, 10).unwrap();
        assert_eq!(rejects[0].line, 3);
        assert_eq!(rejects[0].raw_record, "O2,C404,2026-01-05,2");
        assert!(rejects[0].reason.contains("no customer with this id"));
    }

    fn gbk_file_with_chinese_headers_imports(db) {
        let dir = tempfile::tempdir().unwrap();
        let text = "订单编号,客户编号,客户名称,下单日期,金额,负责人邮箱,备注\r\n\
D001,K01,杭州云帆科技有限公司,2026年3月4日,1234.56,han@example.com,加急\r\n\
D002,K02,北京星河贸易有限公司,2026-03-05,99,,\r\n";
        let (gbk, _, unmappable) = encoding_rs::GBK.encode(text);
        assert!(!unmappable);
        let path = write(dir.path(), "订单.csv", &gbk);
        let mut opts = options(RecordKind::Orders);
        opts.mapping = zh_mapping();
        let report = import_file(&db.db, &path, &opts).unwrap();
        assert_eq!(report.encoding, "gb18030");
        assert_eq!((report.totals.rows_written, report.totals.rows_rejected), (2, 0), "{:?}", report.first_rejects);
        assert_eq!(report.totals.unused_columns, vec!["备注".to_string()]);
        let customer = find_customer(&mut db.conn(), "file", "K01").unwrap().unwrap();
        assert_eq!(customer.name, "杭州云帆科技有限公司");
        assert_eq!(customer.owner_email.as_deref(), Some("han@example.com"));
        let orders = orders_of_customer(&mut db.conn(), customer.id).unwrap();
        assert_eq!((orders[0].amount_minor, orders[0].order_date.to_string()), (123_456, "2026-03-04".to_string()));
    }

    fn utf8_bom_and_semicolons_are_handled(db) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "owners.csv", "\u{feff}email;name;locale\nli@example.com;李雷;zh-CN\nemma@example.com;Emma;en\n".as_bytes());
        let report = import_file(&db.db, &path, &options(RecordKind::Owners)).unwrap();
        assert_eq!((report.totals.rows_written, report.totals.rows_rejected), (2, 0), "{:?}", report.first_rejects);
    }

    fn xlsx_file_imports(db) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("customers.xlsx");
        let mut workbook = rust_xlsxwriter::Workbook::new();
        let sheet = workbook.add_worksheet();
        sheet.set_name("客户").unwrap();
        for (col, header) in ["客户编号", "客户名称", "NPS评分", "创建日期", "客户评级"].iter().enumerate() {
            sheet.write_string(0, col as u16, *header).unwrap();
        }
        sheet.write_string(1, 0, "K01").unwrap();
        sheet.write_string(1, 1, "云帆科技").unwrap();
        sheet.write_number(1, 2, 45.0).unwrap();
        let date = rust_xlsxwriter::ExcelDateTime::from_ymd(2025, 6, 30).unwrap();
        let format = rust_xlsxwriter::Format::new().set_num_format("yyyy-mm-dd");
        sheet.write_datetime_with_format(1, 3, &date, &format).unwrap();
        sheet.write_number(1, 4, 4.0).unwrap();
        sheet.write_string(2, 0, "K02").unwrap();
        sheet.write_string(2, 1, "星河贸易").unwrap();
        sheet.write_string(2, 2, "n/a").unwrap();
        workbook.save(&path).unwrap();

        let mut opts = options(RecordKind::Customers);
        opts.mapping = zh_mapping();
        let report = import_file(&db.db, &path, &opts).unwrap();
        assert_eq!(report.encoding, "xlsx");
        assert_eq!((report.totals.rows_written, report.totals.rows_rejected), (1, 1));
        assert_eq!(report.first_rejects[0].line, 3);
        assert_eq!(report.first_rejects[0].field.as_deref(), Some("NPS评分"));
        let customer = find_customer(&mut db.conn(), "file", "K01").unwrap().unwrap();
        assert_eq!(customer.attributes.get("nps"), Some(&45.0));
        assert_eq!(customer.created_on.map(|d| d.to_string()).as_deref(), Some("2025-06-30"));
        assert_eq!(customer.prospect_rating, Some(4));
    }

    fn missing_required_column_is_a_clear_error(db) {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "orders.csv", b"order_id,customer_id,date,total\nO1,C1,2026-01-01,5\n");
        let err = import_file(&db.db, &path, &options(RecordKind::Orders)).unwrap_err();
        assert!(matches!(err, ImportError::MissingColumns { .. }));
        let message = err.to_string();
        assert!(message.contains("order_date (looked for \"order_date\")"), "{message}");
        assert!(message.contains("amount (looked for \"amount\")"), "{message}");
        assert!(message.contains("headers are: order_id, customer_id, date, total"), "{message}");
        let mut conn = db.conn();
        assert_eq!(table_counts(&mut conn).unwrap().orders, 0);
        let runs = tierwise_store::runs::recent_import_runs(&mut conn, 1).unwrap();
        assert_eq!(runs[0].status, RunStatus::Failed);
        assert!(runs[0].error.as_deref().unwrap_or("").contains("order_date"));
    }

    fn many_invoices_and_activities_load_exactly_as_written(db) {
        // 150 rows: two statements of 64 rows on SQLite and 22 rows one at a time, every
        // optional column both empty and filled.
        let dir = tempfile::tempdir().unwrap();
        import_file(&db.db, &write(dir.path(), "c.csv", CUSTOMERS.as_bytes()), &options(RecordKind::Customers)).unwrap();
        let date = |day: u32| chrono::NaiveDate::from_ymd_opt(2026, 1 + day / 28, 1 + day % 28).unwrap();
        let (mut invoices, mut activities) = (
            String::from("invoice_id,customer_id,order_id,issued_date,due_date,amount,paid_date\n"),
            String::from("activity_id,customer_id,kind,occurred_at,owner_email,note\n"),
        );
        let (mut expected_invoices, mut expected_activities) = (Vec::new(), Vec::new());
        for i in 0..150u32 {
            let customer = if i % 3 == 0 { "C1" } else { "C2" };
            let order = (i % 2 == 0).then(|| format!("O{i}"));
            let paid = (i % 5 != 0).then(|| date(i + 20));
            invoices.push_str(&format!(
                "I{i:03},{customer},{},{},{},{i}.25,{}\n",
                order.clone().unwrap_or_default(), date(i), date(i + 10), paid.map(|d| d.to_string()).unwrap_or_default(),
            ));
            expected_invoices.push(format!("invoice {:?}", (
                format!("I{i:03}"), customer.to_string(), order, date(i), date(i + 10), i64::from(i) * 100 + 25, "CNY".to_string(), paid,
            )));
            let owner = (i % 4 == 0).then(|| "li@example.com".to_string());
            let note = (i % 3 == 1).then(|| format!("note {i}"));
            let kind = if i % 2 == 0 { "call" } else { "visit" };
            activities.push_str(&format!(
                "A{i:03},{customer},{kind},{}T09:30:00Z,{},{}\n",
                date(i), owner.clone().unwrap_or_default(), note.clone().unwrap_or_default(),
            ));
            expected_activities.push(format!("activity {:?}", (
                format!("A{i:03}"), customer.to_string(), owner, kind.to_string(),
                date(i).and_hms_opt(9, 30, 0).unwrap(), note,
            )));
        }
        for (name, content, kind) in [("i.csv", &invoices, RecordKind::Invoices), ("a.csv", &activities, RecordKind::Activities)] {
            let report = import_file(&db.db, &write(dir.path(), name, content.as_bytes()), &options(kind)).unwrap();
            assert_eq!((report.totals.rows_written, report.totals.rows_rejected), (150, 0), "{kind:?}");
            // Loaded again: nothing changed, nothing written.
            let report = import_file(&db.db, &write(dir.path(), name, content.as_bytes()), &options(kind)).unwrap();
            assert_eq!((report.totals.rows_written, report.totals.rows_unchanged), (0, 150), "{kind:?}");
        }
        assert_eq!(invoice_snapshot(&mut db.conn(), "file"), expected_invoices);
        assert_eq!(activity_snapshot(&mut db.conn(), "file"), expected_activities);
    }

    fn invoices_and_activities_import(db) {
        let dir = tempfile::tempdir().unwrap();
        import_file(&db.db, &write(dir.path(), "c.csv", CUSTOMERS.as_bytes()), &options(RecordKind::Customers)).unwrap();
        let invoices = write(dir.path(), "i.csv", b"invoice_id,customer_id,order_id,issued_date,due_date,amount,paid_date\n\
I1,C1,O1,2026-01-05,2026-02-04,100.50,2026-02-01\n\
I2,C1,O2,2026-02-05,2026-03-07,10,2026-01-01\n");
        let report = import_file(&db.db, &invoices, &options(RecordKind::Invoices)).unwrap();
        assert_eq!((report.totals.rows_written, report.totals.rows_rejected), (1, 1));
        assert!(report.first_rejects[0].reason.contains("before the issue date"));
        assert_eq!(report.first_rejects[0].field.as_deref(), Some("paid_date"));
        let activities = write(dir.path(), "a.csv", "activity_id,customer_id,kind,occurred_at,owner_email,note\n\
A1,C1,拜访,2026-02-01T09:30:00+08:00,li@example.com,季度回访\n\
A2,C9,call,2026-02-02,,\n\
A3,C2,fax,2026-02-02,,\n".as_bytes());
        let report = import_file(&db.db, &activities, &options(RecordKind::Activities)).unwrap();
        assert_eq!((report.totals.rows_written, report.totals.rows_rejected), (1, 2));
        let lines: Vec<u64> = report.first_rejects.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![4, 3], "parse rejects come first, unknown customers at the chunk's end");
        assert_eq!(table_counts(&mut db.conn()).unwrap().activities, 1);
    }
}
