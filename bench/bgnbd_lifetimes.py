"""Peer for `cargo bench -p tierwise-domain --bench predictive_1m`: fits the Python `lifetimes`
package's ModifiedBetaGeoFitter and BetaGeoFitter to the same (frequency, recency, T) rows, and
times P(alive) and the expected purchases of the next 13 weeks for every row.

    python3 bench/bgnbd_lifetimes.py target/bench-predictive/summaries.csv

Prints `<model> fit <seconds>`, `<model> predict <seconds>` and `<model> params <text>` lines.
"""

import sys
import time

import pandas as pd
from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter

rows = pd.read_csv(sys.argv[1])
for name, model in (("mbg", ModifiedBetaGeoFitter()), ("bg", BetaGeoFitter())):
    started = time.perf_counter()
    model.fit(rows["frequency"], rows["recency"], rows["T"])
    print(f"{name} fit {time.perf_counter() - started:.3f}")
    started = time.perf_counter()
    model.conditional_probability_alive(rows["frequency"], rows["recency"], rows["T"])
    model.conditional_expected_number_of_purchases_up_to_time(13, rows["frequency"], rows["recency"], rows["T"])
    print(f"{name} predict {time.perf_counter() - started:.3f}")
    p = model.params_
    print(f"{name} params r={p['r']:.4f} alpha={p['alpha']:.4f} a={p['a']:.4f} b={p['b']:.4f}")
