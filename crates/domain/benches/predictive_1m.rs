//! Predictive-model benchmark: fit MBG/NBD and BG/NBD to 1,000,000 simulated customers and
//! predict P(alive) and the expected purchases of the next 13 weeks for each, against the Python
//! `lifetimes` package fitting the same summaries (bench/bgnbd_lifetimes.py).
//!
//! ```text
//! cargo bench -p tierwise-domain --bench predictive_1m                      # 1M customers
//! cargo bench -p tierwise-domain --bench predictive_1m -- --customers 100000 --python none
//! ```
//! Needs a Python with `lifetimes` (`pip install lifetimes`) unless `--python none`. The report
//! is printed and written to target/bench-report/predictive_1m.md.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use chrono::{Days, NaiveDate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Exp, Gamma};
use tierwise_domain::CustomerId;
use tierwise_domain::grading::{CustomerFacts, Policy, ProfitFacts, predict_population};
use tierwise_domain::predictive::{
    BgNbdParams, GammaGammaParams, RepeatSummary, SpendSummary, Variant, expected_purchases, fit,
    fit_from, fit_spend, p_alive,
};

type Error = Box<dyn std::error::Error>;

const TRUTH: BgNbdParams = BgNbdParams {
    r: 0.9,
    alpha: 6.0,
    a: 1.5,
    b: 4.0,
};
/// Spend truth: transaction values Gamma(p, ν), ν ~ Gamma(q, γ) (minor units).
const SPEND_TRUTH: GammaGammaParams = GammaGammaParams {
    p: 6.0,
    q: 4.0,
    gamma: 1_500.0,
};
/// Weeks ahead for the expected purchases.
const HORIZON: f64 = 13.0;

/// Customers in whole days (as a grading run would count them), reported in weeks: first
/// purchase 26 to 104 weeks before the as-of date, purchases at most one a day.
fn simulate(n: usize) -> Result<Vec<(u32, u32, u32)>, Error> {
    let mut rng = StdRng::seed_from_u64(42);
    let rates = Gamma::new(TRUTH.r, 1.0 / TRUTH.alpha)?;
    let dropouts = Beta::new(TRUTH.a, TRUTH.b)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let lambda: f64 = rates.sample(&mut rng);
        let dropout: f64 = dropouts.sample(&mut rng);
        let age_days: u32 = rng.random_range(182..728);
        let wait = Exp::new(lambda.max(1e-12))?;
        let (mut x, mut last_day, mut t) = (0_u32, 0_u32, 0.0_f64);
        let mut alive = rng.random::<f64>() >= dropout;
        while alive {
            t += wait.sample(&mut rng);
            let day = (t * 7.0) as u32;
            if day > age_days {
                break;
            }
            if day > last_day {
                x += 1;
                last_day = day;
            }
            alive = rng.random::<f64>() >= dropout;
        }
        out.push((x, last_day, age_days));
    }
    Ok(out)
}

fn summary((x, recency_days, age_days): (u32, u32, u32)) -> Option<RepeatSummary> {
    RepeatSummary::new(x, f64::from(recency_days) / 7.0, f64::from(age_days) / 7.0)
}

fn main() -> Result<(), Error> {
    let mut customers = 1_000_000_usize;
    let mut python = std::env::var("TIERWISE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--customers" => customers = args.next().ok_or("--customers N")?.parse()?,
            "--python" => python = args.next().ok_or("--python PATH|none")?,
            _ => {}
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let data = simulate(customers)?;

    let mut report = format!(
        "# Predictive model: {customers} simulated customers (MBG/NBD truth {TRUTH:?})\n\n\
         | step | tierwise s | lifetimes s | ratio |\n|---|---|---|---|\n"
    );
    let peer = if python == "none" {
        None
    } else {
        Some(run_lifetimes(&python, &root, &data)?)
    };
    let mut notes = String::new();
    for (variant, name) in [(Variant::Modified, "mbg"), (Variant::Bg, "bg")] {
        let started = Instant::now();
        // Customers with the same (x, t_x, T) in days share one likelihood term.
        let mut groups: HashMap<(u32, u32, u32), f64> = HashMap::new();
        for c in &data {
            *groups.entry(*c).or_default() += 1.0;
        }
        let grouped: Vec<(RepeatSummary, f64)> = groups
            .into_iter()
            .filter_map(|(c, n)| summary(c).map(|s| (s, n)))
            .collect();
        let fitted = fit(variant, &grouped)?;
        let fit_secs = started.elapsed().as_secs_f64();
        // Next month's run starts from this month's parameters: here, 5 % off the optimum.
        let nearby = BgNbdParams {
            r: fitted.params.r * 1.05,
            alpha: fitted.params.alpha * 0.95,
            a: fitted.params.a * 1.05,
            b: fitted.params.b * 0.95,
        };
        let started = Instant::now();
        let warm = fit_from(variant, &grouped, Some(&nearby))?;
        let warm_secs = started.elapsed().as_secs_f64();
        writeln!(
            notes,
            "- {name}: warm start 5 % off the optimum: {warm_secs:.2} s, {} iterations \
             (log-likelihood {:.1})",
            warm.iterations, warm.log_likelihood
        )?;

        let started = Instant::now();
        let (mut alive_sum, mut expected_sum) = (0.0, 0.0);
        for c in data.iter().filter_map(|c| summary(*c)) {
            alive_sum += p_alive(&fitted.params, variant, &c);
            expected_sum += expected_purchases(&fitted.params, variant, &c, HORIZON).unwrap_or(0.0);
        }
        let predict_secs = started.elapsed().as_secs_f64();

        let their = peer.as_ref().and_then(|p| p.timings.get(name));
        let cell = |ours: f64, key: &str| match their.and_then(|t| t.get(key)) {
            Some(t) => format!("{t:.2} | {:.2}", ours / t),
            None => "– | –".into(),
        };
        writeln!(
            report,
            "| {name} fit ({} distinct summaries, {} iterations) | {fit_secs:.2} | {} |",
            grouped.len(),
            fitted.iterations,
            cell(fit_secs, "fit")
        )?;
        writeln!(
            report,
            "| {name} predict P(alive) + E[Y(13 weeks)] | {predict_secs:.2} | {} |",
            cell(predict_secs, "predict")
        )?;
        let p = fitted.params;
        writeln!(
            notes,
            "- {name}: fitted r={:.4} alpha={:.4} a={:.4} b={:.4}, log-likelihood {:.1}; mean \
             P(alive) {:.4}, mean E[Y(13)] {:.4}",
            p.r,
            p.alpha,
            p.a,
            p.b,
            fitted.log_likelihood,
            alive_sum / customers as f64,
            expected_sum / customers as f64,
        )?;
        if let Some(text) = peer.as_ref().and_then(|p| p.params.get(name)) {
            writeln!(notes, "  - lifetimes fitted {text}")?;
        }
    }
    // The grading run's whole step: both fits and every customer's P(alive), E[Y(90 days)],
    // E[Y(12 months)], expected order value and 12-month discounted CLV, in days.
    let facts = customer_facts(&data)?;
    let spend_data: Vec<SpendSummary> = facts
        .iter()
        .filter(|f| f.order_days > 1 && f.repeat_amount > 0)
        .map(|f| SpendSummary {
            transactions: f.order_days - 1,
            average: f.repeat_amount as f64 / f64::from(f.order_days - 1),
        })
        .collect();
    let started = Instant::now();
    let (spend_alone, _) = fit_spend(&spend_data).map_err(|e| e.to_string())?;
    let spend_secs = started.elapsed().as_secs_f64();
    drop(spend_data);
    writeln!(
        report,
        "| Gamma-Gamma fit alone (p={:.3} q={:.3} gamma={:.1}) | {spend_secs:.2} | – | – |",
        spend_alone.p, spend_alone.q, spend_alone.gamma
    )?;
    let started = Instant::now();
    let predicted = predict_population(&facts, as_of(), &Policy::default(), None);
    let step_secs = started.elapsed().as_secs_f64();
    let model = predicted.model.clone().map_err(|e| e.to_string())?;
    let spend = model.spend.ok_or("the spend model did not fit")?;
    let with_clv = predicted
        .iter()
        .flatten()
        .filter(|p| p.clv.is_some())
        .count();
    writeln!(
        report,
        "| grading step: MBG/NBD fit in days + Gamma-Gamma fit ({} repeat buyers) + 5 predictions \
         per customer ({with_clv} CLVs) | {step_secs:.2} | – | – |",
        spend.customers
    )?;
    writeln!(
        notes,
        "- grading step: Gamma-Gamma fitted p={:.4} q={:.4} gamma={:.1} (truth {SPEND_TRUTH:?})",
        spend.params.p, spend.params.q, spend.params.gamma
    )?;
    report.push('\n');
    report.push_str(&notes);
    report.push_str(
        "\nTargets: fit ≤ 5 s, predict ≤ 1 s. tierwise fits the distinct (x, t_x, T) day summaries \
         with their counts; lifetimes fits the same rows through its own `weights` grouping.\n",
    );
    print!("{report}");
    let out: PathBuf = root.join("target/bench-report");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("predictive_1m.md"), &report)?;
    Ok(())
}

fn as_of() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 10, 31).unwrap_or_default()
}

/// The simulated customers as a grading run sees them, each repeat buyer's repeat spend drawn
/// from the Gamma-Gamma process (the sum of x values is Gamma(p·x, ν)).
fn customer_facts(data: &[(u32, u32, u32)]) -> Result<Vec<CustomerFacts>, Error> {
    let mut rng = StdRng::seed_from_u64(7);
    let nus = Gamma::new(SPEND_TRUTH.q, 1.0 / SPEND_TRUTH.gamma)?;
    let mut facts = Vec::with_capacity(data.len());
    for (i, &(x, recency_days, age_days)) in data.iter().enumerate() {
        let nu: f64 = nus.sample(&mut rng);
        let repeat_amount = if x > 0 {
            Gamma::new(SPEND_TRUTH.p * f64::from(x), 1.0 / nu)?.sample(&mut rng) as i64
        } else {
            0
        };
        let first = as_of() - Days::new(u64::from(age_days));
        facts.push(CustomerFacts {
            customer: CustomerId(i as i64),
            lifetime_orders: x + 1,
            order_days: x + 1,
            first_order: Some(first),
            last_order: Some(first + Days::new(u64::from(recency_days))),
            repeat_amount,
            last_year_revenue: repeat_amount,
            last_year_profit: ProfitFacts {
                costed_profit: repeat_amount / 4,
                ..ProfitFacts::default()
            },
            ..CustomerFacts::default()
        });
    }
    Ok(facts)
}

/// The peer's seconds per model and step, and its fitted parameters as text.
#[derive(Default)]
struct Peer {
    timings: HashMap<String, HashMap<String, f64>>,
    params: HashMap<String, String>,
}

/// Runs bench/bgnbd_lifetimes.py on the same summaries; its timings per model.
fn run_lifetimes(python: &str, root: &Path, data: &[(u32, u32, u32)]) -> Result<Peer, Error> {
    let dir = root.join("target/bench-predictive");
    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("summaries.csv");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&csv)?);
    writeln!(file, "frequency,recency,T")?;
    for (x, recency_days, age_days) in data {
        writeln!(
            file,
            "{x},{},{}",
            f64::from(*recency_days) / 7.0,
            f64::from(*age_days) / 7.0
        )?;
    }
    file.flush()?;
    drop(file);
    let output = Command::new(python)
        .arg(root.join("bench/bgnbd_lifetimes.py"))
        .arg(&csv)
        .output()?;
    if !output.status.success() {
        return Err(format!(
            "lifetimes peer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let mut peer = Peer::default();
    // Lines like `mbg fit 12.3`, `mbg predict 1.2`, `mbg params r=… alpha=…`.
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut parts = line.splitn(3, ' ');
        if let (Some(model), Some(key), Some(value)) = (parts.next(), parts.next(), parts.next()) {
            if key == "params" {
                peer.params.insert(model.to_owned(), value.to_owned());
            } else if let Ok(v) = value.parse::<f64>() {
                peer.timings
                    .entry(model.to_owned())
                    .or_default()
                    .insert(key.to_owned(), v);
            }
        }
    }
    Ok(peer)
}
