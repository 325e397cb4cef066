//! The summary of a grading run: counts and revenue share per tier, segment, ABC class and
//! lifecycle stage, and the tier migration matrix from the previous period.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::engine::GradingOutcome;
use super::facts::CustomerFacts;
use super::policy::Policy;

/// Count and revenue of one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupFigures {
    /// Customers in the group.
    pub customers: u64,
    /// Σ window monetary of the group (minor units).
    pub revenue: i64,
    /// revenue / Σ revenue of all graded customers (0 when that is ≤ 0).
    pub revenue_share: f64,
}

/// What a run produced, for the dashboard and the emails.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Customers graded (N).
    pub graded: u64,
    /// Customers considered (graded or not).
    pub customers: u64,
    /// By assigned tier name, in policy order ("none" for customers without a tier).
    pub tiers: Vec<(String, GroupFigures)>,
    /// By segment key.
    pub segments: BTreeMap<String, GroupFigures>,
    /// By ABC class.
    pub abc: BTreeMap<String, GroupFigures>,
    /// By lifecycle stage.
    pub lifecycle: BTreeMap<String, GroupFigures>,
    /// `migration[from][to]`: customers by previous assigned tier and new assigned tier, both by
    /// name, with "none" for no tier.
    pub migration: BTreeMap<String, BTreeMap<String, u64>>,
    /// Customers whose assigned tier differs from the previous period's.
    pub tier_changes: u64,
}

/// The label of "no tier" in summaries.
pub const NO_TIER: &str = "none";

/// Summarises `outcome` (graded from `customers`, which carry the previous tiers).
pub fn summarise(
    customers: &[CustomerFacts],
    outcome: &GradingOutcome,
    policy: &Policy,
) -> Summary {
    let name = |tier: Option<u8>| tier.map_or(NO_TIER, |t| policy.tier_name(t)).to_owned();
    let mut summary = Summary {
        graded: u64::from(outcome.population),
        customers: outcome.grades.len() as u64,
        tiers: policy
            .tiers
            .levels
            .iter()
            .map(|l| (l.name.clone(), GroupFigures::default()))
            .chain([(NO_TIER.to_owned(), GroupFigures::default())])
            .collect(),
        ..Summary::default()
    };
    let mut total_revenue = 0i64;
    for (c, grade) in customers.iter().zip(&outcome.grades) {
        let revenue = if grade.graded { grade.monetary } else { 0 };
        total_revenue += revenue;
        let add = |group: &mut GroupFigures| {
            group.customers += 1;
            group.revenue += revenue;
        };
        let tier_slot = grade
            .assigned_tier
            .map_or(policy.tiers.levels.len(), usize::from);
        if let Some((_, group)) = summary.tiers.get_mut(tier_slot) {
            add(group);
        }
        if let Some(segment) = grade.segment {
            let key = outcome
                .segments
                .keys()
                .nth(usize::from(segment))
                .unwrap_or("?");
            add(summary.segments.entry(key.to_owned()).or_default());
        }
        if let Some(abc) = grade.abc {
            add(summary.abc.entry(abc.as_str().to_owned()).or_default());
        }
        add(summary
            .lifecycle
            .entry(grade.lifecycle.as_str().to_owned())
            .or_default());
        let before = c
            .previous
            .assigned_tier
            .filter(|&t| usize::from(t) < policy.tiers.levels.len());
        *summary
            .migration
            .entry(name(before))
            .or_default()
            .entry(name(grade.assigned_tier))
            .or_default() += 1;
        if before != grade.assigned_tier {
            summary.tier_changes += 1;
        }
    }
    let share = |group: &mut GroupFigures| {
        group.revenue_share = if total_revenue > 0 {
            group.revenue as f64 / total_revenue as f64
        } else {
            0.0
        };
    };
    summary.tiers.iter_mut().for_each(|(_, g)| share(g));
    for map in [
        &mut summary.segments,
        &mut summary.abc,
        &mut summary.lifecycle,
    ] {
        map.values_mut().for_each(share);
    }
    summary
}
