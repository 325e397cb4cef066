//! Parameter recovery: customers simulated from the model's own generative process with known
//! parameters are fitted back, and the optimum beats nearby points.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test"
)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Exp, Gamma};
use tierwise_domain::predictive::{
    BgNbdParams, GammaGammaParams, RepeatSummary, SpendSummary, Variant, fit, fit_from, fit_spend,
    fit_spend_from, spend_log_likelihood, total_log_likelihood,
};

/// `n` customers: λ ~ Gamma(r, 1/α), p ~ Beta(a, b), first purchase at 0, observed for T weeks
/// (uniform in 26..104); while alive each purchase comes after an Exp(λ) wait, and a customer
/// drops out after a repeat purchase (and, in MBG/NBD, also after the first) with probability p.
fn simulate(p: &BgNbdParams, variant: Variant, n: usize, seed: u64) -> Vec<(RepeatSummary, f64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let rates = Gamma::new(p.r, 1.0 / p.alpha).unwrap();
    let dropouts = Beta::new(p.a, p.b).unwrap();
    (0..n)
        .map(|_| {
            let lambda: f64 = rates.sample(&mut rng);
            let dropout: f64 = dropouts.sample(&mut rng);
            let age = rng.random_range(26.0..104.0);
            let (mut x, mut last) = (0_u32, 0.0_f64);
            let mut alive = !(variant == Variant::Modified && rng.random::<f64>() < dropout);
            let wait = Exp::new(lambda.max(1e-12)).unwrap();
            while alive {
                let next = last + wait.sample(&mut rng);
                if next > age {
                    break;
                }
                x += 1;
                last = next;
                alive = rng.random::<f64>() >= dropout;
            }
            (RepeatSummary::new(x, last, age).unwrap(), 1.0)
        })
        .collect()
}

fn within(actual: f64, truth: f64, relative: f64, what: &str) {
    assert!(
        (actual - truth).abs() <= relative * truth,
        "{what}: fitted {actual}, true {truth}"
    );
}

#[test]
fn known_parameters_are_recovered_from_simulated_customers() {
    let sets = [
        (
            Variant::Bg,
            BgNbdParams {
                r: 0.25,
                alpha: 4.0,
                a: 0.8,
                b: 2.5,
            },
        ),
        (
            Variant::Modified,
            BgNbdParams {
                r: 0.9,
                alpha: 6.0,
                a: 1.5,
                b: 4.0,
            },
        ),
        (
            Variant::Bg,
            BgNbdParams {
                r: 2.0,
                alpha: 12.0,
                a: 0.5,
                b: 6.0,
            },
        ),
    ];
    for (seed, (variant, truth)) in sets.into_iter().enumerate() {
        let data = simulate(&truth, variant, 20_000, seed as u64 + 1);
        let fitted = fit(variant, &data).unwrap();
        let p = fitted.params;
        eprintln!(
            "{variant:?}: true {truth:?}, fitted {p:?} in {} iterations",
            fitted.iterations
        );
        // r and α are estimated together (their ratio, the mean rate, most tightly).
        within(
            p.r / p.alpha,
            truth.r / truth.alpha,
            0.10,
            "mean purchase rate r/α",
        );
        within(p.r, truth.r, 0.25, "r");
        within(
            p.a / (p.a + p.b),
            truth.a / (truth.a + truth.b),
            0.25,
            "mean drop-out a/(a+b)",
        );
        // The optimum beats every nearby point.
        let best = total_log_likelihood(&p, variant, &data);
        assert!((best - fitted.log_likelihood).abs() < 1e-6 * best.abs());
        for k in 0..4 {
            for factor in [0.98, 1.02] {
                let mut q = p;
                match k {
                    0 => q.r *= factor,
                    1 => q.alpha *= factor,
                    2 => q.a *= factor,
                    _ => q.b *= factor,
                }
                assert!(
                    total_log_likelihood(&q, variant, &data) < best,
                    "parameter {k} × {factor}"
                );
            }
        }
    }
}

#[test]
fn gamma_gamma_parameters_are_recovered_from_simulated_spend() {
    for (seed, truth) in [
        GammaGammaParams {
            p: 6.25,
            q: 3.74,
            gamma: 15.44,
        },
        GammaGammaParams {
            p: 2.0,
            q: 5.0,
            gamma: 40.0,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = StdRng::seed_from_u64(100 + seed as u64);
        let nus = Gamma::new(truth.q, 1.0 / truth.gamma).unwrap();
        let data: Vec<SpendSummary> = (0..20_000)
            .map(|_| {
                let nu: f64 = nus.sample(&mut rng);
                let values = Gamma::new(truth.p, 1.0 / nu).unwrap();
                let x = rng.random_range(1..=10_u32);
                let total: f64 = (0..x).map(|_| values.sample(&mut rng)).sum();
                SpendSummary {
                    transactions: x,
                    average: total / f64::from(x),
                }
            })
            .collect();
        let (g, ll) = fit_spend(&data).unwrap();
        eprintln!("Gamma-Gamma: true {truth:?}, fitted {g:?}");
        // The population mean p·γ/(q−1) is what CLV uses; it is recovered tightly.
        within(
            g.p * g.gamma / (g.q - 1.0),
            truth.p * truth.gamma / (truth.q - 1.0),
            0.05,
            "mean value",
        );
        within(g.p, truth.p, 0.15, "p");
        let at =
            |g: &GammaGammaParams| data.iter().map(|s| spend_log_likelihood(g, s)).sum::<f64>();
        assert!((at(&g) - ll).abs() < 1e-6 * ll.abs());
        for (dp, dq, dg) in [
            (1.02, 1.0, 1.0),
            (0.98, 1.0, 1.0),
            (1.0, 1.02, 1.0),
            (1.0, 0.98, 1.0),
            (1.0, 1.0, 1.02),
            (1.0, 1.0, 0.98),
        ] {
            let near = GammaGammaParams {
                p: g.p * dp,
                q: g.q * dq,
                gamma: g.gamma * dg,
            };
            assert!(at(&near) < ll, "{near:?} beats the optimum");
        }
        // Started from last month's parameters (a few percent off), the fit reaches the same
        // optimum; an unusable start is ignored.
        let nearby = GammaGammaParams {
            p: g.p * 1.04,
            q: g.q * 0.97,
            gamma: g.gamma * 1.03,
        };
        let (warm, warm_ll) = fit_spend_from(&data, Some(&nearby)).unwrap();
        assert!(warm_ll >= ll - 1e-7 * ll.abs(), "{warm_ll} vs {ll}");
        within(warm.p, g.p, 0.01, "warm p");
        within(warm.q, g.q, 0.01, "warm q");
        within(warm.gamma, g.gamma, 0.01, "warm gamma");
        let nonsense = GammaGammaParams {
            p: f64::NAN,
            ..nearby
        };
        assert_eq!(fit_spend_from(&data, Some(&nonsense)).unwrap(), (g, ll));
    }
}

#[test]
fn a_warm_start_reaches_the_same_optimum_in_fewer_iterations() {
    let truth = BgNbdParams {
        r: 0.9,
        alpha: 6.0,
        a: 1.5,
        b: 4.0,
    };
    let data = simulate(&truth, Variant::Modified, 10_000, 5);
    let cold = fit(Variant::Modified, &data).unwrap();
    // Last month's parameters: a few percent off this month's optimum.
    let nearby = BgNbdParams {
        r: cold.params.r * 1.04,
        alpha: cold.params.alpha * 0.97,
        a: cold.params.a * 0.96,
        b: cold.params.b * 1.03,
    };
    let warm = fit_from(Variant::Modified, &data, Some(&nearby)).unwrap();
    assert!(
        warm.iterations < cold.iterations,
        "{} vs {}",
        warm.iterations,
        cold.iterations
    );
    for (w, c, name) in [
        (warm.params.r, cold.params.r, "r"),
        (warm.params.alpha, cold.params.alpha, "alpha"),
        (warm.params.a, cold.params.a, "a"),
        (warm.params.b, cold.params.b, "b"),
    ] {
        within(w, c, 1e-3, name);
    }
    // A start that is no use (non-finite) falls back to the cold start.
    let nonsense = BgNbdParams {
        r: f64::NAN,
        ..nearby
    };
    assert_eq!(
        fit_from(Variant::Modified, &data, Some(&nonsense)).unwrap(),
        cold
    );
}
