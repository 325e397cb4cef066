//! The predictive models applied to a period's customers: BG/NBD (or MBG/NBD) fitted on every
//! buyer's repeat-purchase summary as of D, Gamma-Gamma on the repeat buyers' spend, then per
//! customer P(alive), expected purchases, expected order value and discounted CLV.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::{CustomerFacts, Policy};
use crate::FieldError;
use crate::predictive::{
    self, ClvHorizon, Fit, FitError, GammaGammaParams, RepeatSummary, SpendSummary, Variant,
};

/// The unit the model counts time in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Days.
    #[default]
    Days,
    /// Weeks (7 days).
    Weeks,
}

impl TimeUnit {
    /// Days in one unit.
    pub fn days(self) -> f64 {
        match self {
            Self::Days => 1.0,
            Self::Weeks => 7.0,
        }
    }
}

/// Days in an average Gregorian month (365.25 / 12).
pub const DAYS_PER_MONTH: f64 = 30.4375;
/// The short horizon of expected purchases, in days.
pub const SHORT_HORIZON_DAYS: f64 = 90.0;
/// The long horizon of expected purchases, in days (a year).
pub const LONG_HORIZON_DAYS: f64 = 365.25;

/// `[predictive]`: whether and how the models run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictivePolicy {
    /// Fit the models at every grading run.
    pub enabled: bool,
    /// `modified` (MBG/NBD, the default) or `bg` (BG/NBD).
    pub variant: Variant,
    /// `days` or `weeks`.
    pub time_unit: TimeUnit,
    /// Months of future purchases model CLV counts.
    pub clv_months: u32,
    /// Discount rate per month applied to future margin (0.01 = 1 %).
    pub monthly_discount_rate: f64,
}

impl Default for PredictivePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            variant: Variant::Modified,
            time_unit: TimeUnit::Days,
            clv_months: 12,
            monthly_discount_rate: 0.01,
        }
    }
}

impl PredictivePolicy {
    /// Checks the settings; errors name the key relative to `predictive.`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !(1..=120).contains(&self.clv_months) {
            return Err(FieldError::new(
                "clv_months",
                format!("must be 1–120, got {}", self.clv_months),
            ));
        }
        if !(self.monthly_discount_rate.is_finite()
            && (0.0..1.0).contains(&self.monthly_discount_rate))
        {
            return Err(FieldError::new(
                "monthly_discount_rate",
                format!(
                    "must be at least 0 and below 1 (0.01 = 1 % a month), got {}",
                    self.monthly_discount_rate
                ),
            ));
        }
        Ok(())
    }
}

/// The fitted spend model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpendFit {
    /// Gamma-Gamma parameters (values in minor units).
    pub params: GammaGammaParams,
    /// Log-likelihood at the optimum.
    pub log_likelihood: f64,
    /// Repeat buyers with a positive average it was fitted on.
    pub customers: u64,
}

/// What a run fitted, stored with the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictiveModel {
    /// The purchase model.
    pub purchases: Fit,
    /// The spend model; `None` when it could not be fitted (see `spend_error`).
    pub spend: Option<SpendFit>,
    /// Why the spend model could not be fitted.
    pub spend_error: Option<String>,
    /// Time unit of the purchase model's α, t_x and T.
    pub time_unit: TimeUnit,
    /// Buyers the purchase model was fitted on.
    pub customers: u64,
    /// Of them, customers with at least one repeat purchase.
    pub repeat_buyers: u64,
}

/// One customer's predictions. Every value is finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Probability the customer is still buying.
    pub p_alive: f64,
    /// Expected purchases (distinct purchase days) in the next 90 days.
    pub purchases_90d: Option<f64>,
    /// Expected purchases in the next 12 months.
    pub purchases_12m: Option<f64>,
    /// Expected average order value, minor units.
    pub order_value: Option<f64>,
    /// Discounted margin over the CLV horizon, minor units.
    pub clv: Option<f64>,
}

/// A run's predictions, laid out compactly: customers who share (x, t_x, T) share one outlook,
/// and each customer keeps only its own expected order value and CLV (a million customers take
/// about 40 MB).
#[derive(Debug, Clone)]
pub struct Predictions {
    /// The fitted models, or why the purchase model could not be fitted (then every prediction
    /// is `None`).
    pub model: Result<PredictiveModel, FitError>,
    /// Per distinct summary: P(alive), E[Y(90 d)], E[Y(12 m)], discounted purchases (NaN:
    /// undefined).
    outlooks: Vec<[f64; 4]>,
    /// Per input customer.
    slots: Vec<Slot>,
}

/// One customer's place in [`Predictions`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Index into `outlooks`; [`Slot::NONE`] without an order up to D.
    outlook: u32,
    /// Expected order value (NaN: undefined).
    order_value: f64,
    /// Model CLV (NaN: undefined).
    clv: f64,
}

impl Slot {
    const NONE: u32 = u32::MAX;
    const EMPTY: Slot = Slot {
        outlook: Self::NONE,
        order_value: f64::NAN,
        clv: f64::NAN,
    };
}

/// `v` when finite.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl Predictions {
    /// Customer `i`'s predictions (input order); `None` without an order up to D, when the
    /// model could not be fitted, or when P(alive) is undefined.
    pub fn get(&self, i: usize) -> Option<Prediction> {
        let slot = self.slots.get(i)?;
        let [alive, short, long, _] = *self.outlooks.get(slot.outlook as usize)?;
        Some(Prediction {
            p_alive: finite(alive)?,
            purchases_90d: finite(short),
            purchases_12m: finite(long),
            order_value: finite(slot.order_value),
            clv: finite(slot.clv),
        })
    }

    /// Customers covered (the input's length).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no customer was given.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every customer's predictions, in input order.
    pub fn iter(&self) -> impl Iterator<Item = Option<Prediction>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// A customer's repeat-purchase summary as of `as_of`, in days: x = distinct order days − 1,
/// t_x = last − first order day, T = as_of − first order day. `None` without orders.
pub fn repeat_summary_days(f: &CustomerFacts, as_of: NaiveDate) -> Option<(u32, i64, i64)> {
    let (first, last) = (f.first_order?, f.last_order?);
    let repeats = f.order_days.checked_sub(1)?;
    let age = (as_of - first).num_days();
    let recency = (last - first).num_days();
    (age >= 0 && (0..=age).contains(&recency)).then_some((repeats, recency, age))
}

/// The share of revenue a customer keeps: last-12-month profit ÷ revenue (profit as in simple
/// CLV: costs, else `default_margin_rate`); `default_margin_rate` without revenue; 1 (revenue)
/// when profit is unknown.
pub fn margin_share(f: &CustomerFacts, default_margin_rate: Option<f64>) -> f64 {
    if f.last_year_revenue > 0
        && let Some(profit) = f.last_year_profit.resolve(default_margin_rate)
    {
        return profit as f64 / f.last_year_revenue as f64;
    }
    default_margin_rate.unwrap_or(1.0)
}

/// (x, t_x in days, T in days).
type SummaryKey = (u32, i64, i64);

/// Fits the models on `customers` as of `as_of` and predicts each customer:
/// [`PredictionInputs::new`] then [`PredictionInputs::predict`].
///
/// Purchase model: every customer with an order up to D. Spend model: customers with x ≥ 1 and
/// repeat amount > 0, m_x = repeat amount / x. CLV = value · margin · Σ_{k=1..H} (E[Y(k·u)] −
/// E[Y((k−1)·u)]) / (1+d)^k with u a month in model units (see [`predictive::discounted_clv`]).
///
/// `previous`, the models of the period before, starts the purchase fit near its optimum when
/// it used the same variant and time unit, and the spend fit whenever it has one (month to
/// month the parameters move little).
pub fn predict_population(
    customers: &[CustomerFacts],
    as_of: NaiveDate,
    policy: &Policy,
    previous: Option<&PredictiveModel>,
) -> Predictions {
    PredictionInputs::new(customers, as_of, policy).predict(policy, previous)
}

/// What the models need of each customer, taken from its facts so that a run can let go of the
/// facts (about 190 bytes a customer) before fitting: its repeat-purchase summary (x, t_x, T),
/// shared by customers with equal summaries, its repeat amount and its margin share (about 24
/// bytes a customer).
#[derive(Debug, Clone)]
pub struct PredictionInputs {
    /// Distinct summaries, sorted (the fit sees the same order whatever the customers' order).
    keys: Vec<SummaryKey>,
    /// Customers per distinct summary.
    weights: Vec<f64>,
    /// Per input customer.
    customers: Vec<CustomerInput>,
}

/// One customer's part of [`PredictionInputs`].
#[derive(Debug, Clone, Copy)]
struct CustomerInput {
    /// Index into `keys`; [`Slot::NONE`] without an order up to D.
    summary: u32,
    /// Amount of its repeat orders, minor units.
    repeat_amount: i64,
    /// [`margin_share`].
    margin: f64,
}

impl PredictionInputs {
    /// Each customer's summary as of `as_of`, repeat amount and margin share under `policy`.
    pub fn new(customers: &[CustomerFacts], as_of: NaiveDate, policy: &Policy) -> Self {
        // Distinct summaries numbered in sorted order, found by sorting (summary, customer)
        // pairs: half the memory of a hash map from summary to number.
        let mut inputs: Vec<CustomerInput> = Vec::with_capacity(customers.len());
        let mut pairs: Vec<(SummaryKey, u32)> = Vec::new();
        for (i, f) in customers.iter().enumerate() {
            if let Some(key) = repeat_summary_days(f, as_of) {
                // Lossless for every population grade_population takes (it refuses more
                // than u32::MAX customers).
                pairs.push((key, i as u32));
            }
            inputs.push(CustomerInput {
                summary: Slot::NONE,
                repeat_amount: f.repeat_amount,
                margin: margin_share(f, policy.profit.default_margin_rate),
            });
        }
        pairs.sort_unstable();
        let mut keys: Vec<SummaryKey> = Vec::new();
        let mut weights: Vec<f64> = Vec::new();
        for &(key, customer) in &pairs {
            if keys.last() != Some(&key) {
                keys.push(key);
                weights.push(0.0);
            }
            if let Some(weight) = weights.last_mut() {
                *weight += 1.0;
            }
            inputs[customer as usize].summary = (keys.len() - 1) as u32;
        }
        drop(pairs);
        keys.shrink_to_fit();
        weights.shrink_to_fit();
        Self {
            keys,
            weights,
            customers: inputs,
        }
    }

    /// Fits the models and predicts each customer, in input order (see [`predict_population`]).
    pub fn predict(self, policy: &Policy, previous: Option<&PredictiveModel>) -> Predictions {
        let Self {
            keys,
            weights,
            customers,
        } = self;
        let settings = &policy.predictive;
        let unit = settings.time_unit.days();
        let to_model = |&(x, recency, age): &SummaryKey| RepeatSummary {
            frequency: x,
            recency: recency as f64 / unit,
            age: age as f64 / unit,
        };
        let data: Vec<(RepeatSummary, f64)> = keys
            .iter()
            .zip(&weights)
            .map(|(k, w)| (to_model(k), *w))
            .collect();
        let start = previous
            .filter(|m| {
                m.purchases.variant == settings.variant && m.time_unit == settings.time_unit
            })
            .map(|m| &m.purchases.params);
        let purchases = predictive::fit_from(settings.variant, &data, start);
        drop(data);
        let purchases = match purchases {
            Ok(fit) => fit,
            Err(error) => {
                return Predictions {
                    model: Err(error),
                    outlooks: Vec::new(),
                    slots: vec![Slot::EMPTY; customers.len()],
                };
            }
        };

        let repeats = |n: u32| keys.get(n as usize).map_or(0, |k| k.0);
        let spend_data: Vec<SpendSummary> = customers
            .iter()
            .filter_map(|c| spend_summary(c.repeat_amount, repeats(c.summary)))
            .collect();
        let spend_start = previous.and_then(|m| m.spend.as_ref()).map(|s| &s.params);
        let (spend, spend_error) = match predictive::fit_spend_from(&spend_data, spend_start) {
            Ok((params, log_likelihood)) => (
                Some(SpendFit {
                    params,
                    log_likelihood,
                    customers: spend_data.len() as u64,
                }),
                None,
            ),
            Err(error) => (None, Some(error.to_string())),
        };
        drop(spend_data);

        let (p, variant) = (purchases.params, purchases.variant);
        // P(alive) as the expectations weigh it differs from the stored one only when a is
        // within 1e-6 of 1: then, and only then, it is computed apart.
        let expectation_params = predictive::expectation_params(&p);
        let weigh_apart = expectation_params != p;
        let horizon = ClvHorizon {
            months: settings.clv_months,
            monthly_discount: settings.monthly_discount_rate,
            units_per_month: DAYS_PER_MONTH / unit,
        };
        let nan = |v: Option<f64>| v.filter(|v| v.is_finite()).unwrap_or(f64::NAN);
        // The expected purchases' costly part (a hypergeometric series per horizon) depends on
        // x and T only: summaries are visited grouped by (x, T), and each group computes it
        // once for the horizons of the outlook and of every CLV month.
        let mut by_frequency_and_age: Vec<u32> = (0..keys.len() as u32).collect();
        by_frequency_and_age.sort_unstable_by_key(|&n| {
            let (x, _, age) = keys[n as usize];
            (x, age)
        });
        let short_t = SHORT_HORIZON_DAYS / unit;
        let long_t = LONG_HORIZON_DAYS / unit;
        let month_t: Vec<f64> = (1..=horizon.months)
            .map(|k| f64::from(k) * horizon.units_per_month)
            .collect();
        let parts = predictive::map_in_chunks(&by_frequency_and_age, |chunk| {
            let mut group: Option<(u32, i64)> = None;
            let (mut short, mut long) = (None, None);
            let mut months: Vec<Option<f64>> = Vec::with_capacity(month_t.len());
            chunk
                .iter()
                .map(|&n| {
                    let key = &keys[n as usize];
                    let c = to_model(key);
                    if group != Some((key.0, key.2)) {
                        group = Some((key.0, key.2));
                        let if_alive = |t: f64| {
                            predictive::expected_purchases_if_alive(
                                &p,
                                variant,
                                c.frequency,
                                c.age,
                                t,
                            )
                        };
                        short = if_alive(short_t);
                        long = if_alive(long_t);
                        months.clear();
                        months.extend(month_t.iter().map(|&t| if_alive(t)));
                    }
                    let alive = predictive::p_alive(&p, variant, &c);
                    let weighted = if weigh_apart {
                        predictive::p_alive(&expectation_params, variant, &c)
                    } else {
                        alive
                    };
                    // Margin and value scale the discounted purchases: one pass per summary.
                    let discounted =
                        predictive::discounted_clv_from(&months, weighted, 1.0, 1.0, &horizon);
                    (
                        n,
                        [
                            nan(Some(alive)),
                            nan(predictive::expected_purchases_from(short, weighted)),
                            nan(predictive::expected_purchases_from(long, weighted)),
                            nan(discounted),
                        ],
                    )
                })
                .collect::<Vec<_>>()
        });
        drop(by_frequency_and_age);
        let mut outlooks: Vec<[f64; 4]> = vec![[f64::NAN; 4]; keys.len()];
        for (n, outlook) in parts.into_iter().flatten() {
            outlooks[n as usize] = outlook;
        }

        let slots = customers
            .iter()
            .map(|c| {
                let Some(&[_, _, _, discounted]) = outlooks.get(c.summary as usize) else {
                    return Slot::EMPTY;
                };
                let order_value = spend
                    .and_then(|g| {
                        let own = spend_summary(c.repeat_amount, repeats(c.summary));
                        predictive::expected_average_value(&g.params, own.as_ref())
                    })
                    .unwrap_or(f64::NAN);
                Slot {
                    outlook: c.summary,
                    order_value: nan(Some(order_value)),
                    clv: nan(Some(discounted * order_value * c.margin)),
                }
            })
            .collect();
        let buyers = weights.iter().sum::<f64>() as u64;
        let repeat_buyers = keys
            .iter()
            .zip(&weights)
            .filter(|(k, _)| k.0 > 0)
            .map(|(_, w)| *w)
            .sum::<f64>() as u64;
        Predictions {
            model: Ok(PredictiveModel {
                purchases,
                spend,
                spend_error,
                time_unit: settings.time_unit,
                customers: buyers,
                repeat_buyers,
            }),
            outlooks,
            slots,
        }
    }
}

/// A repeat buyer's spend (x repeat days, average repeat amount), if positive.
fn spend_summary(repeat_amount: i64, repeats: u32) -> Option<SpendSummary> {
    (repeats > 0 && repeat_amount > 0).then(|| SpendSummary {
        transactions: repeats,
        average: repeat_amount as f64 / f64::from(repeats),
    })
}
