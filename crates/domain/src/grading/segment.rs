//! RFM segments: a rule table over the R, F and M scores. Two presets ship (`rfm8`, `rf_grid`);
//! configuration may define its own.

use super::policy::{SegmentPolicy, SegmentPreset, SegmentRule};

/// A condition on one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreCondition {
    /// Always true.
    Any,
    /// `score ≥ mean` over the population, evaluated exactly as `score · N ≥ Σ score`.
    High,
    /// `score < mean`.
    Low,
    /// `lo ≤ score ≤ hi`.
    Range(u8, u8),
}

impl ScoreCondition {
    /// Parses `any`, `high`, `low`, `3` or `3-4` (scores 1..=k).
    pub fn parse(raw: &str, k: u8) -> Result<Self, String> {
        let raw = raw.trim();
        let score = |s: &str| -> Result<u8, String> {
            let v: u8 = s.trim().parse().map_err(|_| {
                format!("'{raw}' is not any, high, low, a score or a range like 3-4")
            })?;
            if (1..=k).contains(&v) {
                Ok(v)
            } else {
                Err(format!("score {v} in '{raw}' is outside 1..={k}"))
            }
        };
        match raw {
            "any" => Ok(Self::Any),
            "high" => Ok(Self::High),
            "low" => Ok(Self::Low),
            _ => match raw.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (score(lo)?, score(hi)?);
                    if lo > hi {
                        return Err(format!("range '{raw}' runs backwards"));
                    }
                    Ok(Self::Range(lo, hi))
                }
                None => score(raw).map(|v| Self::Range(v, v)),
            },
        }
    }

    fn matches(self, score: u8, score_sum: u64, population: u64) -> bool {
        match self {
            Self::Any => true,
            Self::High => u64::from(score) * population >= score_sum,
            Self::Low => u64::from(score) * population < score_sum,
            Self::Range(lo, hi) => (lo..=hi).contains(&score),
        }
    }
}

/// A compiled segment table.
#[derive(Debug, Clone)]
pub struct SegmentTable {
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    key: String,
    label: String,
    conditions: [ScoreCondition; 3],
}

/// The key given to a customer no rule matches.
pub const UNCLASSIFIED: &str = "unclassified";

impl SegmentTable {
    /// Builds the table of `policy` for scores 1..=k.
    pub fn new(policy: &SegmentPolicy, k: u8) -> Result<Self, String> {
        let rules = match policy.preset {
            SegmentPreset::Rfm8 => rfm8_rules(),
            SegmentPreset::RfGrid => rf_grid_rules(),
            SegmentPreset::Custom => policy.rules.clone(),
        };
        let rules = rules
            .into_iter()
            .map(|rule| {
                Ok(CompiledRule {
                    conditions: [
                        ScoreCondition::parse(&rule.r, k)?,
                        ScoreCondition::parse(&rule.f, k)?,
                        ScoreCondition::parse(&rule.m, k)?,
                    ],
                    label: rule.label.unwrap_or_else(|| rule.key.clone()),
                    key: rule.key,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut rules = rules;
        // A catch-all last row, so a custom table that leaves a cell uncovered still gives
        // every customer a segment (and with it a churn rate for CLV). The presets cover every
        // cell, so it never matches for them.
        rules.push(CompiledRule {
            key: UNCLASSIFIED.to_owned(),
            label: UNCLASSIFIED.to_owned(),
            conditions: [ScoreCondition::Any; 3],
        });
        Ok(Self { rules })
    }

    /// The key of the first rule matching `scores` = (R, F, M), given the score sums over the
    /// population of size N (for `high`/`low`); [`UNCLASSIFIED`] when none matches.
    pub fn classify(&self, scores: [u8; 3], sums: [u64; 3], population: u64) -> &str {
        &self.rules[self.classify_index(scores, sums, population)].key
    }

    /// The position in [`Self::keys`] of the segment [`Self::classify`] names. Every table ends
    /// with the catch-all row, so some rule always matches.
    pub fn classify_index(&self, scores: [u8; 3], sums: [u64; 3], population: u64) -> usize {
        self.rules
            .iter()
            .position(|rule| {
                (0..3)
                    .all(|axis| rule.conditions[axis].matches(scores[axis], sums[axis], population))
            })
            .unwrap_or(self.rules.len() - 1)
    }

    /// Display label of a segment key.
    pub fn label<'a>(&'a self, key: &'a str) -> &'a str {
        self.rules
            .iter()
            .find(|r| r.key == key)
            .map_or(key, |r| r.label.as_str())
    }

    /// Every key, in table order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.key.as_str())
    }
}

fn rule(key: &str, label: &str, r: &str, f: &str, m: &str) -> SegmentRule {
    SegmentRule {
        key: key.to_owned(),
        label: Some(label.to_owned()),
        r: r.to_owned(),
        f: f.to_owned(),
        m: m.to_owned(),
    }
}

/// The `rfm8` preset: R, F, M each high or low against the population mean.
pub fn rfm8_rules() -> Vec<SegmentRule> {
    vec![
        rule("important_value", "重要价值客户", "high", "high", "high"),
        rule("important_develop", "重要发展客户", "high", "low", "high"),
        rule("important_retain", "重要保持客户", "low", "high", "high"),
        rule("important_winback", "重要挽留客户", "low", "low", "high"),
        rule("general_value", "一般价值客户", "high", "high", "low"),
        rule("general_develop", "一般发展客户", "high", "low", "low"),
        rule("general_retain", "一般保持客户", "low", "high", "low"),
        rule("general_winback", "一般挽留客户", "low", "low", "low"),
    ]
}

/// The `rf_grid` preset (k = 5): cells of the R × F grid.
pub fn rf_grid_rules() -> Vec<SegmentRule> {
    vec![
        rule("champions", "Champions", "5", "4-5", "any"),
        rule("loyal", "Loyal", "3-4", "4-5", "any"),
        rule(
            "potential_loyalist",
            "Potential loyalist",
            "4-5",
            "2-3",
            "any",
        ),
        rule("new", "New", "5", "1", "any"),
        rule("promising", "Promising", "4", "1", "any"),
        rule("need_attention", "Need attention", "3", "3", "any"),
        rule("about_to_sleep", "About to sleep", "3", "1-2", "any"),
        rule("at_risk", "At risk", "1-2", "3-4", "any"),
        rule("cant_lose", "Can't lose them", "1-2", "5", "any"),
        rule("hibernating", "Hibernating", "1-2", "1-2", "any"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(preset: SegmentPreset) -> SegmentTable {
        let policy = SegmentPolicy {
            preset,
            rules: Vec::new(),
        };
        SegmentTable::new(&policy, 5).unwrap()
    }

    #[test]
    fn rfm8_compares_each_score_with_the_mean_exactly() {
        let t = table(SegmentPreset::Rfm8);
        // N = 3, sums 9 → mean 3: a score of exactly 3 is high (3·3 ≥ 9).
        assert_eq!(t.classify([3, 3, 3], [9, 9, 9], 3), "important_value");
        assert_eq!(t.classify([2, 3, 3], [9, 9, 9], 3), "important_retain");
        assert_eq!(t.classify([3, 2, 3], [9, 9, 9], 3), "important_develop");
        assert_eq!(t.classify([2, 2, 3], [9, 9, 9], 3), "important_winback");
        assert_eq!(t.classify([3, 3, 2], [9, 9, 9], 3), "general_value");
        assert_eq!(t.classify([3, 2, 2], [9, 9, 9], 3), "general_develop");
        assert_eq!(t.classify([2, 3, 2], [9, 9, 9], 3), "general_retain");
        assert_eq!(t.classify([2, 2, 2], [9, 9, 9], 3), "general_winback");
        // Mean 10/3 = 3.33…: 3 is low (9 < 10), 4 is high.
        assert_eq!(t.classify([3, 4, 4], [10, 10, 10], 3), "important_retain");
        assert_eq!(t.label("important_value"), "重要价值客户");
    }

    #[test]
    fn rf_grid_covers_every_cell_of_the_grid() {
        let t = table(SegmentPreset::RfGrid);
        for r in 1..=5 {
            for f in 1..=5 {
                assert_ne!(
                    t.classify([r, f, 1], [0, 0, 0], 1),
                    UNCLASSIFIED,
                    "R{r} F{f}"
                );
            }
        }
        assert_eq!(t.classify([5, 5, 1], [0; 3], 1), "champions");
        assert_eq!(t.classify([5, 1, 1], [0; 3], 1), "new");
        assert_eq!(t.classify([4, 1, 1], [0; 3], 1), "promising");
        assert_eq!(t.classify([3, 3, 1], [0; 3], 1), "need_attention");
        assert_eq!(t.classify([3, 2, 1], [0; 3], 1), "about_to_sleep");
        assert_eq!(t.classify([2, 4, 1], [0; 3], 1), "at_risk");
        assert_eq!(t.classify([1, 5, 1], [0; 3], 1), "cant_lose");
        assert_eq!(t.classify([2, 2, 1], [0; 3], 1), "hibernating");
        assert_eq!(t.classify([4, 4, 1], [0; 3], 1), "loyal");
        assert_eq!(t.classify([5, 3, 1], [0; 3], 1), "potential_loyalist");
    }

    #[test]
    fn custom_rules_parse_and_report_mistakes() {
        assert_eq!(
            ScoreCondition::parse("2-4", 5),
            Ok(ScoreCondition::Range(2, 4))
        );
        assert!(
            ScoreCondition::parse("6", 5)
                .unwrap_err()
                .contains("outside 1..=5")
        );
        assert!(
            ScoreCondition::parse("4-2", 5)
                .unwrap_err()
                .contains("backwards")
        );
        assert!(
            ScoreCondition::parse("hi", 5)
                .unwrap_err()
                .contains("not any, high")
        );
        let policy = SegmentPolicy {
            preset: SegmentPreset::Custom,
            rules: vec![rule("big", "Big", "any", "any", "4-5")],
        };
        let t = SegmentTable::new(&policy, 5).unwrap();
        assert_eq!(t.classify([1, 1, 5], [0; 3], 1), "big");
        assert_eq!(t.classify([1, 1, 3], [0; 3], 1), UNCLASSIFIED);
    }
}
