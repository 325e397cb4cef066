//! Hand-worked cases for every rule of the grading contract (../shared/docs/grading-model.md),
//! including ties, N = 1, all-equal values, negative monetary, no invoices, hysteresis over three
//! periods and expired overrides. The arithmetic behind each expectation is in the comments.
#![expect(clippy::unwrap_used, reason = "tests")]

use chrono::NaiveDate;
use tierwise_domain::CustomerId;
use tierwise_domain::grading::engine::{abc_classes, computed_tiers, hysteresis};
use tierwise_domain::grading::policy::{
    AbcBasis, CustomComponent, Direction, SegmentPreset, TierMode,
};
use tierwise_domain::grading::{
    AbcClass, CustomerFacts, InvoiceFacts, Lifecycle, Override, OverrideKind, Policy,
    PreviousGrade, ProfitFacts, TierReason, YearAgoGrade, grade_population,
};

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

const AS_OF: &str = "2026-10-31";

/// A customer with `orders` window orders summing to `amount`, the latest `recency` days before
/// D, all costed at a profit of a fifth of the amount.
fn customer(id: i64, recency: i64, orders: u32, amount: i64) -> CustomerFacts {
    let as_of = date(AS_OF);
    let latest = as_of - chrono::Days::new(recency as u64);
    CustomerFacts {
        customer: CustomerId(id),
        window_orders: orders,
        window_amount: amount,
        window_latest: Some(latest),
        window_profit: ProfitFacts {
            costed_profit: amount / 5,
            ..ProfitFacts::default()
        },
        lifetime_orders: orders,
        first_order: Some(latest - chrono::Days::new(30 * u64::from(orders))),
        last_order: Some(latest),
        median_gap_days: (orders >= 2).then_some(30.0),
        last_year_revenue: amount,
        last_year_profit: ProfitFacts {
            costed_profit: amount / 5,
            ..ProfitFacts::default()
        },
        ..CustomerFacts::default()
    }
}

fn scores(customers: &[CustomerFacts], policy: &Policy) -> Vec<[u8; 3]> {
    let outcome = grade_population(customers, date(AS_OF), policy).unwrap();
    outcome.grades.iter().map(|g| g.rfm.unwrap()).collect()
}

fn segments(customers: &[CustomerFacts], policy: &Policy) -> Vec<String> {
    let outcome = grade_population(customers, date(AS_OF), policy).unwrap();
    let keys: Vec<&str> = outcome.segments.keys().collect();
    outcome
        .grades
        .iter()
        .map(|g| keys[usize::from(g.segment.unwrap())].to_owned())
        .collect()
}

/// Five customers with ties on every axis and a negative monetary.
fn five() -> Vec<CustomerFacts> {
    vec![
        customer(1, 10, 5, 500),
        customer(2, 10, 1, 100),
        customer(3, 40, 3, 300),
        customer(4, 200, 3, -50),
        customer(5, 5, 2, 300),
    ]
}

#[test]
fn rfm_scores_use_min_rank_quantiles_with_ties() {
    // R ranks −days ascending: 200 → 1, 40 → 2, 10 and 10 → 3, 5 → 5; N = 5 so score = rank.
    // F: 1 → 1, 2 → 2, 3 and 3 → 3, 5 → 5.  M: −50 → 1, 100 → 2, 300 and 300 → 3, 500 → 5.
    let got = scores(&five(), &Policy::default());
    assert_eq!(
        got,
        vec![[3, 5, 5], [3, 1, 2], [2, 3, 3], [1, 3, 1], [5, 2, 3]]
    );
}

#[test]
fn rfm8_segments_compare_with_the_mean_in_integers() {
    // Σ R = Σ F = Σ M = 14, N = 5: high when 5·score ≥ 14, i.e. score ≥ 3.
    let got = segments(&five(), &Policy::default());
    assert_eq!(
        got,
        [
            "important_value",   // R3 F5 M5
            "general_develop",   // R3 F1 M2
            "important_retain",  // R2 F3 M3
            "general_retain",    // R1 F3 M1
            "important_develop", // R5 F2 M3
        ]
    );
}

#[test]
fn abc_classes_follow_the_pareto_cuts_with_ties_by_position() {
    // Total 1150. Descending: #1 500 (before 0) A; #3 300 (before 500: 50000 < 92000) A;
    // #5 300 (before 800: 80000 < 92000) A; #2 100 (before 1100: 110000 ≥ 109250) C; #4 −50 C.
    let outcome = grade_population(&five(), date(AS_OF), &Policy::default()).unwrap();
    let abc: Vec<AbcClass> = outcome.grades.iter().map(|g| g.abc.unwrap()).collect();
    use AbcClass::{A, B, C};
    assert_eq!(abc, vec![A, C, A, C, A]);
    // A tie straddling the cut: the earlier customer in tie-break order gets the better class.
    assert_eq!(
        abc_classes(&[Some(50), Some(30), Some(30)], [0.80, 0.95]),
        // 50: before 0 → A; 30 (first): before 50 of 110 → 45 % → A; 30 (second): before 80 → 72.7 % → A.
        vec![A, A, A]
    );
    assert_eq!(
        abc_classes(&[Some(10), Some(80), Some(10)], [0.80, 0.95]),
        // 80 A (before 0); first 10: before 80 = 80 % → not < 80 → B (80 < 95); second: before 90 → B.
        vec![B, A, B]
    );
    // Exactly 95 % ahead is C.
    assert_eq!(abc_classes(&[Some(95), Some(5)], [0.80, 0.95]), vec![A, C]);
    // Total ≤ 0: everyone is C.
    assert_eq!(
        abc_classes(&[Some(10), Some(-20)], [0.80, 0.95]),
        vec![C, C]
    );
    // Unknown values (profit basis) are C and do not count toward the total.
    assert_eq!(abc_classes(&[None, Some(10)], [0.80, 0.95]), vec![C, A]);
}

#[test]
fn a_single_customer_is_graded_against_itself() {
    let one = vec![customer(1, 3, 2, 1000)];
    let outcome = grade_population(&one, date(AS_OF), &Policy::default()).unwrap();
    let g = &outcome.grades[0];
    // rank 1 of 1: score floor(5·0/1) + 1 = 1 on every axis; mean 1, so every axis is high.
    assert_eq!(g.rfm, Some([1, 1, 1]));
    assert_eq!(segments(&one, &Policy::default()), ["important_value"]);
    assert_eq!(g.abc, Some(AbcClass::A));
    // percent_rank is 1.0 when N = 1; no invoice, no prospect: composite 100.
    assert_eq!(g.composite, Some(100.0));
    // Proportions with N = 1: bounds round(0.1) = 0, round(0.3) = 0, round(0.6) = 1 → tier C.
    assert_eq!(g.computed_tier, Some(2));
}

#[test]
fn all_equal_customers_score_equally_and_split_by_position() {
    let same: Vec<CustomerFacts> = (1..=4).map(|id| customer(id, 20, 2, 100)).collect();
    let outcome = grade_population(&same, date(AS_OF), &Policy::default()).unwrap();
    for g in &outcome.grades {
        assert_eq!(g.rfm, Some([1, 1, 1]));
        assert_eq!(g.composite, Some(0.0));
        assert_eq!(g.abc, Some(AbcClass::A)); // before 300 of 400 = 75 % < 80 %
    }
    // N = 4: bounds 0, 1, 2, 4 → positions 1..4 get B, C, D, D (ties keep input order).
    let tiers: Vec<u8> = outcome
        .grades
        .iter()
        .map(|g| g.computed_tier.unwrap())
        .collect();
    assert_eq!(tiers, vec![1, 2, 3, 3]);
}

#[test]
fn proportions_put_round_n_share_customers_in_each_tier() {
    let composites: Vec<f64> = (0..10).map(f64::from).collect();
    let tiers = computed_tiers(&composites, &Policy::default());
    // Descending: 9 → A (j=1 ≤ 1), 8,7 → B (≤ 3), 6,5,4 → C (≤ 6), rest D.
    assert_eq!(tiers, vec![3, 3, 3, 3, 2, 2, 2, 1, 1, 0]);
}

#[test]
fn thresholds_mode_uses_minimum_scores() {
    let mut policy = Policy::default();
    policy.tiers.mode = TierMode::Thresholds;
    let tiers = computed_tiers(&[75.0, 74.9, 55.0, 35.0, 34.9, 0.0], &policy);
    assert_eq!(tiers, vec![0, 1, 1, 2, 3, 3]);
}

#[test]
fn composite_renormalises_over_the_components_a_customer_has() {
    // Two customers, no invoices (credit unrated), no prospect rating.
    let pair = vec![customer(1, 5, 4, 400), customer(2, 50, 2, 100)];
    let outcome = grade_population(&pair, date(AS_OF), &Policy::default()).unwrap();
    // Customer 1 tops value, frequency, recency and profit: all percent ranks 1 → 100.
    assert_eq!(outcome.grades[0].composite, Some(100.0));
    assert_eq!(outcome.grades[1].composite, Some(0.0));
    assert_eq!(outcome.grades[0].credit, None);

    // With invoices paid half on time, customer 2 gets credit 0.5 at weight 0.20:
    // composite = 100 · (0.20 · 0.5) / (0.35 + 0.20 + 0.15 + 0.15 + 0.15) = 10.
    let mut pair = pair;
    pair[1].invoices = InvoiceFacts {
        due_amount: 100,
        on_time_amount: 50,
        ..InvoiceFacts::default()
    };
    let outcome = grade_population(&pair, date(AS_OF), &Policy::default()).unwrap();
    let composite = outcome.grades[1].composite.unwrap();
    assert!((composite - 10.0).abs() < 1e-9, "{composite}");
}

#[test]
fn unknown_profit_drops_out_unless_a_default_margin_is_set() {
    let mut pair = vec![customer(1, 5, 4, 400), customer(2, 50, 2, 100)];
    pair[1].window_profit = ProfitFacts {
        costed_profit: 0,
        uncosted_amount: 100,
        uncosted_orders: 2,
    };
    let outcome = grade_population(&pair, date(AS_OF), &Policy::default()).unwrap();
    assert_eq!(outcome.grades[1].profit, None);
    assert!(outcome.grades[1].component(4).is_none());
    // Customer 1 is ranked for profit alone among those that have it: percent_rank 1.0 (N = 1).
    assert_eq!(outcome.grades[0].component(4), Some(1.0));

    let mut policy = Policy::default();
    policy.profit.default_margin_rate = Some(0.25);
    let outcome = grade_population(&pair, date(AS_OF), &policy).unwrap();
    assert_eq!(outcome.grades[1].profit, Some(25));
}

#[test]
fn prospect_rating_counts_only_for_new_customers() {
    let mut pair = vec![customer(1, 5, 1, 100), customer(2, 5, 1, 100)];
    // Customer 1: created two months before D, rated 5 → prospect component (5 − 1)/4 = 1.
    pair[0].created_on = Some(date("2026-08-31"));
    pair[0].prospect_rating = Some(5);
    // Customer 2: rated 5 but created a year ago → no prospect component.
    pair[1].created_on = Some(date("2025-10-31"));
    pair[1].prospect_rating = Some(5);
    let outcome = grade_population(&pair, date(AS_OF), &Policy::default()).unwrap();
    assert_eq!(outcome.grades[0].component(5), Some(1.0));
    assert_eq!(outcome.grades[1].component(5), None);
    // Both tie at 0 on the rest: composite 1 = 100 · 0.25 / (0.8 + 0.25), composite 2 = 0.
    let c = outcome.grades[0].composite.unwrap();
    assert!((c - 100.0 * 0.25 / 1.05).abs() < 1e-9, "{c}");
}

#[test]
fn custom_components_rank_over_the_customers_that_have_the_attribute() {
    let mut three = vec![
        customer(1, 5, 1, 100),
        customer(2, 5, 1, 100),
        customer(3, 5, 1, 100),
    ];
    three[0].attributes = vec![("complaints".into(), 9.0)].into();
    three[1].attributes = vec![("complaints".into(), 1.0)].into();
    let mut policy = Policy::default();
    policy.components.custom.insert(
        "complaints".into(),
        CustomComponent {
            attribute: "complaints".into(),
            weight: 1.0,
            direction: Direction::Lower,
        },
    );
    let outcome = grade_population(&three, date(AS_OF), &policy).unwrap();
    // Fewer complaints is better: customer 2 ranks 1.0, customer 1 ranks 0.0, customer 3 lacks it.
    assert_eq!(&*outcome.grades[0].custom_components, [0.0]);
    assert_eq!(&*outcome.grades[1].custom_components, [1.0]);
    assert!(outcome.grades[2].custom_components[0].is_nan());
    // Everything else ties at percent_rank 0: composite = 100 · 1 / (0.8 + 1) for customer 2.
    let c = outcome.grades[1].composite.unwrap();
    assert!((c - 100.0 / 1.8).abs() < 1e-9, "{c}");
}

#[test]
fn hysteresis_holds_a_demotion_for_the_grace_periods() {
    // Held A (0); computed C (2) three periods running, grace 2.
    let (t1, below1, r1) = hysteresis(2, Some(0), 0, 2);
    assert_eq!(
        (t1, below1, r1),
        (0, 1, TierReason::Held { periods_below: 1 })
    );
    let (t2, below2, r2) = hysteresis(2, Some(t1), below1, 2);
    assert_eq!((t2, below2, r2), (2, 0, TierReason::Computed));
    let (t3, below3, _) = hysteresis(2, Some(t2), below2, 2);
    assert_eq!((t3, below3), (2, 0));
    // A promotion applies at once and resets the count.
    assert_eq!(hysteresis(0, Some(2), 1, 2), (0, 0, TierReason::Computed));
    // A period back at the held tier breaks the streak.
    let (t, below, _) = hysteresis(0, Some(0), 1, 2);
    assert_eq!((t, below), (0, 0));
    // Grace 0 or 1 demotes at once.
    assert_eq!(hysteresis(3, Some(0), 0, 1).0, 3);
}

#[test]
fn hysteresis_runs_through_the_engine_over_three_periods() {
    // Ten customers; customer 1 is the best in period 1 and the worst afterwards.
    let period = |best: bool,
                  previous: PreviousGrade|
     -> (u8, u32, TierReason, Option<NaiveDate>) {
        let mut all: Vec<CustomerFacts> = (2..=10).map(|id| customer(id, 30, 3, 1000)).collect();
        let mut first = if best {
            customer(1, 1, 9, 9000)
        } else {
            customer(1, 300, 1, 10)
        };
        first.previous = previous;
        all.insert(0, first);
        let outcome = grade_population(&all, date(AS_OF), &Policy::default()).unwrap();
        let g = &outcome.grades[0];
        (
            g.assigned_tier.unwrap(),
            g.periods_below,
            g.tier_reason.clone(),
            g.tier_since,
        )
    };
    let (a1, b1, _, since1) = period(true, PreviousGrade::default());
    assert_eq!(a1, 0);
    // A first tier is entered on the run's day.
    assert_eq!(since1, Some(date(AS_OF)));
    let entered = date("2025-03-31");
    let (a2, b2, r2, since2) = period(
        false,
        PreviousGrade {
            assigned_tier: Some(a1),
            periods_below: b1,
            tier_since: Some(entered),
        },
    );
    assert_eq!((a2, b2, r2), (0, 1, TierReason::Held { periods_below: 1 }));
    // Held in the same tier: the day it entered carries over.
    assert_eq!(since2, Some(entered));
    let (a3, b3, r3, since3) = period(
        false,
        PreviousGrade {
            assigned_tier: Some(a2),
            periods_below: b2,
            tier_since: Some(entered),
        },
    );
    assert_eq!((a3, b3, r3), (3, 0, TierReason::Computed));
    // Demoted: a new tier, entered on this run's day.
    assert_eq!(since3, Some(date(AS_OF)));
}

fn pin(tier: &str, until: Option<&str>) -> Option<Box<Override>> {
    Some(Box::new(Override {
        kind: OverrideKind::Pin { tier: tier.into() },
        reason: "strategic partner".into(),
        author: "ops@example.com".into(),
        until: until.map(date),
    }))
}

#[test]
fn overrides_pin_and_block_until_they_expire() {
    let mut all: Vec<CustomerFacts> = (1..=10)
        .map(|id| customer(id, id * 10, 2, 100 * id))
        .collect();
    // Customer 1 (worst) pinned to A until D: applies, inclusive.
    all[0].override_ = pin("A", Some(AS_OF));
    // Customer 2 pinned to A until the day before D: expired, ignored.
    all[1].override_ = pin("A", Some("2026-10-30"));
    // Customer 3 blocked without expiry: leaves G.
    all[2].override_ = Some(Box::new(Override {
        kind: OverrideKind::Block,
        reason: "fraud".into(),
        author: "admin".into(),
        until: None,
    }));
    // Customer 4 blocked until last month: graded normally.
    all[3].override_ = Some(Box::new(Override {
        kind: OverrideKind::Block,
        reason: "dispute".into(),
        author: "admin".into(),
        until: Some(date("2026-09-30")),
    }));
    let outcome = grade_population(&all, date(AS_OF), &Policy::default()).unwrap();
    let g = &outcome.grades;
    assert_eq!(g[0].assigned_tier, Some(0));
    assert!(matches!(g[0].tier_reason, TierReason::Pinned(_)));
    assert_ne!(g[0].computed_tier, Some(0));
    assert_eq!(g[1].tier_reason, TierReason::Computed);
    assert!(!g[2].graded);
    assert_eq!(g[2].assigned_tier, None);
    assert!(matches!(&g[2].tier_reason, TierReason::Blocked(note) if note.reason == "fraud"));
    assert!(g[3].graded);
    assert_eq!(outcome.population, 9);
}

#[test]
fn customers_without_window_orders_get_no_tier_and_a_lifecycle() {
    let mut old = customer(2, 900, 0, 0);
    old.window_latest = None;
    old.lifetime_orders = 3;
    old.last_order = Some(date("2024-01-01"));
    let prospect = CustomerFacts {
        customer: CustomerId(3),
        ..CustomerFacts::default()
    };
    let all = vec![customer(1, 5, 2, 100), old, prospect];
    let outcome = grade_population(&all, date(AS_OF), &Policy::default()).unwrap();
    assert_eq!(outcome.population, 1);
    assert_eq!(outcome.grades[1].assigned_tier, None);
    assert_eq!(outcome.grades[1].lifecycle, Lifecycle::Churned);
    assert_eq!(outcome.grades[2].lifecycle, Lifecycle::Prospect);
    assert_eq!(outcome.grades[2].loyalty_step, None);
}

#[test]
fn average_monetary_ranks_the_mean_order_value() {
    let mut policy = Policy::default();
    policy.rfm.monetary = tierwise_domain::grading::policy::MonetaryMeasure::Average;
    let pair = vec![customer(1, 5, 4, 400), customer(2, 5, 1, 200)];
    let outcome = grade_population(&pair, date(AS_OF), &policy).unwrap();
    // Averages 100 and 200: customer 2 has the higher M score.
    assert_eq!(outcome.grades[0].monetary, 100);
    assert_eq!(outcome.grades[1].monetary, 200);
    // Rank 2 of 2: floor(5·1/2) + 1 = 3; rank 1: 1.
    assert_eq!(outcome.grades[1].rfm.unwrap()[2], 3);
    assert_eq!(outcome.grades[0].rfm.unwrap()[2], 1);
}

#[test]
fn clv_uses_the_measured_churn_rate_of_the_segment() {
    let mut all: Vec<CustomerFacts> = (1..=4).map(|id| customer(id, 5, 2, 1000)).collect();
    // Without history: R = 0.25, P = last-year profit 200 → CLV 800.
    let outcome = grade_population(&all, date(AS_OF), &Policy::default()).unwrap();
    assert_eq!(outcome.grades[0].clv_simple, Some(800));
    // With history: four customers in segment 0 a year ago, one of them churned now.
    let mut churned = customer(5, 400, 0, 0);
    churned.window_latest = None;
    churned.lifetime_orders = 1;
    churned.last_order = Some(date("2025-09-01"));
    all.push(churned);
    for c in &mut all {
        c.year_ago = Some(YearAgoGrade {
            segment: Some(0),
            churned: false,
        });
    }
    let outcome = grade_population(&all, date(AS_OF), &Policy::default()).unwrap();
    assert_eq!(outcome.grades[4].lifecycle, Lifecycle::Churned);
    assert_eq!(outcome.churn_rates[0], Some(0.2));
    // All graded customers are important_value (segment 0): R = 1/5 → CLV 200 / 0.2 = 1000.
    assert_eq!(outcome.grades[0].clv_simple, Some(1000));
}

#[test]
fn rf_grid_and_thresholds_methods() {
    let mut policy = Policy::default();
    policy.segments.preset = SegmentPreset::RfGrid;
    let got = segments(&five(), &policy);
    // R3 F5 → loyal; R3 F1 → about_to_sleep; R2 F3 → at_risk; R1 F3 → at_risk; R5 F2 → potential_loyalist.
    assert_eq!(
        got,
        [
            "loyal",
            "about_to_sleep",
            "at_risk",
            "at_risk",
            "potential_loyalist"
        ]
    );

    policy.rfm.method = tierwise_domain::grading::policy::RfmMethod::Thresholds;
    // Cuts: recency [365, 180, 90, 30], frequency [2, 3, 5, 10], monetary [100000, …].
    let got = scores(&five(), &policy);
    assert_eq!(got[0], [5, 4, 1]); // 10 days ≤ 30 → 5; 5 orders ≥ 5 → 4; 500 < 100000 → 1
    assert_eq!(got[3], [2, 3, 1]); // 200 days ≤ 365 only → 2; 3 orders → 3
}

#[test]
fn profit_basis_abc_puts_unknown_profit_in_c() {
    let mut policy = Policy::default();
    policy.abc.basis = AbcBasis::Profit;
    let mut pair = vec![customer(1, 5, 2, 1000), customer(2, 5, 2, 5000)];
    pair[1].window_profit.uncosted_orders = 1;
    let outcome = grade_population(&pair, date(AS_OF), &policy).unwrap();
    assert_eq!(outcome.grades[0].abc, Some(AbcClass::A));
    assert_eq!(outcome.grades[1].abc, Some(AbcClass::C));
}

#[test]
fn policy_hash_identifies_the_policy() {
    let a = Policy::default();
    let mut b = Policy::default();
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.hash().len(), 16);
    b.components.value = 0.4;
    assert_ne!(a.hash(), b.hash());
    let parsed: Policy = serde_json::from_value(
        serde_json::json!({"lookback_months": 12, "tiers": {"mode": "thresholds"}}),
    )
    .unwrap();
    assert_eq!(parsed.lookback_months, 12);
    assert_eq!(parsed.tiers.mode, TierMode::Thresholds);
    assert_eq!(parsed.tiers.levels.len(), 4);
    let unknown: Result<Policy, _> = serde_json::from_value(serde_json::json!({"lookback": 12}));
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `lookback`")
    );
}

#[test]
fn invalid_policies_name_the_setting() {
    let mut p = Policy::default();
    p.tiers.levels[0].share = 0.5;
    let err = p.validate().unwrap_err();
    assert_eq!(err.field, "tiers.levels");
    assert!(err.reason.contains("add up to 1"), "{err}");

    let mut p = Policy::default();
    p.rfm.buckets = 4;
    p.segments.preset = SegmentPreset::RfGrid;
    assert_eq!(p.validate().unwrap_err().field, "segments.preset");

    let mut p = Policy::default();
    p.abc.cuts = [0.95, 0.80];
    assert_eq!(p.validate().unwrap_err().field, "abc.cuts");
}

#[test]
fn custom_tables_fall_back_to_unclassified_and_unknown_pins_are_counted() {
    let mut policy = Policy::default();
    policy.segments.preset = SegmentPreset::Custom;
    policy.segments.rules = vec![tierwise_domain::grading::policy::SegmentRule {
        key: "big".into(),
        label: None,
        r: "any".into(),
        f: "any".into(),
        m: "5".into(),
    }];
    let mut all = five();
    all[4].override_ = pin("Platinum", None);
    let outcome = grade_population(&all, date(AS_OF), &policy).unwrap();
    let keys: Vec<&str> = outcome.segments.keys().collect();
    let got: Vec<&str> = outcome
        .grades
        .iter()
        .map(|g| keys[usize::from(g.segment.unwrap())])
        .collect();
    // Only customer 1 has M 5; the rest are unclassified but still get a CLV.
    assert_eq!(
        got,
        [
            "big",
            "unclassified",
            "unclassified",
            "unclassified",
            "unclassified"
        ]
    );
    assert!(outcome.grades.iter().all(|g| g.clv_simple.is_some()));
    assert_eq!(outcome.unknown_pin_tiers, 1);
    assert_eq!(outcome.grades[4].tier_reason, TierReason::Computed);
}
