//! Grading a whole population: the rules that rank customers against each other (RFM quantiles,
//! ABC, percent-rank components, tier proportions), then hysteresis, overrides, lifecycle and CLV.

use std::cmp::Ordering;

use chrono::{Months, NaiveDate};
use serde::{Deserialize, Serialize};

use super::facts::{CustomerFacts, OverrideKind};
use super::policy::{AbcBasis, Direction, MonetaryMeasure, Policy, RfmMethod, TierMode};
use super::rank::{bucket_score, percent_rank, rank_min};
use super::score::{
    self, Credit, Lifecycle, LifecycleInput, clv_simple, credit, loyalty_step, threshold_score,
};
use super::segment::SegmentTable;
use crate::{CustomerId, FieldError};

/// ABC (Pareto) class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AbcClass {
    /// The customers holding the first 80 % of the total.
    A,
    /// The next 15 %.
    B,
    /// The rest, and everyone with monetary ≤ 0.
    C,
}

impl AbcClass {
    /// `A`, `B` or `C`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::A => "A",
            Self::B => "B",
            Self::C => "C",
        }
    }
}

/// The built-in composite components, in storage order.
pub const BUILTIN_COMPONENTS: [&str; 6] = [
    "value",
    "credit",
    "frequency",
    "recency",
    "profit",
    "prospect",
];

/// Why a customer has the tier it has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TierReason {
    /// The computed tier applies (a promotion, no change, or a demotion after its grace).
    Computed,
    /// The computed tier is lower, but the held tier stays until the grace runs out.
    Held {
        /// Consecutive periods below, this one included.
        periods_below: u32,
    },
    /// A red-list pin sets the tier.
    Pinned(Box<OverrideNote>),
    /// A black-list entry removes the customer from grading.
    Blocked(Box<OverrideNote>),
    /// No window orders: outside the graded population.
    NotGraded,
}

/// Who decided an override, why, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideNote {
    /// Why.
    pub reason: String,
    /// Who.
    pub author: String,
    /// Last day it applies.
    pub until: Option<NaiveDate>,
}

impl OverrideNote {
    fn of(o: &super::facts::Override) -> Box<Self> {
        Box::new(Self {
            reason: o.reason.clone(),
            author: o.author.clone(),
            until: o.until,
        })
    }
}

/// One customer's grade for a period, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grade {
    /// The customer.
    pub customer: CustomerId,
    /// Whether it is in the graded population G.
    pub graded: bool,
    /// Days since its latest window order (None outside G).
    pub recency_days: Option<i32>,
    /// Window orders.
    pub frequency: u32,
    /// Window monetary by the policy's measure.
    pub monetary: i64,
    /// R, F and M scores (None outside G).
    pub rfm: Option<[u8; 3]>,
    /// Segment index into the run's segment table.
    pub segment: Option<u16>,
    /// ABC class (None outside G).
    pub abc: Option<AbcClass>,
    /// Credit figures (None = unrated).
    pub credit: Option<Credit>,
    /// Window profit (None = unknown).
    pub profit: Option<i64>,
    /// Component values in [0, 1] by [`BUILTIN_COMPONENTS`] order; NaN = the customer lacks it.
    pub components: [f64; 6],
    /// Custom component values in the policy's order; NaN = lacks it.
    pub custom_components: Box<[f64]>,
    /// `100 · Σ wᵢcᵢ / Σ wᵢ` over the components it has.
    pub composite: Option<f64>,
    /// Tier from the composite alone.
    pub computed_tier: Option<u8>,
    /// Tier after hysteresis and overrides.
    pub assigned_tier: Option<u8>,
    /// Why the assigned tier is what it is.
    pub tier_reason: TierReason,
    /// Consecutive periods the computed tier has been below the assigned one.
    pub periods_below: u32,
    /// The day the customer entered its assigned tier: the previous grade's day when the tier is
    /// unchanged, else `as_of`. Follow-up cadences count from it when no contact is recorded.
    pub tier_since: Option<NaiveDate>,
    /// Loyalty ladder step.
    pub loyalty_step: Option<u8>,
    /// Lifecycle stage.
    pub lifecycle: Lifecycle,
    /// Days since the latest order ever (up to D).
    pub lifetime_recency_days: Option<i32>,
    /// Lifetime orders up to D.
    pub lifetime_orders: u32,
    /// Simple CLV in minor units (its churn rate: [`GradingOutcome::churn_rate_of`]).
    pub clv_simple: Option<i64>,
}

impl GradingOutcome {
    /// The annual churn rate behind a graded customer's simple CLV.
    pub fn churn_rate_of(&self, grade: &Grade) -> Option<f64> {
        let segment = grade.segment.filter(|_| grade.graded)?;
        self.clv_churn_rates.get(usize::from(segment)).copied()
    }
}

impl Grade {
    /// Built-in component `i` if the customer has it.
    pub fn component(&self, i: usize) -> Option<f64> {
        self.components.get(i).copied().filter(|v| !v.is_nan())
    }
}

/// Grades of one period plus the population facts they were computed against.
#[derive(Debug, Clone)]
pub struct GradingOutcome {
    /// One grade per input customer, in input order.
    pub grades: Vec<Grade>,
    /// The segment table the `segment` indices refer to.
    pub segments: SegmentTable,
    /// N = |G|.
    pub population: u32,
    /// Median of customers' median gaps between order days.
    pub population_gap_days: Option<f64>,
    /// Churn rate per segment index measured from the grades of twelve months before.
    pub churn_rates: Vec<Option<f64>>,
    /// The annual churn rate simple CLV used, per segment index (after default and floor).
    pub clv_churn_rates: Vec<f64>,
    /// Active pins naming a tier the policy no longer has (ignored; the computed tier applies).
    pub unknown_pin_tiers: u32,
}

/// Grades every customer as of `as_of` under `policy`.
///
/// `customers` must be in tie-break order (source name, then external id, compared as bytes):
/// positions in the slice break ties in ABC and tier ranking.
pub fn grade_population(
    customers: &[CustomerFacts],
    as_of: NaiveDate,
    policy: &Policy,
) -> Result<GradingOutcome, FieldError> {
    policy.validate()?;
    let segments = SegmentTable::new(&policy.segments, policy.rfm.buckets)
        .map_err(|reason| FieldError::new("segments", reason))?;
    let days = |d: NaiveDate| (as_of - d).num_days();

    // The graded population G: not blocked, at least one window order.
    fn blocked(c: &CustomerFacts, as_of: NaiveDate) -> Option<&super::facts::Override> {
        c.override_
            .as_deref()
            .filter(|o| o.is_active(as_of) && o.kind == OverrideKind::Block)
    }
    let population: Vec<usize> = (0..customers.len())
        .filter(|&i| blocked(&customers[i], as_of).is_none() && customers[i].window_orders > 0)
        .collect();
    let n = u32::try_from(population.len())
        .map_err(|_| FieldError::new("customers", "more than 4 billion customers"))?;

    let monetary = |c: &CustomerFacts| match policy.rfm.monetary {
        MonetaryMeasure::Total => c.window_amount,
        MonetaryMeasure::Average => c.window_amount / i64::from(c.window_orders.max(1)),
    };
    let new_since = as_of
        .checked_sub_months(Months::new(policy.new_customer_months))
        .unwrap_or(NaiveDate::MIN);
    let weights = policy.components.weights();

    // Each step below writes its results into the grades and lets go of its buffers before the
    // next: with a million customers the grades are ~240 MB, and the buffers kept together would
    // add ~100 MB to the run's peak.
    let mut grades: Vec<Grade> = customers
        .iter()
        .map(|c| {
            let credit = credit(&c.invoices, &policy.credit);
            let lifetime_recency = c.last_order.and_then(|d| i32::try_from(days(d)).ok());
            Grade {
                customer: c.customer,
                graded: false,
                recency_days: None,
                frequency: c.window_orders,
                monetary: monetary(c),
                rfm: None,
                segment: None,
                abc: None,
                credit,
                profit: c.window_profit.resolve(policy.profit.default_margin_rate),
                components: [f64::NAN; 6],
                custom_components: Box::default(),
                composite: None,
                computed_tier: None,
                assigned_tier: None,
                tier_reason: TierReason::NotGraded,
                periods_below: 0,
                tier_since: None,
                loyalty_step: loyalty_step(c.lifetime_orders, policy.loyalty.steps.len()),
                lifecycle: Lifecycle::Prospect,
                lifetime_recency_days: lifetime_recency,
                lifetime_orders: c.lifetime_orders,
                clv_simple: None,
            }
        })
        .collect();

    // RFM scores, ranks over G (ascending by goodness: recency ranks −days, i.e. days
    // descending), and the value, frequency and recency components.
    let mut sums = [0u64; 3];
    {
        let recency: Vec<i64> = population
            .iter()
            .map(|&i| customers[i].window_latest.map_or(i64::MAX, days))
            .collect();
        let frequency: Vec<i64> = population
            .iter()
            .map(|&i| i64::from(customers[i].window_orders))
            .collect();
        let money: Vec<i64> = population.iter().map(|&i| grades[i].monetary).collect();
        let recency_rank = rank_min(&recency, |a, b| b.cmp(a));
        let frequency_rank = rank_min(&frequency, i64::cmp);
        let money_rank = rank_min(&money, i64::cmp);
        let k = policy.rfm.buckets;
        for (g, &i) in population.iter().enumerate() {
            let scores = match policy.rfm.method {
                RfmMethod::Quantiles => [
                    bucket_score(recency_rank[g], n, k),
                    bucket_score(frequency_rank[g], n, k),
                    bucket_score(money_rank[g], n, k),
                ],
                RfmMethod::Thresholds => {
                    let t = &policy.rfm.thresholds;
                    [
                        threshold_score(recency[g], &t.recency_days, true),
                        threshold_score(frequency[g], &t.frequency, false),
                        threshold_score(money[g], &t.monetary, false),
                    ]
                }
            };
            for axis in 0..3 {
                sums[axis] += u64::from(scores[axis]);
            }
            let grade = &mut grades[i];
            grade.graded = true;
            grade.recency_days = i32::try_from(recency[g]).ok();
            grade.rfm = Some(scores);
            grade.components[0] = percent_rank(money_rank[g], n);
            grade.components[2] = percent_rank(frequency_rank[g], n);
            grade.components[3] = percent_rank(recency_rank[g], n);
        }
    }
    let segment_count = segments.keys().count();
    for &i in &population {
        let grade = &mut grades[i];
        grade.segment = grade.rfm.and_then(|scores| {
            u16::try_from(segments.classify_index(scores, sums, u64::from(n))).ok()
        });
    }

    // ABC over G.
    {
        let abc_basis: Vec<Option<i64>> = population
            .iter()
            .map(|&i| match policy.abc.basis {
                AbcBasis::Monetary => Some(grades[i].monetary),
                AbcBasis::Profit => grades[i].profit,
            })
            .collect();
        let abc = abc_classes(&abc_basis, policy.abc.cuts);
        for (&i, class) in population.iter().zip(abc) {
            grades[i].abc = Some(class);
        }
    }

    // Percent-rank components over the members of G that have them: profit, then custom ones.
    {
        let profit_of_g: Vec<Option<f64>> = population
            .iter()
            .map(|&i| grades[i].profit.map(|p| p as f64))
            .collect();
        let profit_pr = partial_percent_rank(&profit_of_g);
        drop(profit_of_g);
        for (&i, value) in population.iter().zip(profit_pr) {
            grades[i].components[4] = value;
        }
    }
    let custom: Vec<(&String, &super::policy::CustomComponent)> =
        policy.components.custom.iter().collect();
    let custom_pr: Vec<Vec<f64>> = custom
        .iter()
        .map(|(_, component)| {
            let values: Vec<Option<f64>> = population
                .iter()
                .map(|&i| {
                    customers[i]
                        .attribute(&component.attribute)
                        .filter(|v| v.is_finite())
                        .map(|v| match component.direction {
                            Direction::Higher => v,
                            Direction::Lower => -v,
                        })
                })
                .collect();
            partial_percent_rank(&values)
        })
        .collect();

    for (g, &i) in population.iter().enumerate() {
        let c = &customers[i];
        let grade = &mut grades[i];
        let is_new = c
            .created_on
            .or(c.first_order)
            .is_some_and(|d| d > new_since);
        grade.components[1] = grade.credit.map_or(f64::NAN, |cr| cr.score / 100.0);
        grade.components[5] = match c.prospect_rating {
            Some(rating) if is_new => f64::from(rating.saturating_sub(1)) / 4.0,
            _ => f64::NAN,
        };
        grade.custom_components = custom_pr.iter().map(|values| values[g]).collect();
        let (weighted, total) = grade
            .components
            .iter()
            .chain(&grade.custom_components)
            .zip(&weights)
            .filter(|(v, _)| !v.is_nan())
            .fold((0.0, 0.0), |(s, t), (v, w)| (s + v * w, t + w));
        grade.composite = (total > 0.0).then(|| 100.0 * weighted / total);
    }
    drop(custom_pr);

    // Computed tiers over G.
    let composites: Vec<f64> = population
        .iter()
        .map(|&i| grades[i].composite.unwrap_or(f64::NEG_INFINITY))
        .collect();
    let computed = computed_tiers(&composites, policy);
    for (g, &i) in population.iter().enumerate() {
        grades[i].computed_tier = Some(computed[g]);
    }

    // Hysteresis and overrides.
    let tiers = policy.tiers.levels.len();
    let mut unknown_pin_tiers = 0u32;
    for (i, c) in customers.iter().enumerate() {
        let grade = &mut grades[i];
        let held = c.previous.assigned_tier.filter(|&t| usize::from(t) < tiers);
        if let Some(computed) = grade.computed_tier {
            let (assigned, periods_below, reason) = hysteresis(
                computed,
                held,
                c.previous.periods_below,
                policy.tiers.demotion_grace_periods,
            );
            grade.assigned_tier = Some(assigned);
            grade.periods_below = periods_below;
            grade.tier_reason = reason;
        }
        if let Some(o) = blocked(c, as_of) {
            grade.tier_reason = TierReason::Blocked(OverrideNote::of(o));
        } else if let Some(o) = c.override_.as_deref().filter(|o| o.is_active(as_of))
            && let OverrideKind::Pin { tier } = &o.kind
        {
            let Some(pinned) = policy.tier_index(tier) else {
                unknown_pin_tiers += 1;
                continue;
            };
            grade.assigned_tier = Some(pinned);
            grade.periods_below = 0;
            grade.tier_reason = TierReason::Pinned(OverrideNote::of(o));
        }
    }
    for (c, grade) in customers.iter().zip(grades.iter_mut()) {
        grade.tier_since = grade.assigned_tier.map(|t| {
            if c.previous.assigned_tier == Some(t) {
                c.previous.tier_since.unwrap_or(as_of)
            } else {
                as_of
            }
        });
    }

    // Lifecycle.
    let mut gaps: Vec<f64> = customers
        .iter()
        .filter_map(|c| c.median_gap_days.map(f64::from))
        .collect();
    let population_gap = score::median(&mut gaps);
    let top_step = policy.loyalty.steps.len().checked_sub(1);
    for (c, grade) in customers.iter().zip(grades.iter_mut()) {
        let input = LifecycleInput {
            lifetime_orders: c.lifetime_orders,
            recency_days: grade.lifetime_recency_days.map(i64::from),
            median_gap_days: c.median_gap_days.map(f64::from),
            top_loyalty_step: grade.loyalty_step.map(usize::from) == top_step,
        };
        grade.lifecycle = score::lifecycle(&input, population_gap, &policy.lifecycle);
    }

    // Churn rate per segment from twelve months of history, then simple CLV.
    let churn_rates = churn_rates_by_segment(customers, &grades, segment_count);
    let have_history = customers.iter().any(|c| c.year_ago.is_some());
    let clv_churn_rates: Vec<f64> = churn_rates
        .iter()
        .map(|measured| match measured {
            Some(rate) if have_history => rate.max(policy.clv.min_churn_rate),
            _ => policy.clv.default_churn_rate,
        })
        .collect();
    for (c, grade) in customers.iter().zip(grades.iter_mut()) {
        let Some(segment) = grade.segment.filter(|_| grade.graded) else {
            continue;
        };
        let Some(&rate) = clv_churn_rates.get(usize::from(segment)) else {
            continue;
        };
        let value = c
            .last_year_profit
            .resolve(policy.profit.default_margin_rate)
            .unwrap_or(c.last_year_revenue);
        grade.clv_simple = Some(clv_simple(value, rate, policy.clv.min_churn_rate));
    }

    Ok(GradingOutcome {
        grades,
        segments,
        population: n,
        population_gap_days: population_gap,
        churn_rates,
        clv_churn_rates,
        unknown_pin_tiers,
    })
}

/// Hysteresis: promotions (and staying) apply at once; a demotion applies only once the computed
/// tier has been below the held tier for `grace` consecutive periods (this one included).
/// Returns (assigned tier, consecutive periods below, reason). Tier 0 is the best.
pub fn hysteresis(
    computed: u8,
    held: Option<u8>,
    periods_below_before: u32,
    grace: u32,
) -> (u8, u32, TierReason) {
    match held {
        Some(held) if computed > held => {
            let below = periods_below_before + 1;
            if below >= grace {
                (computed, 0, TierReason::Computed)
            } else {
                (
                    held,
                    below,
                    TierReason::Held {
                        periods_below: below,
                    },
                )
            }
        }
        _ => (computed, 0, TierReason::Computed),
    }
}

/// ABC classes of values listed in tie-break order. Sort by value descending, ties by position;
/// `before_i` = Σ of values strictly ahead. A if `before_i < cut_A · total`, B if
/// `< cut_B · total`, else C, compared exactly in integers (cuts in basis points). Values ≤ 0 or
/// unknown are C; if the total is ≤ 0 everyone is C.
pub fn abc_classes(values: &[Option<i64>], cuts: [f64; 2]) -> Vec<AbcClass> {
    let mut classes = vec![AbcClass::C; values.len()];
    // The total includes negative values (refunds outweighing sales), as the contract sums monetary.
    let total: i128 = values.iter().flatten().map(|&v| i128::from(v)).sum();
    if total <= 0 {
        return classes;
    }
    let [a_bp, b_bp] = cuts.map(|c| (c * 10_000.0).round() as i128);
    let mut order: Vec<usize> = (0..values.len()).collect();
    // Unknown values sort last; ties keep tie-break order (stable sort).
    order.sort_by(|&x, &y| match (values[x], values[y]) {
        (Some(a), Some(b)) => b.cmp(&a),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
    let mut before: i128 = 0;
    for i in order {
        let Some(value) = values[i] else { continue };
        if value > 0 {
            classes[i] = if 10_000 * before < a_bp * total {
                AbcClass::A
            } else if 10_000 * before < b_bp * total {
                AbcClass::B
            } else {
                AbcClass::C
            };
        }
        before += i128::from(value);
    }
    classes
}

/// percent_rank over the entries that have a value (N = how many do); NaN for the others.
fn partial_percent_rank(values: &[Option<f64>]) -> Vec<f64> {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    let ranks = rank_min(&present, f64::total_cmp);
    let n = u32::try_from(present.len()).unwrap_or(u32::MAX);
    let mut ranks = ranks.into_iter();
    values
        .iter()
        .map(|v| match v {
            Some(_) => ranks.next().map_or(f64::NAN, |r| percent_rank(r, n)),
            None => f64::NAN,
        })
        .collect()
}

/// Computed tier of each graded customer (composites in tie-break order).
///
/// Proportions: rank by composite descending, ties by position; position j (1-based) gets the
/// first tier t with `j ≤ round(N · cumulative_share_t)`. Thresholds: the first tier whose
/// `min_score ≤ composite`, else the last.
pub fn computed_tiers(composites: &[f64], policy: &Policy) -> Vec<u8> {
    let levels = &policy.tiers.levels;
    let last = u8::try_from(levels.len().saturating_sub(1)).unwrap_or(u8::MAX);
    match policy.tiers.mode {
        TierMode::Thresholds => composites
            .iter()
            .map(|&c| {
                levels[..levels.len() - 1]
                    .iter()
                    .position(|l| c >= l.min_score)
                    .map_or(last, |t| t as u8)
            })
            .collect(),
        TierMode::Proportions => {
            let n = composites.len() as f64;
            let mut bounds = Vec::with_capacity(levels.len());
            let mut cumulative = 0.0;
            for level in levels {
                cumulative += level.share;
                bounds.push((n * cumulative).round() as usize);
            }
            let mut order: Vec<usize> = (0..composites.len()).collect();
            order.sort_by(|&a, &b| composites[b].total_cmp(&composites[a]));
            let mut tiers = vec![last; composites.len()];
            for (position, &i) in order.iter().enumerate() {
                let j = position + 1;
                tiers[i] = bounds
                    .iter()
                    .position(|&bound| j <= bound)
                    .map_or(last, |t| t as u8);
            }
            tiers
        }
    }
}

/// Per segment index: among customers that were graded in that segment twelve months ago and
/// were not churned then, the share whose lifecycle is `churned` now. None without such customers.
fn churn_rates_by_segment(
    customers: &[CustomerFacts],
    grades: &[Grade],
    segments: usize,
) -> Vec<Option<f64>> {
    let mut counts = vec![(0u64, 0u64); segments];
    for (c, grade) in customers.iter().zip(grades) {
        let Some(year_ago) = c.year_ago.filter(|y| !y.churned) else {
            continue;
        };
        let Some(slot) = year_ago
            .segment
            .and_then(|s| counts.get_mut(usize::from(s)))
        else {
            continue;
        };
        slot.0 += 1;
        if grade.lifecycle == Lifecycle::Churned {
            slot.1 += 1;
        }
    }
    counts
        .into_iter()
        .map(|(base, churned)| (base > 0).then(|| churned as f64 / base as f64))
        .collect()
}
