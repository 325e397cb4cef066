//! Properties of the grading model that must hold for any population.
#![expect(clippy::unwrap_used, reason = "tests")]

use chrono::{Days, NaiveDate};
use proptest::prelude::*;
use tierwise_domain::CustomerId;
use tierwise_domain::grading::{CustomerFacts, Policy, ProfitFacts, grade_population};

fn as_of() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 31).unwrap()
}

/// (recency days, orders, amount, profit)
type Row = (u16, u8, i32, i16);

fn facts(rows: &[Row]) -> Vec<CustomerFacts> {
    rows.iter()
        .enumerate()
        .map(|(i, &(recency, orders, amount, profit))| {
            let latest = as_of() - Days::new(u64::from(recency % 700));
            CustomerFacts {
                customer: CustomerId(i as i64 + 1),
                window_orders: u32::from(orders) + 1,
                window_amount: i64::from(amount),
                window_latest: Some(latest),
                window_profit: ProfitFacts {
                    costed_profit: i64::from(profit),
                    ..ProfitFacts::default()
                },
                lifetime_orders: u32::from(orders) + 1,
                last_order: Some(latest),
                ..CustomerFacts::default()
            }
        })
        .collect()
}

fn rows() -> impl Strategy<Value = Vec<Row>> {
    // Small value ranges make ties common.
    prop::collection::vec((0u16..60, 0u8..6, -50i32..400, -20i16..80), 1..80)
}

proptest! {
    #[test]
    fn scores_are_between_one_and_k(rows in rows(), k in 2u8..=10) {
        let mut policy = Policy::default();
        policy.rfm.buckets = k;
        let outcome = grade_population(&facts(&rows), as_of(), &policy).unwrap();
        for g in &outcome.grades {
            for s in g.rfm.unwrap() {
                prop_assert!((1..=k).contains(&s));
            }
            let c = g.composite.unwrap();
            prop_assert!((0.0..=100.0).contains(&c));
        }
    }

    #[test]
    fn equal_inputs_get_equal_scores(rows in rows(), pick in any::<prop::sample::Index>()) {
        let mut rows = rows;
        let twin = rows[pick.index(rows.len())];
        rows.push(twin);
        let outcome = grade_population(&facts(&rows), as_of(), &Policy::default()).unwrap();
        let a = &outcome.grades[pick.index(rows.len() - 1)];
        let b = outcome.grades.last().unwrap();
        prop_assert_eq!(a.rfm, b.rfm);
        prop_assert_eq!(a.segment, b.segment);
        prop_assert_eq!(a.composite, b.composite);
    }

    #[test]
    fn raising_monetary_never_lowers_m_score_or_composite(
        rows in rows(),
        pick in any::<prop::sample::Index>(),
        raise in 1i32..500,
    ) {
        let before = grade_population(&facts(&rows), as_of(), &Policy::default()).unwrap();
        let i = pick.index(rows.len());
        let mut raised = rows.clone();
        raised[i].2 += raise;
        let after = grade_population(&facts(&raised), as_of(), &Policy::default()).unwrap();
        let (b, a) = (&before.grades[i], &after.grades[i]);
        prop_assert!(a.rfm.unwrap()[2] >= b.rfm.unwrap()[2]);
        prop_assert!(a.composite.unwrap() >= b.composite.unwrap() - 1e-12);
    }

    #[test]
    fn proportions_fill_each_tier_with_round_n_share(n in 1usize..300) {
        // Distinct amounts and everything else equal: composites are all distinct.
        let rows: Vec<Row> = (0..n).map(|i| (5, 1, i as i32 * 3 + 1, 0)).collect();
        let policy = Policy::default();
        let outcome = grade_population(&facts(&rows), as_of(), &policy).unwrap();
        let mut counts = vec![0usize; policy.tiers.levels.len()];
        for g in &outcome.grades {
            counts[usize::from(g.computed_tier.unwrap())] += 1;
        }
        let mut cumulative = 0.0;
        let mut previous_bound = 0usize;
        for (t, level) in policy.tiers.levels.iter().enumerate() {
            cumulative += level.share;
            let bound = (n as f64 * cumulative).round() as usize;
            prop_assert_eq!(counts[t], bound - previous_bound, "tier {}", t);
            previous_bound = bound;
        }
    }
}
