//! The re-grading job: reads every customer's facts as of a period's end from the store, grades
//! them with the domain model, and publishes the grades as that period's snapshot.
//!
//! One run at a time per database (a database-wide lock); a run writes its rows beside the
//! published ones and switches the period's pointer at the end, so readers never see a mix, and
//! a run that dies leaves the previous snapshot in place (it is marked failed by the next run).

mod explanation;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use tierwise_domain::Period;
use tierwise_domain::grading::{
    GradingOutcome, Policy, PolicyAdjustment, PredictionInputs, Predictions, PredictiveModel,
    Summary, TierReason, grade_population, summarise,
};
use tierwise_store::grading::{
    self as store, FactsRequest, GradingRunId, NewExplanation, NewGrade, RunCounts,
};
use tierwise_store::policy::{NewPolicyVersion, PolicyVersion};
use tierwise_store::{Database, DbConnection, StoreError};

pub use explanation::explanation_object;
use explanation::stored_explanation;

/// Name of the database-wide lock a grading run holds.
pub const GRADING_LOCK: &str = "grading";

/// Rows written per bulk statement batch (bounds the memory of rendered rows).
const WRITE_BATCH: usize = 20_000;

/// Why a grading run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum GradingError {
    /// The policy is not usable.
    #[error("grading policy setting grading.{field}: {reason}")]
    Policy {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The predictive settings are not usable.
    #[error("predictive setting predictive.{field}: {reason}")]
    Predictive {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The store failed (including: another run holds the lock).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The policy version in force no longer fits the configured policy (a tier or component it
    /// names was renamed or removed).
    #[error(
        "policy version {version} (applied by {author}) no longer fits the [grading] configuration: \
         {reason}; apply a new version on the dashboard's policy page or run `tierwise policy reset`"
    )]
    StaleVersion {
        /// Its id.
        version: i64,
        /// Who applied it.
        author: String,
        /// What does not fit.
        reason: String,
    },
    /// A what-if needs a published period to compare with.
    #[error("nothing has been graded yet; a what-if compares with the newest graded period")]
    NothingGraded,
    /// A range was given backwards.
    #[error("--from {from} is after --to {to}")]
    BackwardsRange {
        /// Start.
        from: Period,
        /// End.
        to: Period,
    },
}

impl From<tierwise_domain::FieldError> for GradingError {
    fn from(e: tierwise_domain::FieldError) -> Self {
        Self::Policy {
            field: e.field,
            reason: e.reason,
        }
    }
}

/// Whether to publish the result or only report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write the grades and publish them as the period's snapshot.
    Publish,
    /// Grade in memory and compare with the published snapshot; write nothing.
    DryRun,
}

/// How a dry run's tiers compare with the published snapshot of the same period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Movement {
    /// Whether the period had a published snapshot to compare with.
    pub compared: bool,
    /// Customers whose tier would change.
    pub moved: u64,
    /// … to a better tier (or from none to one).
    pub up: u64,
    /// … to a worse tier (or from one to none).
    pub down: u64,
    /// Customers by published tier, then by the dry run's tier (`summary::NO_TIER` for none),
    /// unchanged ones included: row sums are the published distribution, column sums the
    /// dry run's.
    pub matrix: BTreeMap<String, BTreeMap<String, u64>>,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct GradingReport {
    /// The graded period.
    pub period: Period,
    /// The stored run (none for a dry run).
    pub run: Option<GradingRunId>,
    /// Policy hash.
    pub policy_hash: String,
    /// Orders and invoices read.
    pub orders_read: u64,
    /// Invoices read.
    pub invoices_read: u64,
    /// The run's summary (distribution, migration matrix).
    pub summary: Summary,
    /// Phase timings in milliseconds, in order.
    pub timings: Vec<(String, u64)>,
    /// The run this one replaced as the period's snapshot.
    pub replaced: Option<GradingRunId>,
    /// Runs found abandoned (by a process that died) and marked failed before this one.
    pub abandoned: Vec<GradingRunId>,
    /// Dry runs: movement against the published snapshot.
    pub movement: Option<Movement>,
    /// Active pins naming a tier the policy does not have (ignored).
    pub unknown_pin_tiers: u32,
    /// The fitted predictive models (published runs with `[predictive] enabled`).
    pub predictive: Option<PredictiveModel>,
    /// Why the predictive models could not be fitted.
    pub predictive_error: Option<String>,
}

impl GradingReport {
    /// Total milliseconds over all phases.
    pub fn total_ms(&self) -> u64 {
        self.timings.iter().map(|(_, ms)| ms).sum()
    }
}

struct Stopwatch {
    clock: Instant,
    laps: Vec<(String, u64)>,
}

impl Stopwatch {
    fn new() -> Self {
        Self {
            clock: Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, name: &str) {
        self.laps
            .push((name.to_owned(), self.clock.elapsed().as_millis() as u64));
        self.clock = Instant::now();
    }
}

/// Grades `period` under `policy`.
pub fn grade_period(
    db: &Database,
    period: Period,
    policy: &Policy,
    mode: Mode,
) -> Result<GradingReport, GradingError> {
    policy.validate()?;
    policy
        .predictive
        .validate()
        .map_err(|e| GradingError::Predictive {
            field: e.field,
            reason: e.reason,
        })?;
    let mut watch = Stopwatch::new();
    let _lock = db.try_exclusive(GRADING_LOCK)?;
    let mut conn = db.conn()?;
    let conn: &mut DbConnection = &mut conn;
    // A dry run writes nothing, not even this clean-up; the next real run does it.
    let abandoned = match mode {
        Mode::Publish => store::fail_abandoned_runs(conn)?,
        Mode::DryRun => Vec::new(),
    };
    for run in &abandoned {
        tracing::warn!(run = run.0, "marked an abandoned grading run failed");
    }
    watch.lap("lock");

    let hash = policy.hash();
    let run = match mode {
        Mode::Publish => {
            let json = serde_json::to_string(policy).unwrap_or_default();
            Some(store::start_run(conn, period, &hash, &json)?)
        }
        Mode::DryRun => None,
    };
    let result = grade_and_store(db, conn, period, policy, &hash, run, &mut watch);
    match (result, run) {
        (Ok(mut report), _) => {
            report.abandoned = abandoned;
            Ok(report)
        }
        (Err(error), Some(run)) => {
            if let Err(mark) = store::fail_run(conn, run, &error.to_string()) {
                tracing::error!(%mark, run = run.0, "could not mark the grading run failed");
            }
            Err(error)
        }
        (Err(error), None) => Err(error),
    }
}

fn grade_and_store(
    db: &Database,
    conn: &mut DbConnection,
    period: Period,
    policy: &Policy,
    hash: &str,
    run: Option<GradingRunId>,
    watch: &mut Stopwatch,
) -> Result<GradingReport, GradingError> {
    let tiers = policy.tier_names();
    let segment_table =
        tierwise_domain::grading::SegmentTable::new(&policy.segments, policy.rfm.buckets).map_err(
            |reason| GradingError::Policy {
                field: "segments",
                reason,
            },
        )?;
    let segments: Vec<String> = segment_table.keys().map(str::to_owned).collect();
    let attributes: Vec<String> = policy
        .components
        .custom
        .values()
        .map(|c| c.attribute.clone())
        .collect();
    let facts = store::load_facts(
        db,
        conn,
        &FactsRequest {
            period,
            lookback_months: policy.lookback_months,
            grace_days: policy.credit.grace_days,
            attributes: &attributes,
            tiers: &tiers,
            segments: &segments,
        },
    )?;
    for (name, ms) in &facts.timings {
        watch.laps.push((format!("read {name}"), *ms));
    }
    watch.clock = Instant::now();

    let outcome = grade_population(&facts.customers, period.as_of(), policy)?;
    watch.lap("grade");
    if outcome.unknown_pin_tiers > 0 {
        tracing::warn!(
            pins = outcome.unknown_pin_tiers,
            "pins name tiers the policy does not have; those customers keep their computed tier \
             (see `tierwise override list`)"
        );
    }
    let summary = summarise(&facts.customers, &outcome, policy);
    watch.lap("summarise");
    let (orders_read, invoices_read) = (facts.orders_read, facts.invoices_read);

    // After grading, not beside it: grading's ranking buffers and the models' tables would
    // otherwise peak together, and the fit spreads over the cores itself. The facts go first:
    // the models need 24 bytes of each customer's 192, and facts, grades and the models'
    // tables together were the run's peak memory (610 → 548 MiB with a million customers).
    // Dry runs compare tiers only.
    let inputs = (run.is_some() && policy.predictive.enabled)
        .then(|| PredictionInputs::new(&facts.customers, period.as_of(), policy));
    drop(facts);
    let predictions = match inputs {
        Some(inputs) => {
            let previous = previous_model(conn, period)?;
            let predictions = inputs.predict(policy, previous.as_ref());
            watch.lap("predict");
            Some(predictions)
        }
        None => None,
    };
    let (predictive, predictive_error) = match predictions.as_ref().map(|p| &p.model) {
        Some(Ok(model)) => (Some(model.clone()), None),
        Some(Err(error)) => {
            tracing::warn!(%error, "the predictive models could not be fitted; grades carry no P(alive) or model CLV");
            (None, Some(error.to_string()))
        }
        None => (None, None),
    };

    let mut report = GradingReport {
        period,
        run,
        policy_hash: hash.to_owned(),
        orders_read,
        invoices_read,
        summary,
        timings: Vec::new(),
        replaced: None,
        abandoned: Vec::new(),
        movement: None,
        unknown_pin_tiers: outcome.unknown_pin_tiers,
        predictive,
        predictive_error,
    };
    match run {
        None => {
            report.movement = Some(movement(conn, period, &outcome, policy)?);
            watch.lap("compare");
        }
        Some(run) => {
            write_outcome(db, conn, run, &outcome, predictions.as_ref(), policy)?;
            let model_json = report
                .predictive
                .as_ref()
                .and_then(|m| serde_json::to_string(m).ok());
            store::set_run_predictive(
                conn,
                run,
                model_json.as_deref(),
                report.predictive_error.as_deref(),
            )?;
            watch.lap("write");
            let counts = RunCounts {
                customers: outcome.grades.len() as i64,
                graded: i64::from(outcome.population),
                tier_changes: report.summary.tier_changes as i64,
            };
            let summary_json = serde_json::to_string(&report.summary).unwrap_or_default();
            let timings = timings_json(&watch.laps);
            report.replaced =
                store::publish_run(conn, run, period, &counts, &timings, &summary_json)?;
            watch.lap("publish");
            if let Some(old) = report.replaced {
                store::delete_run_grades(conn, old)?;
                watch.lap("remove replaced");
            }
            store::set_run_timings(conn, run, &timings_json(&watch.laps))?;
        }
    }
    report.timings = watch.laps.clone();
    Ok(report)
}

/// The predictive models the previous period's published run fitted, if any (a start for this
/// period's fit; unreadable JSON is no start, not an error).
fn previous_model(
    conn: &mut DbConnection,
    period: Period,
) -> Result<Option<PredictiveModel>, GradingError> {
    Ok(store::published_run(conn, period.prev())?
        .and_then(|run| run.predictive)
        .and_then(|json| serde_json::from_str(&json).ok()))
}

fn timings_json(laps: &[(String, u64)]) -> String {
    let map: BTreeMap<&str, u64> = laps.iter().map(|(n, ms)| (n.as_str(), *ms)).collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
}

/// Compares in-memory grades with the published snapshot of the same period.
fn movement(
    conn: &mut DbConnection,
    period: Period,
    outcome: &GradingOutcome,
    policy: &Policy,
) -> Result<Movement, GradingError> {
    let Some(published) = store::published_tiers(conn, period)? else {
        return Ok(Movement::default());
    };
    let mut m = Movement {
        compared: true,
        ..Movement::default()
    };
    for grade in &outcome.grades {
        let before = published
            .get(&grade.customer.0)
            .cloned()
            .flatten()
            .and_then(|name| policy.tier_index(&name));
        let name = |t: Option<u8>| {
            t.map_or(tierwise_domain::grading::summary::NO_TIER, |t| {
                policy.tier_name(t)
            })
            .to_owned()
        };
        *m.matrix
            .entry(name(before))
            .or_default()
            .entry(name(grade.assigned_tier))
            .or_default() += 1;
        if before == grade.assigned_tier {
            continue;
        }
        m.moved += 1;
        // Lower index is better; having a tier beats having none.
        let rank = |t: Option<u8>| t.map_or(u16::MAX, u16::from);
        if rank(grade.assigned_tier) < rank(before) {
            m.up += 1;
        } else {
            m.down += 1;
        }
    }
    Ok(m)
}

fn tier_reason_key(reason: &TierReason) -> &'static str {
    match reason {
        TierReason::Computed => "computed",
        TierReason::Held { .. } => "held",
        TierReason::Pinned(_) => "pinned",
        TierReason::Blocked(_) => "blocked",
        TierReason::NotGraded => "not_graded",
    }
}

/// A `'static` copy of a policy name (tier, segment, loyalty step). Each distinct name is leaked
/// once per process and reused, so the memory is bounded by the names configured.
fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(&known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// Writes every grade of the run (see [`store::write_run_grades`]), in customer-id order.
/// Rendering the explanation JSON runs on a second thread, one batch ahead of the database
/// writes.
fn write_outcome(
    db: &Database,
    conn: &mut DbConnection,
    run: GradingRunId,
    outcome: &GradingOutcome,
    predictions: Option<&Predictions>,
    policy: &Policy,
) -> Result<(), GradingError> {
    let prediction = |i: usize| {
        predictions
            .and_then(|p| p.get(i))
            .map(|p| store::GradePrediction {
                p_alive: Some(p.p_alive),
                expected_purchases_90d: p.purchases_90d,
                expected_purchases_12m: p.purchases_12m,
                expected_order_value: p.order_value.map(|v| v.round() as i64),
                clv_model: p.clv.map(|v| v.round() as i64),
            })
            .unwrap_or_default()
    };
    let segment_keys: Vec<&'static str> = outcome.segments.keys().map(intern).collect();
    let tier_names: Vec<&'static str> = policy
        .tiers
        .levels
        .iter()
        .map(|l| intern(&l.name))
        .collect();
    let loyalty_steps: Vec<&'static str> = policy.loyalty.steps.iter().map(|s| intern(s)).collect();
    let custom_names: Vec<&str> = policy
        .components
        .custom
        .keys()
        .map(String::as_str)
        .collect();
    let tier = |t: Option<u8>| t.and_then(|t| tier_names.get(usize::from(t)).copied());
    let mut order: Vec<u32> = (0..outcome.grades.len() as u32).collect();
    order.sort_unstable_by_key(|&i| outcome.grades[i as usize].customer.0);

    std::thread::scope(|scope| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<(usize, Vec<Option<String>>)>(1);
        let order = &order;
        let custom_names = &custom_names;
        scope.spawn(move || {
            for (batch, indices) in order.chunks(WRITE_BATCH).enumerate() {
                let explanations = indices
                    .iter()
                    .map(|&i| {
                        let g = &outcome.grades[i as usize];
                        // Outside G with no override there is nothing beyond the columns
                        // (the lifecycle says why): no row, a sixth fewer writes.
                        (g.graded || g.tier_reason != TierReason::NotGraded)
                            .then(|| stored_explanation(g, outcome.churn_rate_of(g), custom_names))
                    })
                    .collect();
                if sender.send((batch, explanations)).is_err() {
                    // The writer stopped on an error; it reports it.
                    return;
                }
            }
        });
        let batches = receiver.iter().map(|(batch, explanations)| {
            let indices = &order[batch * WRITE_BATCH..];
            let batch_len = explanations.len();
            let explanations: Vec<NewExplanation> = indices
                .iter()
                .zip(explanations)
                .filter_map(|(&i, explanation)| {
                    Some(NewExplanation {
                        run_id: run.0,
                        customer_id: outcome.grades[i as usize].customer.0,
                        explanation: explanation?,
                    })
                })
                .collect();
            let rows: Vec<NewGrade> = indices
                .iter()
                .take(batch_len)
                .map(|&i| {
                    let g = &outcome.grades[i as usize];
                    let predicted = prediction(i as usize);
                    NewGrade {
                        run_id: run.0,
                        customer_id: g.customer.0,
                        graded: g.graded,
                        recency_days: g.recency_days,
                        frequency: i32::try_from(g.frequency).unwrap_or(i32::MAX),
                        monetary: g.monetary,
                        r_score: g.rfm.map(|s| i32::from(s[0])),
                        f_score: g.rfm.map(|s| i32::from(s[1])),
                        m_score: g.rfm.map(|s| i32::from(s[2])),
                        segment: g
                            .segment
                            .and_then(|s| segment_keys.get(usize::from(s)).copied()),
                        abc_class: g.abc.map(|a| a.as_str()),
                        credit_score: g.credit.map(|c| c.score),
                        credit_grade: g.credit.map_or("unrated", |c| c.grade.as_str()),
                        profit: g.profit,
                        composite: g.composite,
                        computed_tier: tier(g.computed_tier),
                        tier: tier(g.assigned_tier),
                        tier_reason: tier_reason_key(&g.tier_reason),
                        periods_below: i32::try_from(g.periods_below).unwrap_or(i32::MAX),
                        loyalty: g
                            .loyalty_step
                            .and_then(|s| loyalty_steps.get(usize::from(s)).copied()),
                        lifecycle: g.lifecycle.as_str(),
                        clv: g.clv_simple,
                        tier_since: g.tier_since,
                        p_alive: predicted.p_alive,
                        expected_purchases_90d: predicted.expected_purchases_90d,
                        expected_purchases_12m: predicted.expected_purchases_12m,
                        expected_order_value: predicted.expected_order_value,
                        clv_model: predicted.clv_model,
                    }
                })
                .collect();
            (rows, explanations)
        });
        Ok(store::write_run_grades(db, conn, run, batches)?)
    })
}

/// The policy in force: the configured `[grading]` policy with the newest version applied from
/// the dashboard over it.
#[derive(Debug, Clone)]
pub struct EffectivePolicy {
    /// The policy to grade with.
    pub policy: Policy,
    /// The version in force, if any was applied.
    pub version: Option<PolicyVersion>,
}

/// Reads the policy in force (see [`EffectivePolicy`]). A version that no longer fits the
/// configuration is an error rather than silently ignored: grading under another policy than
/// the one an admin applied would be worse than not grading.
pub fn effective_policy(
    conn: &mut DbConnection,
    configured: &Policy,
) -> Result<EffectivePolicy, GradingError> {
    let version = tierwise_store::policy::current_version(conn)?;
    let policy = match &version {
        Some(v) => v
            .adjustment
            .apply(configured)
            .map_err(|e| GradingError::StaleVersion {
                version: v.id,
                author: v.author.clone(),
                reason: e.to_string(),
            })?,
        None => configured.clone(),
    };
    Ok(EffectivePolicy { policy, version })
}

/// Puts `adjustment` (over the configured policy) in force from the next grading run, recording
/// who did it and why. An empty adjustment returns to the configuration. Returns the version id
/// and the new policy.
pub fn apply_policy(
    conn: &mut DbConnection,
    configured: &Policy,
    adjustment: &PolicyAdjustment,
    author: &str,
    reason: &str,
) -> Result<(i64, Policy), GradingError> {
    let policy = adjustment.apply(configured)?;
    // A stale version in force is being replaced; its hash is the configuration's then.
    let previous_hash = match effective_policy(conn, configured) {
        Ok(current) => current.policy.hash(),
        Err(GradingError::StaleVersion { .. }) => configured.hash(),
        Err(e) => return Err(e),
    };
    let minimal = PolicyAdjustment::between(configured, &policy);
    let id = tierwise_store::policy::add_version(
        conn,
        NewPolicyVersion {
            author,
            reason,
            adjustment: &minimal,
            previous_hash: &previous_hash,
            policy_hash: &policy.hash(),
            now: chrono::Utc::now().naive_utc(),
        },
    )?;
    tracing::info!(version = id, author, hash = %policy.hash(), "policy version applied");
    Ok((id, policy))
}

/// What a policy change would do to the newest graded period.
#[derive(Debug, Clone, Serialize)]
pub struct WhatIf {
    /// The period re-graded in memory.
    pub period: Period,
    /// Hash of the policy in force.
    pub current_hash: String,
    /// Hash of the candidate.
    pub candidate_hash: String,
    /// The dry run (its summary is the candidate's distribution, its movement the comparison
    /// with the published grades).
    pub report: GradingReport,
}

/// Re-grades the newest published period in memory under `candidate` and compares it with the
/// published grades. Writes nothing; fails with the store's busy error while a grading run holds
/// the lock.
pub fn what_if(
    db: &Database,
    configured: &Policy,
    candidate: &Policy,
) -> Result<WhatIf, GradingError> {
    let (period, current_hash) = {
        let mut conn = db.conn()?;
        let period = tierwise_store::notify::latest_published_period(&mut conn)?
            .ok_or(GradingError::NothingGraded)?;
        (
            period,
            effective_policy(&mut conn, configured)?.policy.hash(),
        )
    };
    let report = grade_period(db, period, candidate, Mode::DryRun)?;
    Ok(WhatIf {
        period,
        current_hash,
        candidate_hash: candidate.hash(),
        report,
    })
}

/// Grades every period from `from` to `to` in order (hysteresis and CLV build on each other),
/// calling `after_each` with each report. Stops at the first failure.
pub fn grade_range(
    db: &Database,
    from: Period,
    to: Period,
    policy: &Policy,
    mut after_each: impl FnMut(&GradingReport),
) -> Result<Vec<GradingReport>, GradingError> {
    if from > to {
        return Err(GradingError::BackwardsRange { from, to });
    }
    let mut reports = Vec::new();
    let mut period = from;
    while period <= to {
        let report = grade_period(db, period, policy, Mode::Publish)?;
        after_each(&report);
        reports.push(report);
        period = period.next();
    }
    Ok(reports)
}
