//! Single-customer rules: thresholds RFM scores, credit, loyalty ladder, lifecycle and simple CLV.

use serde::{Deserialize, Serialize};

use super::facts::InvoiceFacts;
use super::policy::{CreditPolicy, LifecyclePolicy};

/// RFM score against fixed cuts. Frequency and monetary (`cuts` ascending):
/// `score = 1 + #{i : value ≥ cutᵢ}`. Recency (`cuts` in days, descending):
/// `score = 1 + #{i : recency_days ≤ cutᵢ}`. With k − 1 cuts the score is in 1..=k.
pub fn threshold_score(value: i64, cuts: &[i64], lower_is_better: bool) -> u8 {
    let passed = cuts
        .iter()
        .filter(|&&cut| {
            if lower_is_better {
                value <= cut
            } else {
                value >= cut
            }
        })
        .count();
    u8::try_from(passed + 1).unwrap_or(u8::MAX)
}

/// Credit grade from payment timeliness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CreditGrade {
    /// score ≥ 90 (default floors).
    #[serde(rename = "AAA")]
    Aaa,
    /// score ≥ 75.
    #[serde(rename = "AA")]
    Aa,
    /// score ≥ 60.
    A,
    /// score ≥ 40.
    B,
    /// below.
    C,
    /// No invoice was due.
    #[serde(rename = "unrated")]
    Unrated,
}

impl CreditGrade {
    /// The grade's label (`AAA`, …, `unrated`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Aaa => "AAA",
            Self::Aa => "AA",
            Self::A => "A",
            Self::B => "B",
            Self::C => "C",
            Self::Unrated => "unrated",
        }
    }
}

/// Credit figures of a customer with at least one due invoice.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Credit {
    /// Share of due amount paid on or before due + grace.
    pub on_time_ratio: f64,
    /// Amount-weighted mean of max(0, (paid or D) − due) in days.
    pub avg_days_late: f64,
    /// Share of due amount unpaid at D.
    pub overdue_ratio: f64,
    /// `clamp(100·on_time_ratio − 0.5·avg_days_late − 100·overdue_ratio, 0, 100)`.
    pub score: f64,
    /// Grade by the policy's floors.
    pub grade: CreditGrade,
}

/// Credit score and grade from invoice figures; `None` (unrated) when no positive amount was due.
///
/// `credit_score = clamp(100·on_time_ratio − 0.5·avg_days_late − 100·overdue_ratio, 0, 100)`,
/// graded AAA ≥ floors[0], AA ≥ floors[1], A ≥ floors[2], B ≥ floors[3], else C.
pub fn credit(facts: &InvoiceFacts, policy: &CreditPolicy) -> Option<Credit> {
    if facts.due_amount <= 0 {
        return None;
    }
    let due = facts.due_amount as f64;
    let on_time_ratio = facts.on_time_amount as f64 / due;
    let avg_days_late = facts.late_amount_days as f64 / due;
    let overdue_ratio = facts.unpaid_amount as f64 / due;
    let score =
        (100.0 * on_time_ratio - 0.5 * avg_days_late - 100.0 * overdue_ratio).clamp(0.0, 100.0);
    let [aaa, aa, a, b] = policy.grade_floors;
    let grade = if score >= aaa {
        CreditGrade::Aaa
    } else if score >= aa {
        CreditGrade::Aa
    } else if score >= a {
        CreditGrade::A
    } else if score >= b {
        CreditGrade::B
    } else {
        CreditGrade::C
    };
    Some(Credit {
        on_time_ratio,
        avg_days_late,
        overdue_ratio,
        score,
        grade,
    })
}

/// Loyalty ladder step (index into the policy's steps) for a lifetime order count:
/// `min(orders, steps) − 1`; none for a customer without orders.
pub fn loyalty_step(lifetime_orders: u32, steps: usize) -> Option<u8> {
    if lifetime_orders == 0 || steps == 0 {
        return None;
    }
    let step = (lifetime_orders as usize).min(steps) - 1;
    u8::try_from(step).ok()
}

/// Where a customer is in its life with the company.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// No order ever.
    Prospect,
    /// One order, recent.
    New,
    /// Buying, none of the other stages.
    Active,
    /// On the top step of the loyalty ladder.
    Loyal,
    /// Quiet for longer than twice its usual gap.
    AtRisk,
    /// Quiet for over a year.
    Churned,
}

impl Lifecycle {
    /// Every stage in funnel order.
    pub const ALL: [Self; 6] = [
        Self::Prospect,
        Self::New,
        Self::Active,
        Self::Loyal,
        Self::AtRisk,
        Self::Churned,
    ];

    /// The stage's key (`at_risk`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Prospect => "prospect",
            Self::New => "new",
            Self::Active => "active",
            Self::Loyal => "loyal",
            Self::AtRisk => "at_risk",
            Self::Churned => "churned",
        }
    }

    /// Parses a key written by [`Self::as_str`].
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// Lifecycle inputs of one customer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LifecycleInput {
    /// Orders up to D.
    pub lifetime_orders: u32,
    /// Days since the latest order up to D.
    pub recency_days: Option<i64>,
    /// The customer's median gap between order days, when it has ≥ 2 order days.
    pub median_gap_days: Option<f64>,
    /// Whether it is on the top step of the loyalty ladder.
    pub top_loyalty_step: bool,
}

/// Lifecycle stage, the first rule that matches: `prospect` (no order ever); `churned`
/// (recency > churned_after_days); `at_risk` (recency > multiple × typical gap, where the typical
/// gap is the customer's median gap, or `population_gap` when it has fewer than 2 order days);
/// `new` (one order, recency ≤ new_within_days); `loyal` (top ladder step); `active`.
pub fn lifecycle(
    input: &LifecycleInput,
    population_gap: Option<f64>,
    policy: &LifecyclePolicy,
) -> Lifecycle {
    let Some(recency) = input.recency_days.filter(|_| input.lifetime_orders > 0) else {
        return Lifecycle::Prospect;
    };
    if recency > policy.churned_after_days {
        return Lifecycle::Churned;
    }
    if let Some(gap) = input.median_gap_days.or(population_gap)
        && recency as f64 > policy.at_risk_gap_multiple * gap
    {
        return Lifecycle::AtRisk;
    }
    if input.lifetime_orders == 1 && recency <= policy.new_within_days {
        return Lifecycle::New;
    }
    if input.top_loyalty_step {
        return Lifecycle::Loyal;
    }
    Lifecycle::Active
}

/// Median of a non-empty slice (mean of the two middle values for an even count); sorts it.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Simple CLV: `P / max(R, floor)`, P = last-12-month profit (revenue when cost is unknown), R the
/// annual churn rate of the customer's segment. Rounded to minor units.
pub fn clv_simple(last_year_value: i64, churn_rate: f64, min_churn_rate: f64) -> i64 {
    (last_year_value as f64 / churn_rate.max(min_churn_rate)).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_scores_count_the_cuts_passed() {
        let cuts = [2, 3, 5, 10];
        assert_eq!(threshold_score(1, &cuts, false), 1);
        assert_eq!(threshold_score(2, &cuts, false), 2);
        assert_eq!(threshold_score(9, &cuts, false), 4);
        assert_eq!(threshold_score(10, &cuts, false), 5);
        let days = [365, 180, 90, 30];
        assert_eq!(threshold_score(400, &days, true), 1);
        assert_eq!(threshold_score(365, &days, true), 2);
        assert_eq!(threshold_score(30, &days, true), 5);
        assert_eq!(threshold_score(0, &days, true), 5);
    }

    fn invoices(due: i64, on_time: i64, unpaid: i64, late_days: i64) -> InvoiceFacts {
        InvoiceFacts {
            due_amount: due,
            on_time_amount: on_time,
            unpaid_amount: unpaid,
            late_amount_days: late_days,
        }
    }

    #[test]
    fn credit_score_follows_the_contract() {
        let policy = CreditPolicy::default();
        // All paid on time: 100, AAA.
        let c = credit(&invoices(1000, 1000, 0, 0), &policy).unwrap();
        assert_eq!((c.score, c.grade), (100.0, CreditGrade::Aaa));
        // Two invoices of 100 and 300; the 300 paid 10 days late (past grace):
        // on_time 0.25, avg late (300·10)/400 = 7.5 → 25 − 3.75 = 21.25 → C.
        let c = credit(&invoices(400, 100, 0, 3000), &policy).unwrap();
        assert_eq!(c.on_time_ratio, 0.25);
        assert_eq!(c.avg_days_late, 7.5);
        assert_eq!(c.score, 21.25);
        assert_eq!(c.grade, CreditGrade::C);
        // Half unpaid 20 days at D, half on time: 50 − 0.5·10 − 50 = −5 → clamped to 0.
        let c = credit(&invoices(200, 100, 100, 2000), &policy).unwrap();
        assert_eq!(c.score, 0.0);
        // Boundaries are inclusive: exactly 90 is AAA, exactly 40 is B.
        let c = credit(&invoices(100, 90, 0, 0), &policy).unwrap();
        assert_eq!(c.grade, CreditGrade::Aaa);
        let c = credit(&invoices(100, 40, 0, 0), &policy).unwrap();
        assert_eq!(c.grade, CreditGrade::B);
        // No invoice due: unrated.
        assert_eq!(credit(&InvoiceFacts::default(), &policy), None);
    }

    #[test]
    fn loyalty_ladder_tops_out() {
        assert_eq!(loyalty_step(0, 5), None);
        assert_eq!(loyalty_step(1, 5), Some(0));
        assert_eq!(loyalty_step(4, 5), Some(3));
        assert_eq!(loyalty_step(5, 5), Some(4));
        assert_eq!(loyalty_step(42, 5), Some(4));
    }

    fn stage(orders: u32, recency: Option<i64>, gap: Option<f64>, top: bool) -> Lifecycle {
        let input = LifecycleInput {
            lifetime_orders: orders,
            recency_days: recency,
            median_gap_days: gap,
            top_loyalty_step: top,
        };
        lifecycle(&input, Some(60.0), &LifecyclePolicy::default())
    }

    #[test]
    fn lifecycle_takes_the_first_matching_rule() {
        assert_eq!(stage(0, None, None, false), Lifecycle::Prospect);
        assert_eq!(stage(9, Some(366), Some(400.0), true), Lifecycle::Churned);
        assert_eq!(stage(9, Some(365), Some(400.0), true), Lifecycle::Loyal);
        // Own gap 30 days: quiet 61 days is at risk, 60 is not.
        assert_eq!(stage(3, Some(61), Some(30.0), false), Lifecycle::AtRisk);
        assert_eq!(stage(3, Some(60), Some(30.0), false), Lifecycle::Active);
        // One order: the population gap (60) decides at-risk before "new" is considered.
        assert_eq!(stage(1, Some(121), None, false), Lifecycle::AtRisk);
        assert_eq!(stage(1, Some(90), None, false), Lifecycle::New);
        assert_eq!(stage(1, Some(100), None, false), Lifecycle::Active);
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn clv_divides_by_the_floored_churn_rate() {
        assert_eq!(clv_simple(10_000, 0.25, 0.05), 40_000);
        assert_eq!(clv_simple(10_000, 0.01, 0.05), 200_000);
        assert_eq!(clv_simple(-1_000, 0.5, 0.05), -2_000);
    }
}
