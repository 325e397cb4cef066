//! The rules notifications apply: when a follow-up is due by a tier's contact cadence, when a
//! customer's move raises a churn alert, and which scores moved between two grades.
//! (../docs/grading-model.md, "Follow-up cadence and alerts".)

use chrono::{Months, NaiveDate};
use serde::Serialize;

use crate::grading::Lifecycle;
use crate::grading::policy::Policy;

/// A kind of contact a tier's cadence asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowUpKind {
    /// A phone call (`call_every_months`).
    Call,
    /// An on-site visit (`visit_every_months`).
    Visit,
}

impl FollowUpKind {
    /// Both kinds, calls first.
    pub const ALL: [Self; 2] = [Self::Call, Self::Visit];

    /// The kind's key (`call`, `visit`), as activities name it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Visit => "visit",
        }
    }

    /// The tier's interval in months for this kind (none = no reminders of this kind).
    pub fn interval(&self, policy: &Policy, tier: u8) -> Option<u32> {
        let level = policy.tiers.levels.get(usize::from(tier))?;
        match self {
            Self::Call => level.call_every_months,
            Self::Visit => level.visit_every_months,
        }
        .filter(|&m| m > 0)
    }
}

/// A contact that is due soon or overdue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FollowUp {
    /// Call or visit.
    pub kind: FollowUpKind,
    /// The latest contact of that kind, if any.
    pub last_contact: Option<NaiveDate>,
    /// When the next one is due.
    pub due_on: NaiveDate,
}

impl FollowUp {
    /// Days past due on `today` (negative: days left).
    pub fn days_overdue(&self, today: NaiveDate) -> i64 {
        (today - self.due_on).num_days()
    }

    /// Whether it was due before `today`.
    pub fn is_overdue(&self, today: NaiveDate) -> bool {
        self.due_on < today
    }
}

/// Days ahead a reminder looks: what falls due within them is listed with what is overdue.
pub const DUE_SOON_DAYS: i64 = 7;

/// The next due day of a contact kind:
/// `due = (last contact of the kind, or the day the customer entered its tier) + every_months`,
/// month arithmetic clamped to the month's end (Jan 31 + 1 month = Feb 28/29).
pub fn next_due(
    last_contact: Option<NaiveDate>,
    tier_since: NaiveDate,
    every_months: u32,
) -> NaiveDate {
    last_contact
        .unwrap_or(tier_since)
        .checked_add_months(Months::new(every_months))
        .unwrap_or(NaiveDate::MAX)
}

/// The follow-up of `kind` a customer in `tier` needs by `today`, if any: due when
/// `next_due ≤ today + horizon_days` (overdue when `next_due < today`). None when the tier's
/// cadence has no interval for the kind.
pub fn follow_up(
    policy: &Policy,
    tier: u8,
    kind: FollowUpKind,
    last_contact: Option<NaiveDate>,
    tier_since: NaiveDate,
    today: NaiveDate,
    horizon_days: i64,
) -> Option<FollowUp> {
    let every = kind.interval(policy, tier)?;
    let due_on = next_due(last_contact, tier_since, every);
    ((due_on - today).num_days() <= horizon_days).then_some(FollowUp {
        kind,
        last_contact,
        due_on,
    })
}

/// What a grade says about churn, for comparing two periods.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChurnState {
    /// Assigned tier (index, best = 0).
    pub tier: Option<u8>,
    /// Lifecycle stage.
    pub lifecycle: Lifecycle,
    /// Probability the customer is still alive (BG/NBD), when the model ran.
    pub p_alive: Option<f64>,
}

/// Why a churn alert was raised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum ChurnSignal {
    /// Lifecycle moved into `at_risk` or `churned`.
    Lifecycle {
        /// Stage before.
        from: Lifecycle,
        /// Stage now.
        to: Lifecycle,
    },
    /// P(alive) fell by at least [`P_ALIVE_DROP`].
    PAliveFell {
        /// Before.
        from: f64,
        /// Now.
        to: f64,
    },
    /// Demoted by at least [`DEMOTION_STEPS`] tiers.
    Demoted {
        /// Tier before (index).
        from: u8,
        /// Tier now (index).
        to: u8,
    },
}

/// A fall in P(alive) that raises an alert.
pub const P_ALIVE_DROP: f64 = 0.3;
/// Tiers a demotion must cross to raise an alert.
pub const DEMOTION_STEPS: u8 = 2;

/// The churn signals between the previous and the current grade, raised only when the tier the
/// customer held before (or, with none, holds now) has `alert_on_churn`:
/// - lifecycle `before ≠ now` and `now ∈ {at_risk, churned}`;
/// - `p_alive_before − p_alive_now ≥ 0.3` (both known);
/// - `tier_now − tier_before ≥ 2` (indices, best = 0).
///
/// Without a previous grade nothing has moved, so nothing is raised.
pub fn churn_signals(policy: &Policy, before: &ChurnState, now: &ChurnState) -> Vec<ChurnSignal> {
    let flagged = |t: Option<u8>| {
        t.and_then(|t| policy.tiers.levels.get(usize::from(t)))
            .is_some_and(|l| l.alert_on_churn)
    };
    if !flagged(before.tier.or(now.tier)) {
        return Vec::new();
    }
    let mut signals = Vec::new();
    if before.lifecycle != now.lifecycle
        && matches!(now.lifecycle, Lifecycle::AtRisk | Lifecycle::Churned)
    {
        signals.push(ChurnSignal::Lifecycle {
            from: before.lifecycle,
            to: now.lifecycle,
        });
    }
    if let (Some(from), Some(to)) = (before.p_alive, now.p_alive)
        // A tolerance so that 0.9 → 0.6 counts despite binary rounding.
        && from - to >= P_ALIVE_DROP - 1e-9
    {
        signals.push(ChurnSignal::PAliveFell { from, to });
    }
    if let (Some(from), Some(to)) = (before.tier, now.tier)
        && to >= from.saturating_add(DEMOTION_STEPS)
    {
        signals.push(ChurnSignal::Demoted { from, to });
    }
    signals
}

/// The scores of one grade that a tier change is explained by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreState {
    /// R, F and M scores (higher is better).
    pub rfm: Option<[u8; 3]>,
    /// ABC class (`A` best).
    pub abc: Option<String>,
    /// Credit grade (`AAA` best, `unrated` when none).
    pub credit: Option<String>,
    /// Lifecycle stage.
    pub lifecycle: Option<Lifecycle>,
    /// Composite score (0–100).
    pub composite: Option<f64>,
}

/// A score that moved between two grades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// R score.
    Recency,
    /// F score.
    Frequency,
    /// M score.
    Monetary,
    /// ABC class.
    Abc,
    /// Credit grade.
    Credit,
    /// Lifecycle stage.
    Lifecycle,
}

/// One moved score: what it was, what it is, and whether that is better.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentMove {
    /// Which score.
    pub component: Component,
    /// Its value before.
    pub from: String,
    /// Its value now.
    pub to: String,
    /// Better now (None: neither, e.g. `new` → `active`).
    pub improved: Option<bool>,
}

/// The scores that differ between `before` and `now`, in component order. Direction: a higher
/// R/F/M score is better; an earlier ABC letter or credit grade is better (`unrated` ranks
/// below `C`); a lifecycle move into `at_risk`/`churned` is worse, out of them better.
pub fn component_moves(before: &ScoreState, now: &ScoreState) -> Vec<ComponentMove> {
    let mut moves = Vec::new();
    if let (Some(b), Some(n)) = (before.rfm, now.rfm) {
        let names = [
            Component::Recency,
            Component::Frequency,
            Component::Monetary,
        ];
        for ((component, b), n) in names.into_iter().zip(b).zip(n) {
            if b != n {
                moves.push(ComponentMove {
                    component,
                    from: b.to_string(),
                    to: n.to_string(),
                    improved: Some(n > b),
                });
            }
        }
    }
    if let (Some(b), Some(n)) = (&before.abc, &now.abc)
        && b != n
    {
        moves.push(ComponentMove {
            component: Component::Abc,
            from: b.clone(),
            to: n.clone(),
            improved: Some(n < b),
        });
    }
    if let (Some(b), Some(n)) = (&before.credit, &now.credit)
        && b != n
    {
        let rank = |g: &str| match g {
            "AAA" => 0,
            "AA" => 1,
            "A" => 2,
            "B" => 3,
            "C" => 4,
            _ => 5,
        };
        moves.push(ComponentMove {
            component: Component::Credit,
            from: b.clone(),
            to: n.clone(),
            improved: Some(rank(n) < rank(b)),
        });
    }
    if let (Some(b), Some(n)) = (before.lifecycle, now.lifecycle)
        && b != n
    {
        let troubled = |l: Lifecycle| matches!(l, Lifecycle::AtRisk | Lifecycle::Churned);
        let improved = match (troubled(b), troubled(n)) {
            (false, true) => Some(false),
            (true, false) => Some(true),
            (true, true) => Some(n == Lifecycle::AtRisk),
            (false, false) => None,
        };
        moves.push(ComponentMove {
            component: Component::Lifecycle,
            from: b.as_str().to_owned(),
            to: n.as_str().to_owned(),
            improved,
        });
    }
    moves
}
