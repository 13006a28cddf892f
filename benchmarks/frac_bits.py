"""Choose the fixed-point precision: error of a transformer-sized linear layer and of a
product chain vs the truncation failure probability, for f = 12..18 (insecure dealer:
the arithmetic is identical to the HE provider's, only faster to set up).

Run: python -m benchmarks.frac_bits
"""

from __future__ import annotations

import warnings

import numpy as np

from common.mpc.preprocessing import InsecureDealerWarning
from common.mpc.ring import FixedPoint
from common.mpc.roles import CLIENT, SERVER
from common.mpc.runner import run_local_program


def measure(f: int, rng: np.random.Generator) -> dict[str, float]:
    x = rng.normal(0, 1, (128, 768))
    w = rng.normal(0, 0.02, (768, 3072))

    def prog(m, data):
        xs = m.share(CLIENT, (data or {}).get("x") if m.party == CLIENT else None, x.shape)
        y = m.linear(xs, "w", 3072, weight=(data or {}).get("w") if m.party == SERVER else None)
        z = m.mul(y, y)
        return m.reveal(y, CLIENT), m.reveal(z, CLIENT)

    _, r1 = run_local_program(prog, {"w": w}, {"x": x}, "insecure_dealer", FixedPoint(f))
    y_ref = x @ w
    y, z = r1.result
    # Failure probability of each truncation is |v|/2^64 with v the 2f-bit product.
    p_fail = (np.abs(y_ref).mean() + np.abs(y_ref**2).mean()) * 2.0 ** (2 * f - 64)
    return {
        "f": f,
        "linear_max_abs_err": float(np.abs(y - y_ref).max()),
        "square_max_rel_err": float((np.abs(z - y_ref**2) / (y_ref**2 + 1e-3)).max()),
        "trunc_fail_per_1e7": float(p_fail / 2 * 1e7),
    }


def main() -> None:
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureDealerWarning)
        for f in range(12, 19):
            r = measure(f, rng)
            print(
                f"f={r['f']:2d}  linear max abs err {r['linear_max_abs_err']:.2e}  "
                f"square max rel err {r['square_max_rel_err']:.2e}  "
                f"expected truncation failures per 1e7 {r['trunc_fail_per_1e7']:.2e}"
            )


if __name__ == "__main__":
    main()
