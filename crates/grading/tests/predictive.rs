//! The predictive models in a grading run, on both backends: what a published run stores per
//! customer equals the model applied to that customer's own orders, recomputed here from the
//! fixture file; the run keeps the fitted parameters; a population the model cannot fit still
//! publishes, without predictions.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::HashMap;
use std::path::Path;

use chrono::NaiveDate;
use tierwise_domain::Period;
use tierwise_domain::grading::{Policy, PredictiveModel, TimeUnit};
use tierwise_domain::predictive::{
    ClvHorizon, RepeatSummary, SpendSummary, Variant, discounted_clv, expected_average_value,
    expected_purchases, fit, p_alive,
};
use tierwise_grading::{Mode, grade_period};
use tierwise_import::{ColumnMapping, FileImportOptions, ImportSettings, RecordKind, import_file};
use tierwise_store::backend_tests;
use tierwise_store::grading::{GradePrediction, for_each_graded_customer, published_run};
use tierwise_store::testing::TestDb;

const FIXTURE: &str = "tests/fixtures/peer_orders.csv";

fn import(db: &TestDb, path: &Path) {
    let options = FileImportOptions::from_settings(
        &ImportSettings::default(),
        RecordKind::Orders,
        ColumnMapping::default(),
    )
    .unwrap();
    let report = import_file(&db.db, path, &options).unwrap();
    assert_eq!(report.totals.rows_rejected, 0);
}

fn cents(text: &str) -> i64 {
    let (units, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let fraction = format!("{fraction:0<2}");
    units.parse::<i64>().unwrap() * 100 + fraction[..2].parse::<i64>().unwrap()
}

fn day(text: &str) -> NaiveDate {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
}

/// One customer's history as the test reads it from the fixture, independent of the store.
#[derive(Default)]
struct History {
    /// Amount per order day.
    by_day: std::collections::BTreeMap<NaiveDate, i64>,
    last_year_revenue: i64,
    last_year_profit: i64,
}

impl History {
    /// (x, t_x, T) in days as of `as_of`.
    fn summary(&self, as_of: NaiveDate) -> RepeatSummary {
        let first = *self.by_day.keys().next().unwrap();
        let last = *self.by_day.keys().next_back().unwrap();
        RepeatSummary::new(
            u32::try_from(self.by_day.len() - 1).unwrap(),
            (last - first).num_days() as f64,
            (as_of - first).num_days() as f64,
        )
        .unwrap()
    }

    /// Repeat days and their average amount (the first day left out).
    fn spend(&self) -> Option<SpendSummary> {
        let repeats = self.by_day.len() - 1;
        let total: i64 = self.by_day.values().skip(1).sum();
        (repeats > 0 && total > 0).then(|| SpendSummary {
            transactions: u32::try_from(repeats).unwrap(),
            average: total as f64 / repeats as f64,
        })
    }

    fn margin(&self) -> f64 {
        if self.last_year_revenue > 0 {
            self.last_year_profit as f64 / self.last_year_revenue as f64
        } else {
            1.0
        }
    }
}

fn histories(path: &Path, as_of: NaiveDate) -> HashMap<String, History> {
    let year_start = day("2025-10-31");
    let mut out: HashMap<String, History> = HashMap::new();
    let mut reader = csv::Reader::from_path(path).unwrap();
    for record in reader.records() {
        let r = record.unwrap();
        let (customer, date, amount, cost) = (&r[0], day(&r[2]), cents(&r[3]), cents(&r[4]));
        assert!(date <= as_of, "the fixture ends at the as-of date");
        let h = out.entry(customer.to_owned()).or_default();
        *h.by_day.entry(date).or_default() += amount;
        if date > year_start {
            h.last_year_revenue += amount;
            h.last_year_profit += amount - cost;
        }
    }
    out
}

fn predictions(db: &TestDb, period: Period) -> HashMap<String, GradePrediction> {
    let mut out = HashMap::new();
    for_each_graded_customer(&mut db.conn(), period, |c| {
        out.insert(c.external_id, c.prediction);
        Ok(())
    })
    .unwrap();
    out
}

fn close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tolerance * (1.0 + expected.abs()),
        "{what}: stored {actual}, recomputed {expected}"
    );
}

backend_tests! {
    fn stored_predictions_equal_the_model_applied_to_each_customers_orders(db) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
        import(&db, &path);
        let period = Period::parse("2026-10").unwrap();
        let as_of = period.as_of();
        let report = grade_period(&db.db, period, &Policy::default(), Mode::Publish).unwrap();
        let model = report.predictive.clone().expect("the model fits 400 customers");
        assert_eq!(report.predictive_error, None);

        // The run keeps what was fitted.
        let run = published_run(&mut db.conn(), period).unwrap().unwrap();
        let json = run.predictive.unwrap();
        assert_eq!(json, serde_json::to_string(&model).unwrap());
        let stored: PredictiveModel = serde_json::from_str(&json).unwrap();
        assert_eq!(stored.purchases.variant, Variant::Modified);
        assert_eq!(stored.customers, 400);

        // Fitted independently on the test's own summaries, the optimum is the same.
        let histories = histories(&path, as_of);
        let data: Vec<(RepeatSummary, f64)> =
            histories.values().map(|h| (h.summary(as_of), 1.0)).collect();
        assert_eq!(
            stored.repeat_buyers,
            data.iter().filter(|(c, _)| c.frequency > 0).count() as u64
        );
        let own = fit(Variant::Modified, &data).unwrap();
        let (p, q) = (own.params, stored.purchases.params);
        for (mine, theirs, name) in [(p.r, q.r, "r"), (p.alpha, q.alpha, "alpha"), (p.a, q.a, "a"), (p.b, q.b, "b")] {
            close(theirs, mine, 1e-3, name);
        }
        let spend = stored.spend.expect("repeat buyers spend");

        // Per customer, the stored values are the stored models applied to its own orders.
        let stored_predictions = predictions(&db, period);
        assert_eq!(stored_predictions.len(), 400);
        let horizon = ClvHorizon { months: 12, monthly_discount: 0.01, units_per_month: 30.4375 };
        for (id, h) in &histories {
            let got = &stored_predictions[id];
            let c = h.summary(as_of);
            let alive = p_alive(&q, Variant::Modified, &c);
            close(got.p_alive.unwrap(), alive, 1e-12, "p_alive");
            let in_90 = expected_purchases(&q, Variant::Modified, &c, 90.0);
            close(got.expected_purchases_90d.unwrap(), in_90.unwrap(), 1e-12, "E[Y(90 days)]");
            let in_year = expected_purchases(&q, Variant::Modified, &c, 365.25).unwrap();
            close(got.expected_purchases_12m.unwrap(), in_year, 1e-12, "E[Y(12 months)]");
            let value = expected_average_value(&spend.params, h.spend().as_ref()).unwrap();
            assert_eq!(got.expected_order_value, Some(value.round() as i64), "{id}");
            let clv = discounted_clv(&q, Variant::Modified, &c, value, h.margin(), &horizon).unwrap();
            // The run scales one discounted sum per summary; rounding may differ by a unit.
            assert!((got.clv_model.unwrap() as f64 - clv).abs() <= 1.0, "{id}: {got:?} vs {clv}");
            assert!((0.0..=1.0).contains(&alive));
        }

        // The settings reach the run: BG/NBD in weeks.
        let mut weekly = Policy::default();
        weekly.predictive.variant = Variant::Bg;
        weekly.predictive.time_unit = TimeUnit::Weeks;
        let again = grade_period(&db.db, period, &weekly, Mode::Publish).unwrap();
        let model = again.predictive.unwrap();
        assert_eq!((model.purchases.variant, model.time_unit), (Variant::Bg, TimeUnit::Weeks));
        assert_ne!(again.policy_hash, report.policy_hash, "the settings are part of the policy");
        // In BG/NBD a customer who never came back is certainly alive.
        let weekly_predictions = predictions(&db, period);
        for (id, h) in &histories {
            if h.by_day.len() == 1 {
                assert_eq!(weekly_predictions[id].p_alive, Some(1.0), "{id}");
            }
        }

        // Switched off, the run stores no predictions.
        let mut off = Policy::default();
        off.predictive.enabled = false;
        let quiet = grade_period(&db.db, period, &off, Mode::Publish).unwrap();
        assert!(quiet.predictive.is_none() && quiet.predictive_error.is_none());
        assert!(predictions(&db, period).values().all(|p| *p == GradePrediction::default()));
    }

    fn a_run_starts_its_fit_from_the_previous_periods_parameters(db) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
        import(&db, &path);
        let (september, october) = (Period::parse("2026-09").unwrap(), Period::parse("2026-10").unwrap());
        let policy = Policy::default();
        // October alone: a cold start.
        let cold = grade_period(&db.db, october, &policy, Mode::Publish).unwrap().predictive.unwrap();
        // With September published first, October starts from September's parameters.
        grade_period(&db.db, september, &policy, Mode::Publish).unwrap();
        let warm = grade_period(&db.db, october, &policy, Mode::Publish).unwrap().predictive.unwrap();
        assert!(
            warm.purchases.iterations < cold.purchases.iterations,
            "{} vs {}",
            warm.purchases.iterations,
            cold.purchases.iterations
        );
        let (w, c) = (warm.purchases.params, cold.purchases.params);
        for (warm, cold, name) in [(w.r, c.r, "r"), (w.alpha, c.alpha, "alpha"), (w.a, c.a, "a"), (w.b, c.b, "b")] {
            close(warm, cold, 1e-3, name);
        }
        close(warm.purchases.log_likelihood, cold.purchases.log_likelihood, 1e-9, "log-likelihood");
    }

    fn a_population_the_model_cannot_fit_still_publishes_without_predictions(db) {
        // Twelve customers who each bought once: nothing tells buying rate from drop-out.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("once.csv");
        let mut csv = String::from("order_id,customer_id,order_date,amount\n");
        for i in 1..=12 {
            csv.push_str(&format!("O{i},C{i:02},2026-10-{i:02},{}\n", 100 * i));
        }
        std::fs::write(&path, csv).unwrap();
        import(&db, &path);
        let period = Period::parse("2026-10").unwrap();
        let report = grade_period(&db.db, period, &Policy::default(), Mode::Publish).unwrap();
        assert!(report.predictive.is_none());
        let error = report.predictive_error.unwrap();
        assert!(error.contains("no customer bought more than once"), "{error}");
        let run = published_run(&mut db.conn(), period).unwrap().unwrap();
        assert_eq!(run.predictive, None);
        assert_eq!(run.predictive_error.as_deref(), Some(error.as_str()));
        let stored = predictions(&db, period);
        assert_eq!(stored.len(), 12);
        assert!(stored.values().all(|p| *p == GradePrediction::default()));
    }
}
