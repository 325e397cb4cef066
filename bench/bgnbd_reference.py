"""Reference values for tierwise's BG/NBD and MBG/NBD (crates/domain/src/predictive.rs), computed
independently with scipy: the per-customer log-likelihood, P(alive) and the expected number of
purchases in the next t periods, for a few hand-picked customers and parameter sets.

    python3 bench/bgnbd_reference.py

Formulas: Fader, Hardie & Lee (2005), "Counting your customers the easy way" (BG/NBD), and
Batislam, Denizel & Filiztekin (2007) (MBG/NBD), written here directly from the papers.
"""

from math import exp, log

from scipy.special import gammaln, hyp2f1

PARAMS = [(0.243, 4.414, 0.793, 2.426), (1.5, 10.0, 2.2, 6.0)]
CUSTOMERS = [(0, 0.0, 38.86), (2, 30.43, 38.86), (7, 35.0, 38.86), (1, 0.0, 5.0), (30, 20.0, 21.0)]
HORIZON = 39.0


def bg_ll(r, alpha, a, b, x, tx, T):
    head = gammaln(r + x) - gammaln(r) + r * log(alpha)
    head += gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    tail = (alpha + T) ** -(r + x)
    if x > 0:
        tail += a / (b + x - 1) * (alpha + tx) ** -(r + x)
    return head + log(tail)


def mbg_ll(r, alpha, a, b, x, tx, T):
    head = gammaln(r + x) - gammaln(r) + r * log(alpha)
    head += gammaln(a + b) + gammaln(b + x + 1) - gammaln(b) - gammaln(a + b + x + 1)
    tail = (alpha + T) ** -(r + x) + a / (b + x) * (alpha + tx) ** -(r + x)
    return head + log(tail)


def bg_alive(r, alpha, a, b, x, tx, T):
    if x == 0:
        return 1.0
    return 1.0 / (1.0 + a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** (r + x))


def mbg_alive(r, alpha, a, b, x, tx, T):
    return 1.0 / (1.0 + a / (b + x) * ((alpha + T) / (alpha + tx)) ** (r + x))


def bg_expected(r, alpha, a, b, x, tx, T, t):
    z = t / (alpha + T + t)
    first = (a + b + x - 1) / (a - 1)
    second = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z)
    return first * second * bg_alive(r, alpha, a, b, x, tx, T)


def mbg_expected(r, alpha, a, b, x, tx, T, t):
    z = t / (alpha + T + t)
    first = (a + b + x) / (a - 1)
    second = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp2f1(r + x, b + x + 1, a + b + x, z)
    return first * second * mbg_alive(r, alpha, a, b, x, tx, T)


if __name__ == "__main__":
    for p in PARAMS:
        for c in CUSTOMERS:
            row = [*p, *c]
            print(
                f"({p}, {c}): bg_ll={bg_ll(*row):.12f} mbg_ll={mbg_ll(*row):.12f} "
                f"bg_alive={bg_alive(*row):.12f} mbg_alive={mbg_alive(*row):.12f} "
                + f"bg_exp={bg_expected(*row, HORIZON):.12f} mbg_exp={mbg_expected(*row, HORIZON):.12f}"
            )

# Gamma-Gamma spend model (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value curves").
SPEND_PARAMS = [(6.25, 3.74, 15.44), (2.0, 5.0, 40.0)]
SPENDERS = [(1, 35.5), (4, 120.0), (12, 8.25)]


def gg_ll(p, q, g, x, m):
    return (gammaln(p * x + q) - gammaln(p * x) - gammaln(q) + q * log(g) + (p * x - 1) * log(m)
            + p * x * log(x) - (p * x + q) * log(g + x * m))


def gg_value(p, q, g, x, m):
    return (g + x * m) * p / (p * x + q - 1)


if __name__ == "__main__":
    for sp in SPEND_PARAMS:
        print(f"{sp}: population={sp[0] * sp[2] / (sp[1] - 1):.12f}")
        for x, m in SPENDERS:
            print(f"({sp}, {x}, {m}): gg_ll={gg_ll(*sp, x, m):.12f} gg_value={gg_value(*sp, x, m):.12f}")


def no_purchase(alive, r, alpha, x, T, t):
    """P(no purchase in (T, T+t]): dead, or alive with no purchase (λ | data ~ Gamma(r+x, α+T))."""
    return (1 - alive) + alive * ((alpha + T) / (alpha + T + t)) ** (r + x)


if __name__ == "__main__":
    r, alpha, a, b = PARAMS[1]
    for x, tx, T in CUSTOMERS:
        print(f"no_purchase({x}, {tx}, {T}, 13): bg={no_purchase(bg_alive(r, alpha, a, b, x, tx, T), r, alpha, x, T, 13):.12f} "
              f"mbg={no_purchase(mbg_alive(r, alpha, a, b, x, tx, T), r, alpha, x, T, 13):.12f}")


def bg_expected_by_integration(r, alpha, a, b, x, tx, T, t):
    """E[Y(t) | x, t_x, T] for BG/NBD by integrating over λ and p directly: no closed form, so it
    shows the closed form holds for a ≤ 1 too (its 1/(a − 1) is an artefact of the algebra)."""
    import numpy as np
    from scipy.integrate import dblquad
    from scipy.stats import beta as beta_dist, gamma as gamma_dist

    def prior(lam, p):
        return gamma_dist.pdf(lam, r, scale=1 / alpha) * beta_dist.pdf(p, a, b)

    def alive(lam, p):
        return (1 - p) ** x * lam ** x * np.exp(-lam * T)

    def likelihood(lam, p):
        dead = p * (1 - p) ** (x - 1) * lam ** x * np.exp(-lam * tx) if x > 0 else 0.0
        return alive(lam, p) + dead

    tol = dict(epsabs=1e-13, epsrel=1e-10)
    buys = dblquad(lambda lam, p: alive(lam, p) * -np.expm1(-lam * p * t) / p * prior(lam, p), 0, 1, 0, np.inf, **tol)[0]
    total = dblquad(lambda lam, p: likelihood(lam, p) * prior(lam, p), 0, 1, 0, np.inf, **tol)[0]
    return buys / total


if __name__ == "__main__":
    row = (*PARAMS[0], 2, 30.43, 38.86)
    print(f"CDNOW (a < 1), x=2: closed form {bg_expected(*row, HORIZON):.12f}, "
          f"integrated {bg_expected_by_integration(*row, HORIZON):.12f}")
