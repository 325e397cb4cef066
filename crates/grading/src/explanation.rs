//! The explanation stored with each grade: everything that produced it beyond the grade's
//! columns (component values, credit figures, tier reason, lifetime figures, churn rate). The
//! weights are in the run's policy snapshot (same run id). Values are rounded to six decimals:
//! enough to explain.
//!
//! Readers (the dashboard, `grades show`, exports) see it as a JSON object with named fields
//! ([`explanation_object`]). Runs store it as a positional array of the same values, a third of
//! the object's bytes (a million grades wrote ~190 MB less); runs from before that stored the
//! object itself, which reads back unchanged.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;
use tierwise_domain::grading::{Grade, TierReason};

/// The first element of a stored positional explanation: its layout.
const LAYOUT: u8 = 1;

/// Built-in component values of an explanation; absent ones are left out.
#[derive(Serialize)]
struct Components<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recency: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prospect: Option<f64>,
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    custom: BTreeMap<&'a str, f64>,
}

/// Payment figures behind the credit score (the score and grade are columns).
#[derive(Serialize)]
struct CreditFigures {
    on_time_ratio: f64,
    avg_days_late: f64,
    overdue_ratio: f64,
}

/// The explanation as readers see it.
#[derive(Serialize)]
struct Explanation<'a> {
    components: Components<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credit: Option<CreditFigures>,
    tier: &'a TierReason,
    lifetime_orders: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    lifetime_recency_days: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    churn_rate: Option<f64>,
}

/// The stored layout: [`LAYOUT`], the six built-in components, the custom ones (`null` when
/// none), the credit figures (on time, days late, overdue; `null` when unrated), the tier
/// reason (`null` when computed, the commonest), lifetime orders, lifetime recency days and
/// churn rate.
type Stored<Custom, Tier> = (
    u8,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<Custom>,
    Option<[f64; 3]>,
    Option<Tier>,
    u32,
    Option<i32>,
    Option<f64>,
);

/// `x` rounded to six decimals.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// The explanation of `g` as stored: a positional JSON array (see [`explanation_object`]).
/// `custom_names` name `g`'s custom components in the policy's order.
pub(crate) fn stored_explanation(
    g: &Grade,
    churn_rate: Option<f64>,
    custom_names: &[&str],
) -> String {
    let custom: BTreeMap<&str, f64> = custom_names
        .iter()
        .zip(&g.custom_components)
        .filter(|(_, value)| !value.is_nan())
        .map(|(name, value)| (*name, round6(*value)))
        .collect();
    let component = |i| g.component(i).map(round6);
    let stored: Stored<BTreeMap<&str, f64>, &TierReason> = (
        LAYOUT,
        component(0),
        component(1),
        component(2),
        component(3),
        component(4),
        component(5),
        (!custom.is_empty()).then_some(custom),
        g.credit.map(|c| {
            [
                round6(c.on_time_ratio),
                round6(c.avg_days_late),
                round6(c.overdue_ratio),
            ]
        }),
        (g.tier_reason != TierReason::Computed).then_some(&g.tier_reason),
        g.lifetime_orders,
        g.lifetime_recency_days,
        churn_rate.map(round6),
    );
    serde_json::to_string(&stored).unwrap_or_else(|_| "null".into())
}

/// A stored explanation as the JSON object readers see: `{"components": {"value": …, …,
/// custom names…}, "credit": {"on_time_ratio": …, "avg_days_late": …, "overdue_ratio": …},
/// "tier": {"kind": …}, "lifetime_orders": …, "lifetime_recency_days": …, "churn_rate": …}`,
/// absent values left out. An object stored by an older run, or text that is not a stored
/// explanation, is returned as it is.
pub fn explanation_object(stored: &str) -> Cow<'_, str> {
    if !stored.starts_with('[') {
        return Cow::Borrowed(stored);
    }
    let Ok((
        layout,
        value,
        credit,
        frequency,
        recency,
        profit,
        prospect,
        custom,
        figures,
        tier,
        lifetime_orders,
        lifetime_recency_days,
        churn_rate,
    )) = serde_json::from_str::<Stored<BTreeMap<String, f64>, TierReason>>(stored)
    else {
        return Cow::Borrowed(stored);
    };
    if layout != LAYOUT {
        return Cow::Borrowed(stored);
    }
    let custom = custom.unwrap_or_default();
    let tier = tier.unwrap_or(TierReason::Computed);
    let object = Explanation {
        components: Components {
            value,
            credit,
            frequency,
            recency,
            profit,
            prospect,
            custom: custom.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
        },
        credit: figures.map(
            |[on_time_ratio, avg_days_late, overdue_ratio]| CreditFigures {
                on_time_ratio,
                avg_days_late,
                overdue_ratio,
            },
        ),
        tier: &tier,
        lifetime_orders,
        lifetime_recency_days,
        churn_rate,
    };
    serde_json::to_string(&object).map_or(Cow::Borrowed(stored), Cow::Owned)
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;
    use tierwise_domain::CustomerId;
    use tierwise_domain::grading::{
        AbcClass, Credit, CreditGrade, Lifecycle, OverrideNote, TierReason,
    };

    use super::*;

    fn grade() -> Grade {
        Grade {
            customer: CustomerId(7),
            graded: true,
            recency_days: Some(12),
            frequency: 4,
            monetary: 120_000,
            rfm: Some([5, 4, 3]),
            segment: Some(0),
            abc: Some(AbcClass::A),
            credit: Some(Credit {
                on_time_ratio: 0.311_255_4,
                avg_days_late: 9.408_269_1,
                overdue_ratio: 0.0,
                score: 26.4213,
                grade: CreditGrade::C,
            }),
            profit: Some(30_000),
            components: [
                0.906_755_4,
                0.264_213,
                0.903_419,
                0.377_844,
                0.827_911,
                f64::NAN,
            ],
            custom_components: Box::new([0.5, f64::NAN]),
            composite: Some(71.2),
            computed_tier: Some(1),
            assigned_tier: Some(1),
            tier_reason: TierReason::Computed,
            periods_below: 0,
            tier_since: None,
            loyalty_step: Some(2),
            lifecycle: Lifecycle::Active,
            lifetime_recency_days: Some(288),
            lifetime_orders: 39,
            clv_simple: Some(50_000),
        }
    }

    #[test]
    fn a_stored_explanation_reads_back_as_the_object_with_named_fields() {
        let stored = stored_explanation(&grade(), Some(0.25), &["nps", "csat"]);
        assert!(stored.starts_with("[1,"), "{stored}");
        assert_eq!(
            explanation_object(&stored),
            r#"{"components":{"value":0.906755,"credit":0.264213,"frequency":0.903419,"recency":0.377844,"profit":0.827911,"nps":0.5},"credit":{"on_time_ratio":0.311255,"avg_days_late":9.408269,"overdue_ratio":0.0},"tier":{"kind":"computed"},"lifetime_orders":39,"lifetime_recency_days":288,"churn_rate":0.25}"#
        );
        assert!(
            stored.len() * 2 < explanation_object(&stored).len(),
            "{stored}"
        );
    }

    #[test]
    fn every_tier_reason_and_absent_value_survives_the_round_trip() {
        let note = OverrideNote {
            reason: "strategic \"key\" account".into(),
            author: "ops@example.com".into(),
            until: NaiveDate::from_ymd_opt(2027, 3, 31),
        };
        for reason in [
            TierReason::Computed,
            TierReason::Held { periods_below: 2 },
            TierReason::Pinned(Box::new(note.clone())),
            TierReason::Blocked(Box::new(note)),
            TierReason::NotGraded,
        ] {
            let mut g = grade();
            g.tier_reason = reason.clone();
            g.credit = None;
            g.lifetime_recency_days = None;
            g.components = [f64::NAN, f64::NAN, 0.0, 1.0, f64::NAN, 0.75];
            g.custom_components = Box::new([]);
            let object = explanation_object(&stored_explanation(&g, None, &[])).into_owned();
            let parsed: serde_json::Value = serde_json::from_str(&object).unwrap();
            assert_eq!(
                parsed,
                serde_json::json!({
                    "components": {"frequency": 0.0, "recency": 1.0, "prospect": 0.75},
                    "tier": serde_json::to_value(&reason).unwrap(),
                    "lifetime_orders": 39,
                }),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn objects_from_older_runs_and_unreadable_text_pass_through() {
        let legacy =
            r#"{"components":{"value":0.5},"tier":{"kind":"computed"},"lifetime_orders":3}"#;
        assert_eq!(explanation_object(legacy), legacy);
        for odd in ["[2,null]", "[1,\"x\"]", "[", ""] {
            assert_eq!(explanation_object(odd), odd);
        }
    }
}
