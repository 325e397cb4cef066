//! The per-customer inputs of a grading run: aggregates of its orders and invoices as of the
//! period's last day, its manual ratings and attributes, its previous grade and any override.
//! The store computes them in one pass over the data; the engine never sees raw records.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::CustomerId;

/// Profit parts of a set of orders: what costed orders earned and what uncosted orders sold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfitFacts {
    /// Σ(amount − cost) over orders that carry a cost.
    pub costed_profit: i64,
    /// Σ amount over orders without a cost.
    pub uncosted_amount: i64,
    /// How many orders lack a cost.
    pub uncosted_orders: u32,
}

impl ProfitFacts {
    /// Profit under `default_margin_rate`: `costed_profit + round(uncosted_amount · rate)` when
    /// some orders lack a cost and a rate is set; unknown (None) when they lack it and no rate is set.
    pub fn resolve(&self, default_margin_rate: Option<f64>) -> Option<i64> {
        if self.uncosted_orders == 0 {
            return Some(self.costed_profit);
        }
        let rate = default_margin_rate?;
        Some(self.costed_profit + (self.uncosted_amount as f64 * rate).round() as i64)
    }
}

/// Payment figures over invoices issued in the window and due on or before the as-of date D.
/// Amounts are minor units of the invoice; only positive amounts count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InvoiceFacts {
    /// Σ amount of due invoices.
    pub due_amount: i64,
    /// Σ amount paid on or before `due_date + grace_days`.
    pub on_time_amount: i64,
    /// Σ amount still unpaid at D.
    pub unpaid_amount: i64,
    /// Σ amount · max(0, (paid_date or D) − due_date), for the amount-weighted mean days late
    /// (saturating; i64 holds 10¹⁵ minor units a thousand days late many times over).
    pub late_amount_days: i64,
}

/// The customer's grade in the previous period, as hysteresis needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreviousGrade {
    /// The tier it was assigned (index into the policy's tiers, best = 0), if any.
    pub assigned_tier: Option<u8>,
    /// Consecutive periods its computed tier has been below the assigned one.
    pub periods_below: u32,
    /// The day it entered that tier (the as-of day of the run that first assigned it).
    pub tier_since: Option<NaiveDate>,
}

/// The customer's grade twelve months before, as the churn rate of simple CLV needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct YearAgoGrade {
    /// Segment index (into the run's segment table) it had then, if graded.
    pub segment: Option<u16>,
    /// Whether its lifecycle was `churned` then.
    pub churned: bool,
}

/// A manual decision about one customer that survives re-grading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// Pin to a tier (red list) or block (black list).
    pub kind: OverrideKind,
    /// Why, in the author's words.
    pub reason: String,
    /// Who decided.
    pub author: String,
    /// Last day it applies (inclusive); none = until cleared.
    pub until: Option<NaiveDate>,
}

/// What an override does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OverrideKind {
    /// Red list: the customer is assigned this tier (by name) whatever its score.
    Pin {
        /// Tier name.
        tier: String,
    },
    /// Black list: the customer leaves the graded population (no tier, no reminders).
    Block,
}

impl Override {
    /// Whether it applies to a run as of `as_of`: no expiry, or `as_of ≤ until`.
    pub fn is_active(&self, as_of: NaiveDate) -> bool {
        self.until.is_none_or(|until| as_of <= until)
    }
}

/// Everything the engine knows about one customer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerFacts {
    /// The customer.
    pub customer: CustomerId,
    /// Orders in the window (D − lookback < date ≤ D).
    pub window_orders: u32,
    /// Σ amount of window orders.
    pub window_amount: i64,
    /// Latest window order date.
    pub window_latest: Option<NaiveDate>,
    /// Profit parts of window orders.
    pub window_profit: ProfitFacts,
    /// Orders up to D, ever.
    pub lifetime_orders: u32,
    /// First order date up to D.
    pub first_order: Option<NaiveDate>,
    /// Latest order date up to D.
    pub last_order: Option<NaiveDate>,
    /// Median gap in days between consecutive distinct order days up to D (needs ≥ 2 order days).
    pub median_gap_days: Option<f32>,
    /// Distinct order days up to D (several orders on one day are one transaction).
    pub order_days: u32,
    /// Σ amount of orders up to D dated after the first order day (the repeat transactions).
    pub repeat_amount: i64,
    /// Σ amount of orders in the 12 months up to D.
    pub last_year_revenue: i64,
    /// Profit parts of orders in the 12 months up to D.
    pub last_year_profit: ProfitFacts,
    /// Payment timeliness figures.
    pub invoices: InvoiceFacts,
    /// When the customer was created in its source, if known.
    pub created_on: Option<NaiveDate>,
    /// Manual 1–5 rating for new customers.
    pub prospect_rating: Option<u8>,
    /// Numeric attributes from imports (NPS, CSAT, …), sorted by name.
    pub attributes: Box<[(String, f64)]>,
    /// Its previous period's grade.
    pub previous: PreviousGrade,
    /// Its grade twelve months ago, if that period was graded.
    pub year_ago: Option<YearAgoGrade>,
    /// Its override, if any (active or not; the engine checks expiry).
    pub override_: Option<Box<Override>>,
}

impl CustomerFacts {
    /// The value of attribute `name`, if the customer has it.
    pub fn attribute(&self, name: &str) -> Option<f64> {
        self.attributes
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.attributes[i].1)
    }
}
