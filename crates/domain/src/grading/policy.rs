//! The grading policy: every weight, cut-off, tier and cadence a grading run uses, as one
//! serialisable value built from the `[grading]` configuration. Its hash identifies it, so each
//! stored grade can say which policy produced it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::predict::PredictivePolicy;
use crate::FieldError;

/// The whole grading policy (`[grading]` in configuration). Every field has the contract's default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Months of order history a run looks back from the as-of date (window: D − months < date ≤ D).
    pub lookback_months: u32,
    /// Customers whose first order (or creation date) is within this many months get the
    /// `prospect` component from their manual rating.
    pub new_customer_months: u32,
    /// Recency, frequency and monetary scores.
    pub rfm: RfmPolicy,
    /// The RFM segment rule table.
    pub segments: SegmentPolicy,
    /// ABC (Pareto) classes.
    pub abc: AbcPolicy,
    /// Credit score from payment timeliness.
    pub credit: CreditPolicy,
    /// Profit contribution.
    pub profit: ProfitPolicy,
    /// Composite score: built-in component weights and custom components.
    pub components: ComponentPolicy,
    /// Tiers: names, colours, cut-offs, cadences and hysteresis.
    pub tiers: TierPolicy,
    /// Lifecycle stage thresholds.
    pub lifecycle: LifecyclePolicy,
    /// The purchase-count loyalty ladder.
    pub loyalty: LoyaltyPolicy,
    /// Simple customer lifetime value.
    pub clv: ClvPolicy,
    /// The predictive models. Configured as `[predictive]`; the application copies that section
    /// here so that the run's policy (and its hash) records the settings it was fitted with.
    pub predictive: PredictivePolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            lookback_months: 24,
            new_customer_months: 6,
            rfm: RfmPolicy::default(),
            segments: SegmentPolicy::default(),
            abc: AbcPolicy::default(),
            credit: CreditPolicy::default(),
            profit: ProfitPolicy::default(),
            components: ComponentPolicy::default(),
            tiers: TierPolicy::default(),
            lifecycle: LifecyclePolicy::default(),
            loyalty: LoyaltyPolicy::default(),
            clv: ClvPolicy::default(),
            predictive: PredictivePolicy::default(),
        }
    }
}

/// How monetary is measured over the window's orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonetaryMeasure {
    /// Sum of window order amounts.
    Total,
    /// Mean of window order amounts (rounded toward zero to a minor unit).
    Average,
}

/// How RFM scores are assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RfmMethod {
    /// k buckets by min-rank quantiles over the graded population.
    Quantiles,
    /// Fixed cut lists per axis.
    Thresholds,
}

/// `[grading.rfm]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RfmPolicy {
    /// Number of score buckets k (scores run 1..=k, k best).
    pub buckets: u8,
    /// `quantiles` (default) or `thresholds`.
    pub method: RfmMethod,
    /// `total` (default) or `average`.
    pub monetary: MonetaryMeasure,
    /// Cut lists for `method = "thresholds"`.
    pub thresholds: RfmThresholds,
}

impl Default for RfmPolicy {
    fn default() -> Self {
        Self {
            buckets: 5,
            method: RfmMethod::Quantiles,
            monetary: MonetaryMeasure::Total,
            thresholds: RfmThresholds::default(),
        }
    }
}

/// Fixed RFM cut lists: k − 1 ascending cuts per axis. For frequency and monetary, a value ≥ the
/// i-th cut earns at least score i + 1; for recency, a value of days ≤ the i-th cut (listed in
/// descending order) earns at least score i + 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RfmThresholds {
    /// Recency cuts in days, descending (e.g. `[365, 180, 90, 30]`).
    pub recency_days: Vec<i64>,
    /// Frequency cuts in orders, ascending (e.g. `[2, 3, 5, 10]`).
    pub frequency: Vec<i64>,
    /// Monetary cuts in minor units, ascending.
    pub monetary: Vec<i64>,
}

impl Default for RfmThresholds {
    fn default() -> Self {
        Self {
            recency_days: vec![365, 180, 90, 30],
            frequency: vec![2, 3, 5, 10],
            monetary: vec![100_000, 500_000, 2_000_000, 10_000_000],
        }
    }
}

/// `[grading.segments]`: a preset rule table or a custom one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentPolicy {
    /// `rfm8` (default), `rf_grid` (k = 5 only) or `custom` (then `rules` is used).
    pub preset: SegmentPreset,
    /// The rules for `preset = "custom"`: the first rule that matches names the segment.
    pub rules: Vec<SegmentRule>,
}

impl Default for SegmentPolicy {
    fn default() -> Self {
        Self {
            preset: SegmentPreset::Rfm8,
            rules: Vec::new(),
        }
    }
}

/// The shipped segment tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentPreset {
    /// The eight classic classes (重要价值客户 … 一般挽留客户) by score versus the population mean.
    Rfm8,
    /// The ten-cell R × F grid (champions … hibernating); requires k = 5.
    RfGrid,
    /// `rules` from configuration.
    Custom,
}

/// One row of a segment table: conditions on R, F and M scores and the segment it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRule {
    /// Stable key stored with each grade (`important_value`).
    pub key: String,
    /// Display label (`重要价值客户`); the key when absent.
    #[serde(default)]
    pub label: Option<String>,
    /// Condition on the R score: `any`, `high`, `low`, `3` or `3-4`.
    #[serde(default = "any_condition")]
    pub r: String,
    /// Condition on the F score.
    #[serde(default = "any_condition")]
    pub f: String,
    /// Condition on the M score.
    #[serde(default = "any_condition")]
    pub m: String,
}

fn any_condition() -> String {
    "any".to_owned()
}

/// What an ABC ranking sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbcBasis {
    /// Window monetary.
    Monetary,
    /// Window profit (customers with unknown profit are C).
    Profit,
}

/// `[grading.abc]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AbcPolicy {
    /// Cumulative-share cuts for A and B (default `[0.80, 0.95]`).
    pub cuts: [f64; 2],
    /// `monetary` (default) or `profit`.
    pub basis: AbcBasis,
}

impl Default for AbcPolicy {
    fn default() -> Self {
        Self {
            cuts: [0.80, 0.95],
            basis: AbcBasis::Monetary,
        }
    }
}

/// `[grading.credit]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreditPolicy {
    /// Days after the due date a payment still counts as on time.
    pub grace_days: i64,
    /// Minimum scores of the grades AAA, AA, A and B; below the last is C.
    pub grade_floors: [f64; 4],
}

impl Default for CreditPolicy {
    fn default() -> Self {
        Self {
            grace_days: 3,
            grade_floors: [90.0, 75.0, 60.0, 40.0],
        }
    }
}

/// `[grading.profit]`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfitPolicy {
    /// Margin assumed for orders imported without a cost (e.g. 0.25); unset = profit unknown.
    pub default_margin_rate: Option<f64>,
}

/// Whether a larger value of a custom component is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Larger is better (NPS, CSAT).
    Higher,
    /// Smaller is better (complaints, days to pay).
    Lower,
}

/// A composite component taken from a numeric customer attribute brought in by an import mapping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomComponent {
    /// The attribute name as mapped in the import (`nps`).
    pub attribute: String,
    /// Its weight beside the built-in components.
    pub weight: f64,
    /// `higher` (default) or `lower` is better.
    #[serde(default = "higher")]
    pub direction: Direction,
}

fn higher() -> Direction {
    Direction::Higher
}

/// `[grading.components]`: weights of the built-in components and the custom ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentPolicy {
    /// percent_rank(monetary).
    pub value: f64,
    /// credit_score / 100.
    pub credit: f64,
    /// percent_rank(frequency).
    pub frequency: f64,
    /// percent_rank(−recency_days).
    pub recency: f64,
    /// percent_rank(profit).
    pub profit: f64,
    /// (rating − 1) / 4 for new customers with a manual rating.
    pub prospect: f64,
    /// Custom components by name (`[grading.components.custom.nps]`).
    pub custom: BTreeMap<String, CustomComponent>,
}

impl Default for ComponentPolicy {
    fn default() -> Self {
        Self {
            value: 0.35,
            credit: 0.20,
            frequency: 0.15,
            recency: 0.15,
            profit: 0.15,
            prospect: 0.25,
            custom: BTreeMap::new(),
        }
    }
}

/// How the composite score maps to tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierMode {
    /// Fixed shares of the graded population, best first.
    Proportions,
    /// Minimum composite scores.
    Thresholds,
}

/// One tier, best first in [`TierPolicy::levels`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLevel {
    /// Its name (`A`, `Key account`).
    pub name: String,
    /// Display colour (CSS colour).
    pub colour: String,
    /// Share of the graded population in `proportions` mode.
    pub share: f64,
    /// Minimum composite in `thresholds` mode (ignored for the last tier, which takes the rest).
    pub min_score: f64,
    /// Call cadence in months (none = no call reminders).
    #[serde(default)]
    pub call_every_months: Option<u32>,
    /// Visit cadence in months (none = no visit reminders).
    #[serde(default)]
    pub visit_every_months: Option<u32>,
    /// Whether churn alerts are raised for customers of this tier.
    #[serde(default)]
    pub alert_on_churn: bool,
}

/// `[grading.tiers]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierPolicy {
    /// `proportions` (default) or `thresholds`.
    pub mode: TierMode,
    /// Consecutive periods the computed tier must stay below the held tier before a demotion applies.
    pub demotion_grace_periods: u32,
    /// The tiers, best first.
    pub levels: Vec<TierLevel>,
}

impl Default for TierPolicy {
    fn default() -> Self {
        let level = |name: &str, colour: &str, share, min_score, call, visit, alert| TierLevel {
            name: name.to_owned(),
            colour: colour.to_owned(),
            share,
            min_score,
            call_every_months: call,
            visit_every_months: visit,
            alert_on_churn: alert,
        };
        Self {
            mode: TierMode::Proportions,
            demotion_grace_periods: 2,
            levels: vec![
                level("A", "#1b7f3b", 0.10, 75.0, Some(1), Some(3), true),
                level("B", "#2f6fb0", 0.20, 55.0, Some(3), Some(6), true),
                level("C", "#c98a12", 0.30, 35.0, Some(6), Some(12), false),
                level("D", "#8a8f98", 0.40, 0.0, Some(12), None, false),
            ],
        }
    }
}

/// `[grading.lifecycle]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecyclePolicy {
    /// Recency beyond which a customer is `churned`.
    pub churned_after_days: i64,
    /// `at_risk` when recency exceeds this multiple of the typical gap between orders.
    pub at_risk_gap_multiple: f64,
    /// A one-order customer is `new` while its order is at most this many days old.
    pub new_within_days: i64,
}

impl Default for LifecyclePolicy {
    fn default() -> Self {
        Self {
            churned_after_days: 365,
            at_risk_gap_multiple: 2.0,
            new_within_days: 90,
        }
    }
}

/// `[grading.loyalty]`: step names by lifetime order count; the i-th name needs i + 1 orders and
/// the last applies to every count beyond.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoyaltyPolicy {
    /// Default `["new", "potential", "regular", "mature", "loyal"]`.
    pub steps: Vec<String>,
}

impl Default for LoyaltyPolicy {
    fn default() -> Self {
        Self {
            steps: ["new", "potential", "regular", "mature", "loyal"]
                .map(str::to_owned)
                .to_vec(),
        }
    }
}

/// `[grading.clv]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClvPolicy {
    /// Annual churn rate used until 12 months of grading history exist.
    pub default_churn_rate: f64,
    /// Floor of the measured churn rate.
    pub min_churn_rate: f64,
}

impl Default for ClvPolicy {
    fn default() -> Self {
        Self {
            default_churn_rate: 0.25,
            min_churn_rate: 0.05,
        }
    }
}

impl Policy {
    /// The policy's identity: the first 16 hex digits of SHA-256 over its canonical JSON form
    /// (fields in declaration order, maps sorted), so equal policies hash equally everywhere.
    pub fn hash(&self) -> String {
        // Serialising plain structs, maps with string keys and finite floats cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Checks the policy is usable; each error names the setting (relative to `grading.`).
    pub fn validate(&self) -> Result<(), FieldError> {
        let fail = |field: &'static str, reason: String| Err(FieldError::new(field, reason));
        if !(1..=120).contains(&self.lookback_months) {
            return fail(
                "lookback_months",
                format!("{} is outside 1..=120", self.lookback_months),
            );
        }
        let k = self.rfm.buckets;
        if !(2..=10).contains(&k) {
            return fail("rfm.buckets", format!("{k} is outside 2..=10"));
        }
        if self.rfm.method == RfmMethod::Thresholds {
            let t = &self.rfm.thresholds;
            let want = usize::from(k) - 1;
            for (field, cuts, descending) in [
                ("rfm.thresholds.recency_days", &t.recency_days, true),
                ("rfm.thresholds.frequency", &t.frequency, false),
                ("rfm.thresholds.monetary", &t.monetary, false),
            ] {
                if cuts.len() != want {
                    return fail(
                        field,
                        format!("has {} cuts; {k} buckets need {want}", cuts.len()),
                    );
                }
                let ordered = cuts
                    .windows(2)
                    .all(|w| if descending { w[0] > w[1] } else { w[0] < w[1] });
                if !ordered {
                    let order = if descending {
                        "descending"
                    } else {
                        "ascending"
                    };
                    return fail(field, format!("cuts must be strictly {order}"));
                }
            }
        }
        match self.segments.preset {
            SegmentPreset::RfGrid if k != 5 => {
                return fail(
                    "segments.preset",
                    format!("rf_grid needs rfm.buckets = 5, not {k}"),
                );
            }
            SegmentPreset::Custom if self.segments.rules.is_empty() => {
                return fail(
                    "segments.rules",
                    "preset = \"custom\" needs at least one [[grading.segments.rules]]".into(),
                );
            }
            _ => {}
        }
        for rule in &self.segments.rules {
            for cond in [&rule.r, &rule.f, &rule.m] {
                if let Err(reason) = super::segment::ScoreCondition::parse(cond, k) {
                    return fail("segments.rules", format!("rule '{}': {reason}", rule.key));
                }
            }
        }
        let [a, b] = self.abc.cuts;
        if !(0.0 < a && a < b && b <= 1.0) {
            return fail(
                "abc.cuts",
                format!("[{a}, {b}] must satisfy 0 < A < B <= 1"),
            );
        }
        if self.credit.grace_days < 0 {
            return fail("credit.grace_days", "must not be negative".into());
        }
        if !self.credit.grade_floors.windows(2).all(|w| w[0] > w[1]) {
            return fail(
                "credit.grade_floors",
                "must be strictly descending (AAA, AA, A, B)".into(),
            );
        }
        if let Some(rate) = self.profit.default_margin_rate
            && !(-1.0..=1.0).contains(&rate)
        {
            return fail(
                "profit.default_margin_rate",
                format!("{rate} is outside -1..=1"),
            );
        }
        let c = &self.components;
        let builtin = c.builtin_weights();
        let custom = c.custom.values().map(|x| x.weight);
        if builtin
            .iter()
            .copied()
            .chain(custom.clone())
            .any(|w| !(w.is_finite() && w >= 0.0))
        {
            return fail("components", "weights must be finite and >= 0".into());
        }
        if builtin.iter().copied().chain(custom).sum::<f64>() <= 0.0 {
            return fail("components", "at least one weight must be positive".into());
        }
        let levels = &self.tiers.levels;
        if levels.is_empty() || levels.len() > 26 {
            return fail(
                "tiers.levels",
                format!("has {} tiers; 1 to 26 are supported", levels.len()),
            );
        }
        for (i, level) in levels.iter().enumerate() {
            if level.name.trim().is_empty() {
                return fail("tiers.levels", format!("tier {} has an empty name", i + 1));
            }
            if levels[..i].iter().any(|l| l.name == level.name) {
                return fail(
                    "tiers.levels",
                    format!("tier name '{}' repeats", level.name),
                );
            }
        }
        match self.tiers.mode {
            TierMode::Proportions => {
                let total: f64 = levels.iter().map(|l| l.share).sum();
                if levels.iter().any(|l| l.share.is_nan() || l.share < 0.0)
                    || (total - 1.0).abs() > 1e-9
                {
                    return fail(
                        "tiers.levels",
                        format!("shares must be >= 0 and add up to 1 (they add up to {total})"),
                    );
                }
            }
            TierMode::Thresholds => {
                let floors: Vec<f64> = levels[..levels.len() - 1]
                    .iter()
                    .map(|l| l.min_score)
                    .collect();
                if !floors.windows(2).all(|w| w[0] > w[1]) {
                    return fail(
                        "tiers.levels",
                        "min_score must be strictly descending from the best tier".into(),
                    );
                }
            }
        }
        if self.loyalty.steps.is_empty() {
            return fail("loyalty.steps", "needs at least one step".into());
        }
        let clv = &self.clv;
        if !(0.0 < clv.min_churn_rate
            && clv.min_churn_rate <= clv.default_churn_rate
            && clv.default_churn_rate <= 1.0)
        {
            return fail(
                "clv",
                "needs 0 < min_churn_rate <= default_churn_rate <= 1".into(),
            );
        }
        Ok(())
    }

    /// Index of the tier named `name`, if any.
    pub fn tier_index(&self, name: &str) -> Option<u8> {
        self.tiers
            .levels
            .iter()
            .position(|l| l.name == name)
            .and_then(|i| u8::try_from(i).ok())
    }

    /// The tier names, best first.
    pub fn tier_names(&self) -> Vec<String> {
        self.tiers.levels.iter().map(|l| l.name.clone()).collect()
    }

    /// Name of tier `index` (best = 0).
    pub fn tier_name(&self, index: u8) -> &str {
        self.tiers
            .levels
            .get(usize::from(index))
            .map_or("?", |l| l.name.as_str())
    }
}

impl ComponentPolicy {
    /// The built-in components' weights, in [`BUILTIN_COMPONENTS`](super::engine::BUILTIN_COMPONENTS)
    /// order: value, credit, frequency, recency, profit, prospect.
    pub fn builtin_weights(&self) -> [f64; 6] {
        [
            self.value,
            self.credit,
            self.frequency,
            self.recency,
            self.profit,
            self.prospect,
        ]
    }

    /// Weights in storage order: the built-in components, then the custom ones by name.
    pub fn weights(&self) -> Vec<f64> {
        self.builtin_weights()
            .into_iter()
            .chain(self.custom.values().map(|c| c.weight))
            .collect()
    }
}
