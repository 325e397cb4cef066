//! Policy adjustments: the knobs an admin turns in the dashboard's what-if form (component
//! weights, tier shares or score floors, ABC cuts), kept apart from the configured policy and
//! applied over it. Names, colours and cadences stay in configuration; an adjustment only moves
//! numbers, so it survives a configuration change that keeps the names it refers to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::engine::BUILTIN_COMPONENTS;
use super::policy::{Policy, TierMode};
use crate::FieldError;

/// New cut-offs for one tier; absent fields keep the configured value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierCut {
    /// Share of the graded population (`proportions` mode), 0..=1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// Minimum composite score (`thresholds` mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
}

/// A set of changes to the numeric knobs of a policy. Empty means "the configured policy".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyAdjustment {
    /// Component weights by name: a built-in one ([`BUILTIN_COMPONENTS`]) or a custom one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, f64>,
    /// Tier cut-offs by tier name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, TierCut>,
    /// ABC cumulative-share cuts `[A, B]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abc_cuts: Option<[f64; 2]>,
}

impl PolicyAdjustment {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty() && self.tiers.is_empty() && self.abc_cuts.is_none()
    }

    /// `base` with every knob of the adjustment set, validated as a whole (shares must still add
    /// up to 1, floors descend, …). An unknown component or tier name is an error that lists the
    /// known ones.
    pub fn apply(&self, base: &Policy) -> Result<Policy, FieldError> {
        let mut policy = base.clone();
        let components = &mut policy.components;
        for (name, &weight) in &self.weights {
            let slot = match name.as_str() {
                "value" => &mut components.value,
                "credit" => &mut components.credit,
                "frequency" => &mut components.frequency,
                "recency" => &mut components.recency,
                "profit" => &mut components.profit,
                "prospect" => &mut components.prospect,
                custom => match components.custom.get_mut(custom) {
                    Some(c) => &mut c.weight,
                    None => {
                        let known: Vec<&str> = BUILTIN_COMPONENTS
                            .into_iter()
                            .chain(base.components.custom.keys().map(String::as_str))
                            .collect();
                        return Err(FieldError::new(
                            "components",
                            format!("unknown component '{custom}'; known: {}", known.join(", ")),
                        ));
                    }
                },
            };
            *slot = weight;
        }
        for (name, cut) in &self.tiers {
            let Some(level) = policy.tiers.levels.iter_mut().find(|l| &l.name == name) else {
                let known: Vec<&str> = base.tiers.levels.iter().map(|l| l.name.as_str()).collect();
                return Err(FieldError::new(
                    "tiers.levels",
                    format!("unknown tier '{name}'; tiers are {}", known.join(", ")),
                ));
            };
            if let Some(share) = cut.share {
                level.share = share;
            }
            if let Some(min_score) = cut.min_score {
                level.min_score = min_score;
            }
        }
        if let Some(cuts) = self.abc_cuts {
            policy.abc.cuts = cuts;
        }
        policy.validate()?;
        Ok(policy)
    }

    /// The adjustment that turns `base` into `target`, naming only the knobs that differ
    /// (shares in `proportions` mode, floors in `thresholds` mode). `target` must have `base`'s
    /// components and tiers; knobs outside the adjustment's reach are not compared.
    pub fn between(base: &Policy, target: &Policy) -> Self {
        let mut adjustment = Self::default();
        let (b, t) = (&base.components, &target.components);
        let builtin = b.builtin_weights().into_iter().zip(t.builtin_weights());
        for (name, (before, after)) in BUILTIN_COMPONENTS.iter().zip(builtin) {
            if before != after {
                adjustment.weights.insert((*name).to_owned(), after);
            }
        }
        for (name, c) in &t.custom {
            if b.custom.get(name).map(|x| x.weight) != Some(c.weight) {
                adjustment.weights.insert(name.clone(), c.weight);
            }
        }
        for level in &target.tiers.levels {
            let Some(before) = base.tiers.levels.iter().find(|l| l.name == level.name) else {
                continue;
            };
            let cut = match target.tiers.mode {
                TierMode::Proportions if before.share != level.share => TierCut {
                    share: Some(level.share),
                    min_score: None,
                },
                TierMode::Thresholds if before.min_score != level.min_score => TierCut {
                    share: None,
                    min_score: Some(level.min_score),
                },
                _ => continue,
            };
            adjustment.tiers.insert(level.name.clone(), cut);
        }
        if base.abc.cuts != target.abc.cuts {
            adjustment.abc_cuts = Some(target.abc.cuts);
        }
        adjustment
    }
}

/// One line: `value=0.5 A.share=0.05 abc=[0.7, 0.9]`, or `(configuration)` when empty.
impl std::fmt::Display for PolicyAdjustment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = self
            .weights
            .iter()
            .map(|(k, w)| format!("{k}={w}"))
            .collect();
        for (tier, cut) in &self.tiers {
            if let Some(share) = cut.share {
                parts.push(format!("{tier}.share={share}"));
            }
            if let Some(min) = cut.min_score {
                parts.push(format!("{tier}.min_score={min}"));
            }
        }
        if let Some([a, b]) = self.abc_cuts {
            parts.push(format!("abc=[{a}, {b}]"));
        }
        match parts.is_empty() {
            true => f.write_str("(configuration)"),
            false => f.write_str(&parts.join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_adjustment_is_the_base() {
        let base = Policy::default();
        let out = PolicyAdjustment::default().apply(&base).expect("valid");
        assert_eq!(out, base);
        assert_eq!(out.hash(), base.hash());
    }

    #[test]
    fn sets_weights_shares_and_cuts_and_round_trips() {
        let base = Policy::default();
        let mut adj = PolicyAdjustment::default();
        adj.weights.insert("value".into(), 0.5);
        adj.tiers.insert(
            "A".into(),
            TierCut {
                share: Some(0.05),
                min_score: None,
            },
        );
        adj.tiers.insert(
            "D".into(),
            TierCut {
                share: Some(0.45),
                min_score: None,
            },
        );
        adj.abc_cuts = Some([0.7, 0.9]);
        let out = adj.apply(&base).expect("valid");
        assert_eq!(out.components.value, 0.5);
        assert_eq!(out.tiers.levels[0].share, 0.05);
        assert_eq!(out.tiers.levels[3].share, 0.45);
        assert_eq!(out.abc.cuts, [0.7, 0.9]);
        assert_ne!(out.hash(), base.hash());
        assert_eq!(PolicyAdjustment::between(&base, &out), adj);
        assert_eq!(
            adj.to_string(),
            "value=0.5 A.share=0.05 D.share=0.45 abc=[0.7, 0.9]"
        );
        assert_eq!(PolicyAdjustment::default().to_string(), "(configuration)");
    }

    #[test]
    fn refuses_unknown_names_and_invalid_results() {
        let base = Policy::default();
        let mut adj = PolicyAdjustment::default();
        adj.weights.insert("nps".into(), 0.1);
        let e = adj.apply(&base).expect_err("unknown component");
        assert!(e.reason.contains("unknown component 'nps'"), "{e}");
        assert!(e.reason.contains("prospect"), "lists the known ones: {e}");

        let mut adj = PolicyAdjustment::default();
        adj.tiers.insert("Z".into(), TierCut::default());
        let e = adj.apply(&base).expect_err("unknown tier");
        assert!(e.reason.contains("tiers are A, B, C, D"), "{e}");

        // Shares that no longer add up to 1 are refused by the policy's own validation.
        let mut adj = PolicyAdjustment::default();
        adj.tiers.insert(
            "A".into(),
            TierCut {
                share: Some(0.2),
                min_score: None,
            },
        );
        let e = adj.apply(&base).expect_err("shares add up to 1.1");
        assert_eq!(e.field, "tiers.levels");
    }
}
