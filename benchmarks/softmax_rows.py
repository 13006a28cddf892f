"""Lost rows of the reference exp-softmax in private runs: `python -m benchmarks.softmax_rows`.

Runs `comet-bench approx`'s reference-softmax input (12×128×128 synthetic logits, rows
up to 30 below the top) privately with the insecure dealer for seeds 0…N−1 and counts
rows whose maximum error exceeds 0.1 (a collapsed normalisation: docs/BENCHMARKS.md).
Cost: ~20 s per seed on one core.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from benchmarks.approx import _softmax_reference
from common.approx.backend import SharedBackend
from common.mpc.preprocessing import InsecureDealerWarning
from common.mpc.roles import CLIENT
from common.mpc.runner import run_local_program


def lost_rows(seed: int, threshold: float = 0.1) -> tuple[int, int, float]:
    """(rows with error > threshold, rows, max error) for one seed."""
    x, fn, want = _softmax_reference(np.random.default_rng(seed), False)

    def program(mpc, data):
        ops = SharedBackend(mpc)
        return ops.output(fn(ops, ops.input(CLIENT, data, x.shape)), to=CLIENT)

    _, client = run_local_program(program, None, x, provider="insecure_dealer")
    err = np.abs(client.result - want).max(-1)
    return int((err > threshold).sum()), int(err.size), float(err.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore", InsecureDealerWarning)
    lost = total = 0
    for seed in range(args.seeds):
        n, rows, worst = lost_rows(seed)
        lost, total = lost + n, total + rows
        print(f"seed {seed}: {n} of {rows} rows lost, max error {worst:.3g}", flush=True)
    print(f"total: {lost} of {total} rows lost")


if __name__ == "__main__":
    main()
