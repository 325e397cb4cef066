//! The predictive models applied to a period's customers: edge cases give defined outputs or a
//! clear error, never NaN, and the per-customer figures follow the model's formulas.
#![expect(clippy::unwrap_used, reason = "tests")]

use chrono::{Days, NaiveDate};
use tierwise_domain::CustomerId;
use tierwise_domain::grading::predict::{margin_share, repeat_summary_days};
use tierwise_domain::grading::{CustomerFacts, Policy, ProfitFacts, predict_population};
use tierwise_domain::predictive::{FitError, RepeatSummary, Variant, expected_purchases, p_alive};

fn as_of() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 31).unwrap()
}

/// A customer whose `days` distinct order days run from `first_ago` to `last_ago` days before
/// D, with `repeat_amount` spent after the first day.
fn buyer(id: i64, days: u32, first_ago: u64, last_ago: u64, repeat_amount: i64) -> CustomerFacts {
    CustomerFacts {
        customer: CustomerId(id),
        lifetime_orders: days,
        order_days: days,
        first_order: Some(as_of() - Days::new(first_ago)),
        last_order: Some(as_of() - Days::new(last_ago)),
        repeat_amount,
        last_year_revenue: 10_000,
        last_year_profit: ProfitFacts {
            costed_profit: 2_500,
            ..ProfitFacts::default()
        },
        ..CustomerFacts::default()
    }
}

/// A varied population: some one-time buyers, some steady, some gone quiet.
fn population(n: i64) -> Vec<CustomerFacts> {
    (0..n)
        .map(|i| {
            let days = 1 + (i % 9) as u32;
            let first = 100 + (i as u64 * 37) % 600;
            let last = if days == 1 {
                first
            } else {
                (i as u64 * 13) % first
            };
            buyer(i, days, first, last, i64::from(days - 1) * (1_000 + 10 * i))
        })
        .collect()
}

#[test]
fn every_buyer_gets_finite_predictions_and_non_buyers_none() {
    let mut customers = population(300);
    customers.push(CustomerFacts {
        customer: CustomerId(1_000),
        ..CustomerFacts::default()
    });
    // First order on D: T = 0.
    customers.push(buyer(1_001, 1, 0, 0, 0));
    // A huge frequency: an order every day for ten years.
    customers.push(buyer(1_002, 3_650, 3_650, 0, 3_649 * 500));
    let out = predict_population(&customers, as_of(), &Policy::default(), None);
    let model = out.model.clone().unwrap();
    assert_eq!(model.customers, 302);
    assert_eq!(out.len(), customers.len());
    assert_eq!(out.get(300), None, "no order, no prediction");
    assert_eq!(
        out.iter().flatten().count(),
        302,
        "every buyer is predicted"
    );
    for (f, p) in customers.iter().zip(out.iter()) {
        let Some(p) = p else { continue };
        assert!((0.0..=1.0).contains(&p.p_alive), "{f:?}: {p:?}");
        for v in [p.purchases_90d, p.purchases_12m, p.order_value, p.clv]
            .into_iter()
            .flatten()
        {
            assert!(v.is_finite(), "{f:?}: {p:?}");
        }
        let (x, recency, age) = repeat_summary_days(f, as_of()).unwrap();
        let c = RepeatSummary::new(x, recency as f64, age as f64).unwrap();
        assert_eq!(
            p.p_alive,
            p_alive(&model.purchases.params, Variant::Modified, &c)
        );
        // Computed once per (x, T) group for the population, the same as one by one.
        assert_eq!(
            p.purchases_90d,
            expected_purchases(&model.purchases.params, Variant::Modified, &c, 90.0)
        );
        assert_eq!(
            p.purchases_12m,
            expected_purchases(&model.purchases.params, Variant::Modified, &c, 365.25)
        );
    }
    let daily = out.get(302).unwrap();
    assert!(
        daily.p_alive > 0.99,
        "a daily buyer seen yesterday is alive: {daily:?}"
    );
    assert!(daily.purchases_90d.unwrap() > 50.0, "{daily:?}");
    // Expected purchases grow with the horizon.
    for p in out.iter().flatten() {
        if let (Some(short), Some(long)) = (p.purchases_90d, p.purchases_12m) {
            assert!(short <= long + 1e-12, "{p:?}");
        }
    }
}

#[test]
fn too_few_customers_or_no_repeat_buyers_is_a_clear_error_and_no_predictions() {
    let one = vec![buyer(1, 3, 200, 10, 3_000)];
    let out = predict_population(&one, as_of(), &Policy::default(), None);
    assert!(matches!(
        out.model,
        Err(FitError::TooFewCustomers { found: 1, .. })
    ));
    assert_eq!((out.len(), out.get(0)), (1, None));

    let once: Vec<CustomerFacts> = (0..50)
        .map(|i| buyer(i, 1, 10 + i as u64, 10 + i as u64, 0))
        .collect();
    let out = predict_population(&once, as_of(), &Policy::default(), None);
    assert_eq!(out.model.clone().unwrap_err(), FitError::NoRepeatBuyers);
    assert!(out.iter().all(|p| p.is_none()));
}

#[test]
fn model_clv_is_the_discounted_purchases_times_value_times_margin() {
    let customers = population(300);
    let out = predict_population(&customers, as_of(), &Policy::default(), None);
    let mut no_discount = Policy::default();
    no_discount.predictive.monthly_discount_rate = 0.0;
    let undiscounted = predict_population(&customers, as_of(), &no_discount, None);
    for ((f, p), q) in customers.iter().zip(out.iter()).zip(undiscounted.iter()) {
        let (p, q) = (p.unwrap(), q.unwrap());
        let margin = margin_share(f, None);
        assert!((margin - 0.25).abs() < 1e-12);
        // Without discount, CLV over 12 months = E[Y(12 months)] · value · margin.
        let plain = q.purchases_12m.unwrap() * q.order_value.unwrap() * margin;
        assert!(
            (q.clv.unwrap() - plain).abs() <= 1e-6 * plain.abs().max(1.0),
            "{q:?}"
        );
        // Discounting only lowers it.
        assert!(p.clv.unwrap() <= q.clv.unwrap() + 1e-9);
    }
}

#[test]
fn margin_share_follows_profit_then_the_default_rate_then_revenue() {
    let mut f = buyer(1, 2, 100, 10, 500);
    assert!((margin_share(&f, None) - 0.25).abs() < 1e-12);
    f.last_year_profit = ProfitFacts {
        costed_profit: 0,
        uncosted_amount: 10_000,
        uncosted_orders: 2,
    };
    assert_eq!(margin_share(&f, None), 1.0, "profit unknown: revenue");
    assert!((margin_share(&f, Some(0.4)) - 0.4).abs() < 1e-12);
    f.last_year_revenue = 0;
    assert_eq!(margin_share(&f, Some(0.3)), 0.3);
    assert_eq!(margin_share(&f, None), 1.0);
}

#[test]
fn predictions_do_not_depend_on_the_customers_order() {
    // A hundred customers share their summary with another one (so share an outlook);
    // reversing the order and interleaving non-buyers must change nothing.
    let mut customers = population(300);
    for i in 0..100 {
        let twin = CustomerFacts {
            customer: CustomerId(5_000 + i),
            ..customers[i as usize * 3].clone()
        };
        customers.push(twin);
    }
    let forward = predict_population(&customers, as_of(), &Policy::default(), None);
    let mut shuffled: Vec<CustomerFacts> = Vec::new();
    for f in customers.iter().rev() {
        shuffled.push(f.clone());
        shuffled.push(CustomerFacts {
            customer: CustomerId(10_000 + f.customer.0),
            ..CustomerFacts::default()
        });
    }
    let backward = predict_population(&shuffled, as_of(), &Policy::default(), None);
    let (a, b) = (
        forward.model.clone().unwrap(),
        backward.model.clone().unwrap(),
    );
    assert_eq!(a.purchases.params, b.purchases.params);
    assert_eq!(a.customers, 400);
    assert_eq!(b.customers, 400);
    assert_eq!(a.repeat_buyers, b.repeat_buyers);
    for (i, f) in customers.iter().enumerate() {
        let j = 2 * (customers.len() - 1 - i);
        assert_eq!(shuffled[j].customer, f.customer);
        assert_eq!(forward.get(i), backward.get(j), "{f:?}");
        assert_eq!(backward.get(j + 1), None, "a non-buyer has no prediction");
    }
    let distinct: std::collections::HashSet<_> = customers
        .iter()
        .filter_map(|f| repeat_summary_days(f, as_of()))
        .collect();
    assert_eq!(distinct.len(), 300, "twins share summaries");
}

#[test]
fn customers_sharing_frequency_and_age_get_their_own_recency_in_every_prediction() {
    // Groups of customers with equal x and T but different t_x share the hypergeometric part
    // of their expectations; P(alive), and so every prediction, still differs by t_x.
    let mut customers = population(300);
    for j in 0..6 {
        customers.push(buyer(2_000 + j, 3, 200, 5 + 30 * j as u64, 4_000));
    }
    let out = predict_population(&customers, as_of(), &Policy::default(), None);
    let params = out.model.clone().unwrap().purchases.params;
    let group: Vec<_> = (300..306).map(|i| out.get(i).unwrap()).collect();
    for (f, p) in customers[300..].iter().zip(&group) {
        let (x, recency, age) = repeat_summary_days(f, as_of()).unwrap();
        let c = RepeatSummary::new(x, recency as f64, age as f64).unwrap();
        assert_eq!(p.p_alive, p_alive(&params, Variant::Modified, &c));
        assert_eq!(
            p.purchases_90d,
            expected_purchases(&params, Variant::Modified, &c, 90.0)
        );
    }
    // The later the last purchase, the likelier alive and the more valuable.
    for pair in group.windows(2) {
        assert!(pair[0].p_alive > pair[1].p_alive, "{pair:?}");
        assert!(pair[0].clv > pair[1].clv, "{pair:?}");
    }
}
