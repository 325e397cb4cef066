//! Probabilistic repeat-buying model: BG/NBD (Fader, Hardie & Lee, 2005, "Counting your
//! customers the easy way") and its modified form MBG/NBD (Batislam, Denizel & Filiztekin, 2007),
//! fitted by maximum likelihood on each customer's repeat-purchase summary.
//!
//! A customer buys at Poisson rate λ while alive (λ ~ Gamma(r, α) across customers) and may drop
//! out after each purchase with probability p (p ~ Beta(a, b)). BG/NBD lets a customer drop out
//! only after a repeat purchase, so a customer who never came back is certainly alive; MBG/NBD
//! also allows a drop-out at the first purchase, which is what users expect of one-time buyers.
//!
//! Everything is computed in logs (log-gamma, log-sum-exp); the optimiser (Nelder–Mead on the
//! logs of the four parameters, so they stay positive) is written here and checks convergence.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One customer's purchase history as the model sees it, in model time units (days or weeks).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RepeatSummary {
    /// x: repeat purchases (distinct purchase periods after the first).
    pub frequency: u32,
    /// t_x: time from the first to the last purchase.
    pub recency: f64,
    /// T: time from the first purchase to the as-of date.
    pub age: f64,
}

impl RepeatSummary {
    /// A summary; `None` when the times are not finite, negative, or `recency > age`, or when a
    /// customer without repeats has a non-zero recency.
    pub fn new(frequency: u32, recency: f64, age: f64) -> Option<Self> {
        let valid = recency.is_finite()
            && age.is_finite()
            && recency >= 0.0
            && recency <= age
            && (frequency > 0 || recency == 0.0);
        valid.then_some(Self {
            frequency,
            recency,
            age,
        })
    }
}

/// Which model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// BG/NBD: drop-out only after a repeat purchase.
    Bg,
    /// MBG/NBD: drop-out possible after every purchase, the first included.
    #[default]
    Modified,
}

/// The four parameters: purchase rates ~ Gamma(r, α), drop-out probabilities ~ Beta(a, b).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BgNbdParams {
    /// Shape of the purchase-rate distribution.
    pub r: f64,
    /// Scale (in time units) of the purchase-rate distribution.
    pub alpha: f64,
    /// Beta parameter a of the drop-out probability.
    pub a: f64,
    /// Beta parameter b of the drop-out probability.
    pub b: f64,
}

fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// ln(e^u + e^v) without overflow.
fn log_sum_exp(u: f64, v: f64) -> f64 {
    let (hi, lo) = if u >= v { (u, v) } else { (v, u) };
    hi + (lo - hi).exp().ln_1p()
}

/// ln of the drop-out term: BG `a / (b + x − 1)` (only when x > 0), MBG `a / (b + x)`.
fn ln_dropout_odds(p: &BgNbdParams, variant: Variant, x: f64) -> Option<f64> {
    match variant {
        Variant::Bg if x == 0.0 => None,
        Variant::Bg => Some(p.a.ln() - (p.b + x - 1.0).ln()),
        Variant::Modified => Some(p.a.ln() - (p.b + x).ln()),
    }
}

/// One customer's log-likelihood.
///
/// BG/NBD: ln L = ln Γ(r+x) − ln Γ(r) + r ln α + ln Γ(a+b) + ln Γ(b+x) − ln Γ(b) − ln Γ(a+b+x)
/// + ln[(α+T)^−(r+x) + 1{x>0} · a/(b+x−1) · (α+t_x)^−(r+x)].
///
/// MBG/NBD: ln L = ln Γ(r+x) − ln Γ(r) + r ln α + ln Γ(a+b) + ln Γ(b+x+1) − ln Γ(b)
/// − ln Γ(a+b+x+1) + ln[(α+T)^−(r+x) + a/(b+x) · (α+t_x)^−(r+x)].
pub fn log_likelihood(p: &BgNbdParams, variant: Variant, c: &RepeatSummary) -> f64 {
    let x = f64::from(c.frequency);
    let shift = match variant {
        Variant::Bg => 0.0,
        Variant::Modified => 1.0,
    };
    let head = ln_gamma(p.r + x) - ln_gamma(p.r)
        + p.r * p.alpha.ln()
        + ln_gamma(p.a + p.b)
        + ln_gamma(p.b + x + shift)
        - ln_gamma(p.b)
        - ln_gamma(p.a + p.b + x + shift);
    let still = -(p.r + x) * (p.alpha + c.age).ln();
    let tail = match ln_dropout_odds(p, variant, x) {
        None => still,
        Some(odds) => log_sum_exp(still, odds - (p.r + x) * (p.alpha + c.recency).ln()),
    };
    head + tail
}

/// Sum of [`log_likelihood`] over customers, each with a weight (how many customers share the
/// summary).
pub fn total_log_likelihood(
    p: &BgNbdParams,
    variant: Variant,
    data: &[(RepeatSummary, f64)],
) -> f64 {
    data.iter()
        .map(|(c, weight)| weight * log_likelihood(p, variant, c))
        .sum()
}

/// P(alive | x, t_x, T) = 1 / (1 + D · ((α+T)/(α+t_x))^(r+x)), with D = a/(b+x−1) for BG/NBD
/// (and P = 1 when x = 0) or D = a/(b+x) for MBG/NBD.
pub fn p_alive(p: &BgNbdParams, variant: Variant, c: &RepeatSummary) -> f64 {
    let x = f64::from(c.frequency);
    match ln_dropout_odds(p, variant, x) {
        None => 1.0,
        Some(odds) => {
            let ln_ratio = (p.r + x) * ((p.alpha + c.age).ln() - (p.alpha + c.recency).ln());
            1.0 / (1.0 + (odds + ln_ratio).exp())
        }
    }
}

/// Probability of no purchase in the next `t` time units:
/// P(Y(t) = 0 | x, t_x, T) = (1 − P(alive)) + P(alive) · ((α+T)/(α+T+t))^(r+x).
/// A customer who dropped out buys nothing; one still alive has λ | data ~ Gamma(r+x, α+T) and
/// cannot drop out without buying, so buys nothing with probability E[e^(−λt)].
pub fn p_no_purchase(p: &BgNbdParams, variant: Variant, c: &RepeatSummary, t: f64) -> f64 {
    let alive = p_alive(p, variant, c);
    let x = f64::from(c.frequency);
    let quiet = ((p.r + x) * ((p.alpha + c.age).ln() - (p.alpha + c.age + t.max(0.0)).ln())).exp();
    (1.0 - alive) + alive * quiet
}

/// Gauss's hypergeometric series 2F1(a, b; c; z) for 0 ≤ z < 1, summed until a term no longer
/// changes the sum (relative 1e-15) or 100,000 terms; `None` if it did not converge.
fn hyp2f1(a: f64, b: f64, c: f64, z: f64) -> Option<f64> {
    if !(0.0..1.0).contains(&z) {
        return None;
    }
    let (mut term, mut sum) = (1.0_f64, 1.0_f64);
    for n in 0..100_000 {
        let n = f64::from(n);
        term *= (a + n) * (b + n) / ((c + n) * (n + 1.0)) * z;
        sum += term;
        if term.abs() <= 1e-15 * sum.abs() {
            return sum.is_finite().then_some(sum);
        }
    }
    None
}

/// Expected purchases in the next `t` time units, E[Y(t) | x, t_x, T]:
///
/// BG/NBD: (a+b+x−1)/(a−1) · [1 − ((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x; a+b+x−1; t/(α+T+t))]
/// · P(alive).
///
/// MBG/NBD: (a+b+x)/(a−1) · [1 − ((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x+1; a+b+x; t/(α+T+t))]
/// · P(alive).
///
/// Holds for every a > 0: the 1/(a − 1) is an artefact of the algebra, cancelled by the bracket
/// (`bench/bgnbd_reference.py` checks a CDNOW case with a = 0.793 against direct integration
/// over λ and p). Within 1e-6 of a = 1, where the two cancel numerically, a is moved 1e-6 away
/// (the function is continuous there). `None` when the series does not converge.
pub fn expected_purchases(
    p: &BgNbdParams,
    variant: Variant,
    c: &RepeatSummary,
    t: f64,
) -> Option<f64> {
    let if_alive = expected_purchases_if_alive(p, variant, c.frequency, c.age, t);
    expected_purchases_from(if_alive, p_alive_for_expectations(p, variant, c))
}

/// `p` with `a` moved 1e-6 away from 1 when within 1e-6 of it (see [`expected_purchases`]).
fn away_from_one(p: &BgNbdParams) -> BgNbdParams {
    BgNbdParams {
        a: match p.a - 1.0 {
            gap if gap.abs() >= 1e-6 => p.a,
            gap if gap < 0.0 => 1.0 - 1e-6,
            _ => 1.0 + 1e-6,
        },
        ..*p
    }
}

/// The part of [`expected_purchases`] before its P(alive) factor: (a+b+x−1)/(a−1) · [1 −
/// ((α+T)/(α+T+t))^(r+x) · 2F1(…)] (BG/NBD; MBG/NBD as there). It depends on x and T but not on
/// t_x, so customers who share (x, T) share it: the hypergeometric series, most of the cost, is
/// summed once for all of them. `None` when the series does not converge or `t` is negative.
pub fn expected_purchases_if_alive(
    p: &BgNbdParams,
    variant: Variant,
    frequency: u32,
    age: f64,
    t: f64,
) -> Option<f64> {
    if t.is_nan() || t < 0.0 {
        return None;
    }
    let p = &away_from_one(p);
    let x = f64::from(frequency);
    let (lead, hb, hc) = match variant {
        Variant::Bg => (p.a + p.b + x - 1.0, p.b + x, p.a + p.b + x - 1.0),
        Variant::Modified => (p.a + p.b + x, p.b + x + 1.0, p.a + p.b + x),
    };
    let z = t / (p.alpha + age + t);
    let hyper = hyp2f1(p.r + x, hb, hc, z)?;
    let shrink = ((p.r + x) * ((p.alpha + age).ln() - (p.alpha + age + t).ln())).exp();
    Some(lead / (p.a - 1.0) * (1.0 - shrink * hyper))
}

/// P(alive) as [`expected_purchases`] multiplies it in: [`p_alive`] under
/// [`expectation_params`] (equal to [`p_alive`] unless a is within 1e-6 of 1).
pub fn p_alive_for_expectations(p: &BgNbdParams, variant: Variant, c: &RepeatSummary) -> f64 {
    p_alive(&expectation_params(p), variant, c)
}

/// The parameters [`expected_purchases`] works with: `p` with a := 1 ± 1e-6 when |a − 1| <
/// 1e-6 (its formula divides by a − 1), else `p` itself.
pub fn expectation_params(p: &BgNbdParams) -> BgNbdParams {
    away_from_one(p)
}

/// [`expected_purchases`] from its two factors: [`expected_purchases_if_alive`] ·
/// [`p_alive_for_expectations`], floored at 0; `None` when not finite.
pub fn expected_purchases_from(if_alive: Option<f64>, alive: f64) -> Option<f64> {
    let value = if_alive? * alive;
    value.is_finite().then_some(value.max(0.0))
}

/// Why a fit failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// Too few customers for four parameters.
    #[error("{found} customers are too few to fit the model (at least {needed} are needed)")]
    TooFewCustomers {
        /// Customers given.
        found: u64,
        /// The minimum.
        needed: u64,
    },
    /// Nobody bought twice: the purchase rate and the drop-out cannot be told apart.
    #[error("no customer bought more than once, so repeat buying cannot be modelled")]
    NoRepeatBuyers,
    /// The optimiser did not settle.
    #[error("the fit did not converge in {iterations} iterations (spread {spread:e})")]
    NotConverged {
        /// Iterations made.
        iterations: u32,
        /// The log-likelihood spread left in the simplex.
        spread: f64,
    },
}

/// A fitted model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    /// The model.
    pub variant: Variant,
    /// The maximum-likelihood parameters.
    pub params: BgNbdParams,
    /// The log-likelihood there.
    pub log_likelihood: f64,
    /// Optimiser iterations used.
    pub iterations: u32,
}

/// Fewest customers a fit accepts.
pub const MIN_CUSTOMERS: u64 = 10;

/// Fits the model by maximum likelihood: Nelder–Mead on (ln r, ln α, ln a, ln b) starting from
/// r = a = b = 1, α = mean age, stopping when the simplex's spread of log-likelihood per customer
/// falls under 1e-10 relative (1e-8 after 1,000 iterations: a flat ridge) or after 5,000
/// iterations (an error). `data` pairs each distinct
/// summary with how many customers share it (grouping makes large fits cheap).
pub fn fit(variant: Variant, data: &[(RepeatSummary, f64)]) -> Result<Fit, FitError> {
    fit_from(variant, data, None)
}

/// [`fit`], starting from `start` when given (a previous period's parameters: month to month
/// they move little, so the simplex starts small, 0.1 in log terms instead of 0.5, around them).
pub fn fit_from(
    variant: Variant,
    data: &[(RepeatSummary, f64)],
    start: Option<&BgNbdParams>,
) -> Result<Fit, FitError> {
    let customers: f64 = data.iter().map(|(_, w)| w).sum();
    if customers < MIN_CUSTOMERS as f64 {
        return Err(FitError::TooFewCustomers {
            found: customers as u64,
            needed: MIN_CUSTOMERS,
        });
    }
    if !data.iter().any(|(c, w)| c.frequency > 0 && *w > 0.0) {
        return Err(FitError::NoRepeatBuyers);
    }
    let mean_age = data.iter().map(|(c, w)| c.age * w).sum::<f64>() / customers;
    let table = Table::new(data);
    let params_of = |v: &[f64; 4]| BgNbdParams {
        r: v[0].exp(),
        alpha: v[1].exp(),
        a: v[2].exp(),
        b: v[3].exp(),
    };
    // Minimised: the negative log-likelihood per customer (keeps the tolerance scale-free).
    let cost = |v: &[f64; 4]| {
        if v.iter().any(|x| x.abs() > 30.0) {
            return f64::INFINITY;
        }
        let ll = table.log_likelihood(&params_of(v), variant) / customers;
        if ll.is_finite() { -ll } else { f64::INFINITY }
    };
    let usable = |p: &&BgNbdParams| {
        [p.r, p.alpha, p.a, p.b]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0 && v.ln().abs() < 30.0)
    };
    let (start, step) = match start.filter(usable) {
        Some(p) => ([p.r.ln(), p.alpha.ln(), p.a.ln(), p.b.ln()], 0.1),
        None => ([0.0, mean_age.max(1e-3).ln(), 0.0, 0.0], 0.5),
    };
    let (best, value, iterations) = nelder_mead(cost, start, step, 1e-10, 5_000)?;
    Ok(Fit {
        variant,
        params: params_of(&best),
        log_likelihood: -value * customers,
        iterations,
    })
}

/// Gamma-Gamma spend parameters (Fader, Hardie & Lee, 2005, "RFM and CLV: using iso-value
/// curves"): a customer's transaction values are Gamma(p, ν), and ν ~ Gamma(q, γ) across
/// customers, independent of how often they buy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GammaGammaParams {
    /// Shape of each transaction's value.
    pub p: f64,
    /// Shape of the customers' ν.
    pub q: f64,
    /// Rate of the customers' ν.
    pub gamma: f64,
}

/// A repeat customer's spend: x transactions (x ≥ 1) averaging `average` (> 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpendSummary {
    /// x: transactions averaged.
    pub transactions: u32,
    /// m_x: their average value.
    pub average: f64,
}

/// One customer's Gamma-Gamma log-likelihood:
/// ln L = ln Γ(px+q) − ln Γ(px) − ln Γ(q) + q ln γ + (px−1) ln m_x + px ln x − (px+q) ln(γ + x m_x).
pub fn spend_log_likelihood(g: &GammaGammaParams, s: &SpendSummary) -> f64 {
    let x = f64::from(s.transactions);
    let px = g.p * x;
    ln_gamma(px + g.q) - ln_gamma(px) - ln_gamma(g.q)
        + g.q * g.gamma.ln()
        + (px - 1.0) * s.average.ln()
        + px * x.ln()
        - (px + g.q) * (g.gamma + x * s.average).ln()
}

/// Fits the Gamma-Gamma model by maximum likelihood on repeat customers with a positive average
/// (others are skipped): Nelder–Mead on (ln p, ln q, ln γ), as [`fit`].
pub fn fit_spend(data: &[SpendSummary]) -> Result<(GammaGammaParams, f64), FitError> {
    fit_spend_from(data, None)
}

/// [`fit_spend`] starting from `start` (the previous period's parameters: month to month they
/// move little, and a start near the optimum with a small first step needs fewer evaluations);
/// from the sample mean without one, or when `start` is unusable.
pub fn fit_spend_from(
    data: &[SpendSummary],
    start: Option<&GammaGammaParams>,
) -> Result<(GammaGammaParams, f64), FitError> {
    let usable: Vec<SpendSummary> = data
        .iter()
        .copied()
        .filter(|s| s.transactions > 0 && s.average > 0.0 && s.average.is_finite())
        .collect();
    if usable.len() < MIN_CUSTOMERS as usize {
        return Err(FitError::TooFewCustomers {
            found: usable.len() as u64,
            needed: MIN_CUSTOMERS,
        });
    }
    let n = usable.len() as f64;
    let mean = usable.iter().map(|s| s.average).sum::<f64>() / n;
    let params_of = |v: &[f64; 3]| GammaGammaParams {
        p: v[0].exp(),
        q: v[1].exp(),
        gamma: v[2].exp(),
    };
    let table = SpendTable::new(&usable);
    let cost = |v: &[f64; 3]| {
        if v.iter().any(|x| x.abs() > 30.0) {
            return f64::INFINITY;
        }
        let ll = table.log_likelihood(&params_of(v)) / n;
        if ll.is_finite() { -ll } else { f64::INFINITY }
    };
    let usable_start = |g: &&GammaGammaParams| {
        [g.p, g.q, g.gamma]
            .iter()
            .all(|v| v.is_finite() && *v > 0.0 && v.ln().abs() < 30.0)
    };
    let (start, step) = match start.filter(usable_start) {
        Some(g) => ([g.p.ln(), g.q.ln(), g.gamma.ln()], 0.1),
        // Where the population mean p·γ/(q−1) equals the sample mean.
        None => ([0.0, 2.0_f64.ln(), mean.max(1e-9).ln()], 0.5),
    };
    let (best, value, _) = nelder_mead(cost, start, step, 1e-10, 5_000)?;
    Ok((params_of(&best), -value * n))
}

/// Expected average transaction value of a customer: (γ + x m_x) · p / (px + q − 1) for repeat
/// buyers, the population mean p γ / (q − 1) otherwise (`None` for both when q ≤ 1, where the
/// mean is infinite).
pub fn expected_average_value(g: &GammaGammaParams, s: Option<&SpendSummary>) -> Option<f64> {
    if g.q <= 1.0 {
        return None;
    }
    let value = match s.filter(|s| s.transactions > 0 && s.average > 0.0) {
        Some(s) => {
            let x = f64::from(s.transactions);
            (g.gamma + x * s.average) * g.p / (g.p * x + g.q - 1.0)
        }
        None => g.p * g.gamma / (g.q - 1.0),
    };
    value.is_finite().then_some(value)
}

/// How a customer's future value is discounted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClvHorizon {
    /// Months ahead.
    pub months: u32,
    /// Discount rate per month (0.01 = 1 %).
    pub monthly_discount: f64,
    /// Model time units in a month (30.4375 for days, 4.348 for weeks).
    pub units_per_month: f64,
}

/// Discounted CLV = Σ_{k=1..months} (E[Y(k·u)] − E[Y((k−1)·u)]) · value · margin / (1 + d)^k,
/// with u the units per month, E[Y] from [`expected_purchases`], `value` the expected average
/// transaction value and `margin` the share of it kept. `None` where E[Y] is undefined.
pub fn discounted_clv(
    p: &BgNbdParams,
    variant: Variant,
    c: &RepeatSummary,
    value: f64,
    margin: f64,
    horizon: &ClvHorizon,
) -> Option<f64> {
    let if_alive: Vec<Option<f64>> = (1..=horizon.months)
        .map(|k| {
            expected_purchases_if_alive(
                p,
                variant,
                c.frequency,
                c.age,
                f64::from(k) * horizon.units_per_month,
            )
        })
        .collect();
    let alive = p_alive_for_expectations(p, variant, c);
    discounted_clv_from(&if_alive, alive, value, margin, horizon)
}

/// [`discounted_clv`] from [`expected_purchases_if_alive`] at the end of each month of the
/// horizon (`if_alive[k − 1]` for month k; customers sharing x and T share them) and
/// [`p_alive_for_expectations`].
pub fn discounted_clv_from(
    if_alive: &[Option<f64>],
    alive: f64,
    value: f64,
    margin: f64,
    horizon: &ClvHorizon,
) -> Option<f64> {
    let mut total = 0.0;
    let mut before = 0.0;
    for k in 1..=horizon.months {
        let by_then = expected_purchases_from(*if_alive.get(usize::try_from(k - 1).ok()?)?, alive)?;
        total +=
            (by_then - before) * value * margin / (1.0 + horizon.monthly_discount).powi(k as i32);
        before = by_then;
    }
    total.is_finite().then_some(total)
}

/// The fit's data laid out for speed: the distinct values of x, t_x and T, and per summary
/// their indices and weight. One evaluation then computes each log-gamma term once per distinct
/// x and each ln(α + t) once per distinct time, leaving an exp and a log1p per summary (days or
/// weeks make the distinct times few even for millions of customers).
struct Table {
    frequencies: Vec<f64>,
    recencies: Vec<f64>,
    ages: Vec<f64>,
    /// (frequency index, recency index, age index, weight).
    rows: Vec<(u32, u32, u32, f64)>,
}

impl Table {
    fn new(data: &[(RepeatSummary, f64)]) -> Self {
        fn index_of(values: &mut Vec<f64>, at: &mut HashMap<u64, u32>, v: f64) -> u32 {
            *at.entry(v.to_bits()).or_insert_with(|| {
                values.push(v);
                (values.len() - 1) as u32
            })
        }
        let (mut frequencies, mut recencies, mut ages) = (Vec::new(), Vec::new(), Vec::new());
        let (mut fi, mut ri, mut ai) = (HashMap::new(), HashMap::new(), HashMap::new());
        let rows = data
            .iter()
            .map(|(c, w)| {
                (
                    index_of(&mut frequencies, &mut fi, f64::from(c.frequency)),
                    index_of(&mut recencies, &mut ri, c.recency),
                    index_of(&mut ages, &mut ai, c.age),
                    *w,
                )
            })
            .collect();
        Self {
            frequencies,
            recencies,
            ages,
            rows,
        }
    }

    /// Equals [`total_log_likelihood`] over the table's data.
    fn log_likelihood(&self, p: &BgNbdParams, variant: Variant) -> f64 {
        let shift = match variant {
            Variant::Bg => 0.0,
            Variant::Modified => 1.0,
        };
        let common = -ln_gamma(p.r) + p.r * p.alpha.ln() + ln_gamma(p.a + p.b) - ln_gamma(p.b);
        // Per distinct x: the log-gamma head, and the drop-out odds (None: BG with x = 0).
        let per_x: Vec<(f64, Option<f64>)> = self
            .frequencies
            .iter()
            .map(|&x| {
                let head = common + ln_gamma(p.r + x) + ln_gamma(p.b + x + shift)
                    - ln_gamma(p.a + p.b + x + shift);
                (head, ln_dropout_odds(p, variant, x))
            })
            .collect();
        let ln_recency: Vec<f64> = self.recencies.iter().map(|t| (p.alpha + t).ln()).collect();
        let ln_age: Vec<f64> = self.ages.iter().map(|t| (p.alpha + t).ln()).collect();
        sum_in_chunks(&self.rows, |rows| {
            rows.iter()
                .map(|&(xi, ri, ai, weight)| {
                    let x = self.frequencies[xi as usize];
                    let (head, odds) = per_x[xi as usize];
                    let still = -(p.r + x) * ln_age[ai as usize];
                    let tail = match odds {
                        None => still,
                        Some(odds) => {
                            log_sum_exp(still, odds - (p.r + x) * ln_recency[ri as usize])
                        }
                    };
                    weight * (head + tail)
                })
                .sum()
        })
    }
}

/// Fixed pieces a large sum is cut into, so that the result does not depend on the number of
/// threads that add them up.
const SUM_CHUNKS: usize = 8;
/// Below this many items one thread sums faster than several start.
const PARALLEL_FROM: usize = 50_000;

/// `Σ part(chunk)` over [`SUM_CHUNKS`] consecutive chunks of `items`, added in chunk order; the
/// chunks are spread over the machine's cores when `items` is large. Pure computation: threads
/// only share read-only data.
pub(crate) fn sum_in_chunks<T: Sync>(items: &[T], part: impl Fn(&[T]) -> f64 + Sync) -> f64 {
    map_in_chunks(items, |chunk| part(chunk)).into_iter().sum()
}

/// The cores this process may use, asked once: `available_parallelism` reads the cgroup files
/// on every call, and the fits sum in chunks thousands of times per run.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// `f` applied to [`SUM_CHUNKS`] consecutive chunks of `items`, results in chunk order, on
/// several cores when `items` is large.
pub(crate) fn map_in_chunks<T: Sync, R: Send>(items: &[T], f: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let chunk_len = items.len().div_ceil(SUM_CHUNKS).max(1);
    let chunks: Vec<&[T]> = items.chunks(chunk_len).collect();
    let threads = match items.len() < PARALLEL_FROM {
        true => 1,
        false => cores().min(chunks.len()),
    };
    if threads <= 1 {
        return chunks.into_iter().map(f).collect();
    }
    let f = &f;
    let chunks = &chunks;
    // Worker k takes chunks k, k + threads, …; the calling thread is worker 0.
    let work = move |k: usize| -> Vec<(usize, R)> {
        (k..chunks.len())
            .step_by(threads)
            .map(|i| (i, f(chunks[i])))
            .collect()
    };
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads).map(|k| scope.spawn(move || work(k))).collect();
        let mut done = work(0);
        for handle in others {
            done.extend(
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        done
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Spend data grouped by x for speed: the log-gamma and ln x terms once per distinct x, Σ ln m_x
/// once per group, leaving one ln(γ + x m_x) per customer per evaluation.
struct SpendTable {
    /// (x, customers with it, Σ ln m_x, their x·m_x values).
    groups: Vec<(f64, f64, f64, Vec<f64>)>,
}

impl SpendTable {
    fn new(data: &[SpendSummary]) -> Self {
        let mut by_x: HashMap<u32, (f64, Vec<f64>)> = HashMap::new();
        for s in data {
            let group = by_x.entry(s.transactions).or_default();
            group.0 += s.average.ln();
            group.1.push(f64::from(s.transactions) * s.average);
        }
        let mut groups: Vec<(f64, f64, f64, Vec<f64>)> = by_x
            .into_iter()
            .map(|(x, (sum_ln_m, totals))| (f64::from(x), totals.len() as f64, sum_ln_m, totals))
            .collect();
        // A fixed order keeps the floating-point sum, and so the fit, repeatable.
        groups.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self { groups }
    }

    /// Equals the sum of [`spend_log_likelihood`] over the table's data.
    fn log_likelihood(&self, g: &GammaGammaParams) -> f64 {
        let common = -ln_gamma(g.q) + g.q * g.gamma.ln();
        self.groups
            .iter()
            .map(|(x, count, sum_ln_m, totals)| {
                let px = g.p * x;
                let head = count * (ln_gamma(px + g.q) - ln_gamma(px) + common + px * x.ln())
                    + (px - 1.0) * sum_ln_m;
                let tail = sum_in_chunks(totals, |part| {
                    // One logarithm per four customers, ln a + ln b + ln c + ln d = ln(abcd)
                    // (the logarithm is most of an evaluation's time). Amounts in minor units
                    // keep each factor below 1e32 (γ < e³⁰, x·m_x < 1e19) and the product far
                    // inside f64's range; other inputs take the four logarithms.
                    let (quads, rest) = part.as_chunks::<4>();
                    quads
                        .iter()
                        .map(|[a, b, c, d]| {
                            let [a, b, c, d] = [a, b, c, d].map(|xm| g.gamma + xm);
                            let product = a * b * c * d;
                            if product.is_normal() {
                                product.ln()
                            } else {
                                a.ln() + b.ln() + c.ln() + d.ln()
                            }
                        })
                        .sum::<f64>()
                        + rest.iter().map(|xm| (g.gamma + xm).ln()).sum::<f64>()
                });
                head - (px + g.q) * tail
            })
            .sum()
    }
}

/// Minimises `f` from `start` (initial step `step` per coordinate) with the standard
/// Nelder–Mead moves (reflect 1, expand 2, contract ½, shrink ½). Converged when the spread of
/// the simplex's values is at most `tolerance` · (1 + |best|).
fn nelder_mead<const N: usize>(
    f: impl Fn(&[f64; N]) -> f64,
    start: [f64; N],
    step: f64,
    tolerance: f64,
    max_iterations: u32,
) -> Result<([f64; N], f64, u32), FitError> {
    let mut simplex: Vec<([f64; N], f64)> = (0..=N)
        .map(|i| {
            let mut v = start;
            if i > 0 {
                v[i - 1] += step;
            }
            (v, f(&v))
        })
        .collect();
    let mut spread = f64::INFINITY;
    for iteration in 0..max_iterations {
        simplex.sort_by(|x, y| x.1.total_cmp(&y.1));
        let (best, worst) = (simplex[0].1, simplex[N].1);
        spread = worst - best;
        // A likelihood flat along a ridge (a parameter drifting towards infinity without
        // changing the fit) never shrinks the simplex that far: after a fifth of the budget a
        // hundredfold tolerance is accepted (1e-8 per customer changes no prediction).
        let settled = if iteration >= max_iterations / 5 {
            100.0 * tolerance
        } else {
            tolerance
        };
        if best.is_finite() && spread <= settled * (1.0 + best.abs()) {
            return Ok((simplex[0].0, best, iteration));
        }
        let mut centroid = [0.0; N];
        for (v, _) in &simplex[..N] {
            for (c, x) in centroid.iter_mut().zip(v) {
                *c += x / N as f64;
            }
        }
        let toward = |coef: f64| {
            let mut p = centroid;
            for (k, x) in p.iter_mut().enumerate() {
                *x += coef * (simplex[N].0[k] - centroid[k]);
            }
            p
        };
        let reflected = toward(-1.0);
        let fr = f(&reflected);
        if fr < simplex[0].1 {
            let expanded = toward(-2.0);
            let fe = f(&expanded);
            simplex[N] = if fe < fr {
                (expanded, fe)
            } else {
                (reflected, fr)
            };
        } else if fr < simplex[N - 1].1 {
            simplex[N] = (reflected, fr);
        } else {
            let contracted = if fr < simplex[N].1 {
                toward(-0.5)
            } else {
                toward(0.5)
            };
            let fc = f(&contracted);
            if fc < simplex[N].1.min(fr) {
                simplex[N] = (contracted, fc);
            } else {
                let best = simplex[0].0;
                for entry in simplex.iter_mut().skip(1) {
                    for (coordinate, from_best) in entry.0.iter_mut().zip(best) {
                        *coordinate = from_best + 0.5 * (*coordinate - from_best);
                    }
                    entry.1 = f(&entry.0);
                }
            }
        }
    }
    Err(FitError::NotConverged {
        iterations: max_iterations,
        spread,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CDNOW: BgNbdParams = BgNbdParams {
        r: 0.243,
        alpha: 4.414,
        a: 0.793,
        b: 2.426,
    };
    const OTHER: BgNbdParams = BgNbdParams {
        r: 1.5,
        alpha: 10.0,
        a: 2.2,
        b: 6.0,
    };

    fn summary(x: u32, tx: f64, t: f64) -> RepeatSummary {
        RepeatSummary::new(x, tx, t).unwrap_or_else(|| panic!("valid summary {x} {tx} {t}"))
    }

    fn close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= 1e-6 * (1.0 + expected.abs()),
            "{what}: {actual} vs {expected}"
        );
    }

    /// params, x, t_x, T, BG and MBG log-likelihood, BG and MBG P(alive), BG and MBG E[Y(39)].
    type Case = (BgNbdParams, u32, f64, f64, f64, f64, f64, f64, (f64, f64));

    /// Values printed by `python3 bench/bgnbd_reference.py` (scipy's gammaln and hyp2f1).
    #[test]
    fn values_agree_with_an_independent_scipy_computation() {
        let cases: [Case; 10] = [
            (
                CDNOW,
                0,
                0.0,
                38.86,
                -0.554713276438,
                -0.386952220571,
                1.0,
                0.637253337965,
                (0.195098052011, 0.127461382546),
            ),
            (
                CDNOW,
                2,
                30.43,
                38.86,
                -9.458606307066,
                -9.687182636250,
                0.726578570081,
                0.774419242624,
                (1.226028174767, 1.340497428491),
            ),
            (
                CDNOW,
                7,
                35.0,
                38.86,
                -22.136944927508,
                -22.234435327052,
                0.843767821928,
                0.857988640307,
                (4.387487854488, 4.537921896259),
            ),
            (
                CDNOW,
                1,
                0.0,
                5.0,
                -3.515079175031,
                -3.866094428808,
                0.544062152505,
                0.627581794175,
                (1.724275101776, 2.128836728733),
            ),
            (
                CDNOW,
                30,
                20.0,
                21.0,
                -28.726273700546,
                -28.752853145389,
                0.921688209069,
                0.923919560314,
                (29.088848708985, 29.399394850592),
            ),
            (
                OTHER,
                0,
                0.0,
                38.86,
                -2.379560959253,
                -1.090518067354,
                1.0,
                0.201610516908,
                (0.953157565295, 0.196471274408),
            ),
            (
                OTHER,
                2,
                30.43,
                38.86,
                -8.945271514688,
                -9.236726829357,
                0.621189086496,
                0.652065266400,
                (1.258544871917, 1.354579045711),
            ),
            (
                OTHER,
                7,
                35.0,
                38.86,
                -21.214947357274,
                -21.392245690901,
                0.730454235584,
                0.745920364416,
                (3.200252564162, 3.342686460124),
            ),
            (
                OTHER,
                1,
                0.0,
                5.0,
                -2.524816511082,
                -2.872616381064,
                0.497409857818,
                0.535885696134,
                (1.602462719945, 1.817417962849),
            ),
            (
                OTHER,
                30,
                20.0,
                21.0,
                -31.838537734752,
                -31.902031781274,
                0.849924788396,
                0.853482749625,
                (15.294024226669, 15.581154413336),
            ),
        ];
        for (p, x, tx, t, bg_ll, mbg_ll, bg_alive, mbg_alive, expected) in cases {
            let c = summary(x, tx, t);
            close(
                log_likelihood(&p, Variant::Bg, &c),
                bg_ll,
                "BG log-likelihood",
            );
            close(
                log_likelihood(&p, Variant::Modified, &c),
                mbg_ll,
                "MBG log-likelihood",
            );
            close(p_alive(&p, Variant::Bg, &c), bg_alive, "BG P(alive)");
            close(
                p_alive(&p, Variant::Modified, &c),
                mbg_alive,
                "MBG P(alive)",
            );
            let (bg, mbg) = expected;
            close(
                expected_purchases(&p, Variant::Bg, &c, 39.0).unwrap_or(f64::NAN),
                bg,
                "BG E[Y(39)]",
            );
            close(
                expected_purchases(&p, Variant::Modified, &c, 39.0).unwrap_or(f64::NAN),
                mbg,
                "MBG E[Y(39)]",
            );
        }
    }

    #[test]
    fn the_fit_table_computes_the_same_likelihood() {
        let data: Vec<(RepeatSummary, f64)> = [
            (0, 0.0, 38.86),
            (2, 30.43, 38.86),
            (7, 35.0, 38.86),
            (2, 10.0, 20.0),
            (30, 20.0, 21.0),
        ]
        .iter()
        .enumerate()
        .map(|(i, &(x, tx, t))| (summary(x, tx, t), 1.0 + i as f64))
        .collect();
        let table = Table::new(&data);
        for variant in [Variant::Bg, Variant::Modified] {
            for p in [CDNOW, OTHER] {
                close(
                    table.log_likelihood(&p, variant),
                    total_log_likelihood(&p, variant, &data),
                    "table",
                );
            }
        }
    }

    #[test]
    fn spend_values_agree_with_an_independent_scipy_computation() {
        let cdnow = GammaGammaParams {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        };
        let other = GammaGammaParams {
            p: 2.0,
            q: 5.0,
            gamma: 40.0,
        };
        // (params, x, m_x, log-likelihood, expected average value)
        let cases = [
            (cdnow, 1, 35.5, -4.206189637287, 35.414349276974),
            (cdnow, 4, 120.0, -7.790919064164, 111.625811103100),
            (cdnow, 12, 8.25, -5.731824017734, 9.200540262413),
            (other, 1, 35.5, -4.853801245072, 25.166666666667),
            (other, 4, 120.0, -9.968580887229, 86.666666666667),
            (other, 12, 8.25, -3.377669848268, 9.928571428571),
        ];
        for (g, x, m, ll, value) in cases {
            let s = SpendSummary {
                transactions: x,
                average: m,
            };
            close(
                spend_log_likelihood(&g, &s),
                ll,
                "Gamma-Gamma log-likelihood",
            );
            close(
                expected_average_value(&g, Some(&s)).unwrap_or(f64::NAN),
                value,
                "expected value",
            );
        }
        close(
            expected_average_value(&cdnow, None).unwrap_or(f64::NAN),
            35.218978102190,
            "population mean",
        );
        let heavy_tail = GammaGammaParams {
            p: 1.0,
            q: 0.9,
            gamma: 1.0,
        };
        assert_eq!(
            expected_average_value(&heavy_tail, None),
            None,
            "q ≤ 1: no finite mean"
        );
    }

    #[test]
    fn the_spend_table_sums_the_same_likelihood_as_customer_by_customer() {
        let data: Vec<SpendSummary> = (1..200u32)
            .map(|i| SpendSummary {
                transactions: 1 + i % 7,
                average: 5.0 + f64::from(i * 37 % 101),
            })
            .collect();
        let table = SpendTable::new(&data);
        for g in [
            GammaGammaParams {
                p: 6.25,
                q: 3.74,
                gamma: 15.44,
            },
            GammaGammaParams {
                p: 0.7,
                q: 1.5,
                gamma: 300.0,
            },
        ] {
            let direct: f64 = data.iter().map(|s| spend_log_likelihood(&g, s)).sum();
            close(table.log_likelihood(&g), direct, "spend table");
        }
        // Values whose product of four overflows take four logarithms.
        let huge: Vec<SpendSummary> = (1..10u32)
            .map(|i| SpendSummary {
                transactions: 2,
                average: 1e90 * f64::from(i),
            })
            .collect();
        let g = GammaGammaParams {
            p: 2.0,
            q: 3.0,
            gamma: 10.0,
        };
        let direct: f64 = huge.iter().map(|s| spend_log_likelihood(&g, s)).sum();
        let tabled = SpendTable::new(&huge).log_likelihood(&g);
        assert!(tabled.is_finite(), "{tabled}");
        close(tabled, direct, "spend table, huge values");
    }

    #[test]
    fn discounted_clv_adds_up_the_discounted_monthly_purchases() {
        let c = summary(2, 30.43, 38.86);
        let horizon = ClvHorizon {
            months: 12,
            monthly_discount: 0.0,
            units_per_month: 4.348,
        };
        // Without discounting, CLV is the year's expected purchases × value × margin.
        let year = expected_purchases(&OTHER, Variant::Bg, &c, 12.0 * 4.348).unwrap_or(f64::NAN);
        let clv = discounted_clv(&OTHER, Variant::Bg, &c, 50.0, 0.3, &horizon).unwrap_or(f64::NAN);
        close(clv, year * 50.0 * 0.3, "undiscounted CLV");
        let discounted = ClvHorizon {
            monthly_discount: 0.01,
            ..horizon
        };
        let lower =
            discounted_clv(&OTHER, Variant::Bg, &c, 50.0, 0.3, &discounted).unwrap_or(f64::NAN);
        assert!(
            lower < clv && lower > clv / 1.01_f64.powi(12),
            "{lower} vs {clv}"
        );
        // E[Y] is continuous through a = 1, where the closed form is 0/0.
        let at = |a: f64| {
            expected_purchases(&BgNbdParams { a, ..OTHER }, Variant::Bg, &c, 39.0)
                .unwrap_or(f64::NAN)
        };
        let (below, exact, above) = (at(1.0 - 1e-3), at(1.0), at(1.0 + 1e-3));
        assert!(exact.is_finite(), "{exact}");
        assert!(below > exact && exact > above, "{below} {exact} {above}");
        assert!(
            (below - above).abs() < 1e-2 * exact,
            "{below} {exact} {above}"
        );
    }

    #[test]
    fn no_purchase_probabilities_agree_with_the_reference_and_behave() {
        // bench/bgnbd_reference.py, OTHER parameters, t = 13.
        let cases = [
            ((0, 0.0, 38.86), 0.701964776500, 0.939912964533),
            ((2, 30.43, 38.86), 0.650846820256, 0.633492174745),
            ((7, 35.0, 38.86), 0.367881905339, 0.354497877411),
            ((1, 0.0, 5.0), 0.607073580848, 0.576679785599),
            ((30, 20.0, 21.0), 0.150088968313, 0.146531064672),
        ];
        for ((x, tx, t), bg, mbg) in cases {
            let c = summary(x, tx, t);
            close(
                p_no_purchase(&OTHER, Variant::Bg, &c, 13.0),
                bg,
                "BG P(no purchase)",
            );
            close(
                p_no_purchase(&OTHER, Variant::Modified, &c, 13.0),
                mbg,
                "MBG P(no purchase)",
            );
            // Certain over no time; falls with the horizon towards P(dropped out).
            close(p_no_purchase(&OTHER, Variant::Bg, &c, 0.0), 1.0, "t = 0");
            let (near, far) = (
                p_no_purchase(&OTHER, Variant::Bg, &c, 5.0),
                p_no_purchase(&OTHER, Variant::Bg, &c, 50.0),
            );
            assert!(near > far, "{near} > {far}");
            let gone = 1.0 - p_alive(&OTHER, Variant::Bg, &c);
            assert!((p_no_purchase(&OTHER, Variant::Bg, &c, 1e9) - gone).abs() < 1e-6);
        }
    }

    #[test]
    fn fits_refuse_data_that_cannot_support_them() {
        let few = vec![(summary(1, 2.0, 5.0), 3.0)];
        assert!(matches!(
            fit(Variant::Bg, &few),
            Err(FitError::TooFewCustomers { found: 3, .. })
        ));
        let no_repeats = vec![(summary(0, 0.0, 5.0), 100.0)];
        assert_eq!(
            fit(Variant::Modified, &no_repeats),
            Err(FitError::NoRepeatBuyers)
        );
    }

    #[test]
    fn edge_cases_stay_finite() {
        for variant in [Variant::Bg, Variant::Modified] {
            for c in [
                summary(0, 0.0, 0.0),
                summary(5, 0.0, 0.0),
                summary(100_000, 10.0, 10.0),
            ] {
                assert!(log_likelihood(&OTHER, variant, &c).is_finite(), "{c:?}");
                let alive = p_alive(&OTHER, variant, &c);
                assert!((0.0..=1.0).contains(&alive), "{c:?}: {alive}");
            }
        }
        assert!(
            RepeatSummary::new(0, 1.0, 5.0).is_none(),
            "no repeats but a recency"
        );
        assert!(
            RepeatSummary::new(2, 6.0, 5.0).is_none(),
            "recency after the as-of date"
        );
        assert!(RepeatSummary::new(2, f64::NAN, 5.0).is_none());
    }
}
