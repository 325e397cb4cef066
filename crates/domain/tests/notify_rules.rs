//! The contract's follow-up and churn-alert rules (docs/grading-model.md, "Follow-up cadence and
//! alerts"), case by case.
#![expect(clippy::unwrap_used, reason = "tests")]

use chrono::NaiveDate;
use tierwise_domain::grading::{Lifecycle, Policy};
use tierwise_domain::notify::{
    ChurnSignal, ChurnState, Component, FollowUpKind, ScoreState, churn_signals, component_moves,
    follow_up, next_due,
};

fn d(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

const A: u8 = 0;
const B: u8 = 1;
const C: u8 = 2;
const D: u8 = 3;

#[test]
fn next_due_counts_months_from_the_last_contact_or_the_tier_entry() {
    assert_eq!(
        next_due(Some(d("2026-10-20")), d("2026-01-31"), 1),
        d("2026-11-20")
    );
    assert_eq!(next_due(None, d("2026-09-30"), 3), d("2026-12-30"));
    // Month arithmetic clamps to the month's end.
    assert_eq!(next_due(None, d("2026-01-31"), 1), d("2026-02-28"));
    assert_eq!(next_due(None, d("2027-12-31"), 2), d("2028-02-29"));
}

#[test]
fn default_cadences_by_tier() {
    let p = Policy::default();
    let every = |kind: FollowUpKind, tier| kind.interval(&p, tier);
    assert_eq!(
        [A, B, C, D].map(|t| every(FollowUpKind::Call, t)),
        [Some(1), Some(3), Some(6), Some(12)]
    );
    assert_eq!(
        [A, B, C, D].map(|t| every(FollowUpKind::Visit, t)),
        [Some(3), Some(6), Some(12), None]
    );
    assert_eq!(every(FollowUpKind::Call, 9), None, "no such tier");
}

#[test]
fn a_follow_up_is_listed_when_due_within_seven_days_or_overdue() {
    let p = Policy::default();
    let today = d("2026-11-02");
    let call = |last: &str| {
        follow_up(
            &p,
            A,
            FollowUpKind::Call,
            Some(d(last)),
            d("2026-01-31"),
            today,
            7,
        )
    };
    // Due 2026-11-09: exactly seven days ahead, listed.
    let f = call("2026-10-09").unwrap();
    assert_eq!(
        (f.due_on, f.is_overdue(today), f.days_overdue(today)),
        (d("2026-11-09"), false, -7)
    );
    // Due 2026-11-10: eight days ahead, not yet.
    assert!(call("2026-10-10").is_none());
    // Due yesterday: overdue by one day.
    let f = call("2026-10-01").unwrap();
    assert_eq!((f.is_overdue(today), f.days_overdue(today)), (true, 1));
    // Due today: listed, not overdue.
    let f = call("2026-10-02").unwrap();
    assert_eq!((f.is_overdue(today), f.days_overdue(today)), (false, 0));
    // D has no visit cadence.
    assert!(follow_up(&p, D, FollowUpKind::Visit, None, d("2020-01-01"), today, 7).is_none());
}

fn state(tier: Option<u8>, lifecycle: Lifecycle, p_alive: Option<f64>) -> ChurnState {
    ChurnState {
        tier,
        lifecycle,
        p_alive,
    }
}

#[test]
fn churn_alerts_follow_the_contract() {
    let p = Policy::default();
    let active_a = state(Some(A), Lifecycle::Active, Some(0.9));
    // Lifecycle moved into at_risk / churned.
    assert_eq!(
        churn_signals(&p, &active_a, &state(Some(A), Lifecycle::AtRisk, Some(0.9))),
        vec![ChurnSignal::Lifecycle {
            from: Lifecycle::Active,
            to: Lifecycle::AtRisk
        }]
    );
    assert_eq!(
        churn_signals(
            &p,
            &state(Some(B), Lifecycle::AtRisk, None),
            &state(Some(B), Lifecycle::Churned, None)
        ),
        vec![ChurnSignal::Lifecycle {
            from: Lifecycle::AtRisk,
            to: Lifecycle::Churned
        }]
    );
    // Staying at risk is not a new alert.
    assert!(
        churn_signals(
            &p,
            &state(Some(A), Lifecycle::AtRisk, None),
            &state(Some(A), Lifecycle::AtRisk, None)
        )
        .is_empty()
    );
    // P(alive) fell by 0.3 exactly (binary rounding tolerated), not by 0.29.
    assert_eq!(
        churn_signals(&p, &active_a, &state(Some(A), Lifecycle::Active, Some(0.6))),
        vec![ChurnSignal::PAliveFell { from: 0.9, to: 0.6 }]
    );
    assert!(
        churn_signals(
            &p,
            &active_a,
            &state(Some(A), Lifecycle::Active, Some(0.61))
        )
        .is_empty()
    );
    // A demotion by two tiers; one tier is not enough.
    assert_eq!(
        churn_signals(&p, &active_a, &state(Some(C), Lifecycle::Active, Some(0.9))),
        vec![ChurnSignal::Demoted { from: A, to: C }]
    );
    assert!(churn_signals(&p, &active_a, &state(Some(B), Lifecycle::Active, Some(0.9))).is_empty());
    // Several signals at once, in rule order.
    assert_eq!(
        churn_signals(
            &p,
            &active_a,
            &state(Some(D), Lifecycle::Churned, Some(0.1))
        )
        .len(),
        3
    );
}

#[test]
fn churn_alerts_only_for_flagged_tiers() {
    let p = Policy::default();
    // C and D have alert_on_churn = false by default.
    let c = state(Some(C), Lifecycle::Active, None);
    assert!(churn_signals(&p, &c, &state(Some(D), Lifecycle::Churned, None)).is_empty());
    // Flagged by the tier held before the move.
    let b = state(Some(B), Lifecycle::Loyal, None);
    assert_eq!(
        churn_signals(&p, &b, &state(Some(D), Lifecycle::AtRisk, None)).len(),
        2
    );
    // A customer that had no tier is judged by its new one.
    let none = state(None, Lifecycle::Active, None);
    assert_eq!(
        churn_signals(&p, &none, &state(Some(A), Lifecycle::AtRisk, None)).len(),
        1
    );
}

#[test]
fn component_moves_name_what_changed_and_its_direction() {
    let before = ScoreState {
        rfm: Some([4, 3, 5]),
        abc: Some("A".into()),
        credit: Some("AA".into()),
        lifecycle: Some(Lifecycle::Loyal),
        composite: Some(80.0),
    };
    let now = ScoreState {
        rfm: Some([2, 3, 5]),
        abc: Some("B".into()),
        credit: Some("AAA".into()),
        lifecycle: Some(Lifecycle::AtRisk),
        composite: Some(60.0),
    };
    let moves = component_moves(&before, &now);
    let summary: Vec<(Component, &str, &str, Option<bool>)> = moves
        .iter()
        .map(|m| (m.component, m.from.as_str(), m.to.as_str(), m.improved))
        .collect();
    assert_eq!(
        summary,
        vec![
            (Component::Recency, "4", "2", Some(false)),
            (Component::Abc, "A", "B", Some(false)),
            (Component::Credit, "AA", "AAA", Some(true)),
            (Component::Lifecycle, "loyal", "at_risk", Some(false)),
        ]
    );
    assert!(component_moves(&before, &before).is_empty());
    // Unrated credit ranks below C; leaving at_risk is better.
    let a = ScoreState {
        credit: Some("unrated".into()),
        lifecycle: Some(Lifecycle::AtRisk),
        ..ScoreState::default()
    };
    let b = ScoreState {
        credit: Some("C".into()),
        lifecycle: Some(Lifecycle::Active),
        ..ScoreState::default()
    };
    let moves = component_moves(&a, &b);
    assert_eq!(
        moves.iter().map(|m| m.improved).collect::<Vec<_>>(),
        vec![Some(true), Some(true)]
    );
}
