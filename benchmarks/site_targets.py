"""Held-out check of the per-site accuracy targets (docs/ACCURACY.md).

For both sets of the bundled default model, with the stored targets and with every site
at its default: label agreement and max |Δ logit| of the float and fixed-point
emulation against transformers on the 1000 held-out test texts (batches of 8, up to 64
tokens). Usage: `python -m benchmarks.site_targets [--out FILE]`. Cost: 8 emulation
passes over 1000 texts (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from benchmarks.accuracy import _hf_logits
from common.mpc.ring import FRAC_BITS


def run() -> dict[str, dict[str, float]]:
    from comet_server.adapt.data import load_tweets
    from comet_server.adapt.default import default_model_dir, original_model_dir
    from comet_server.adapt.patch import load_comet_model
    from common.protocol.calibrate import compile_model, tokenize_batches
    from common.protocol.hf import load_hf
    from common.protocol.run import plain_forward

    texts, labels = load_tweets("test")
    y = np.asarray(labels)
    res: dict[str, dict[str, float]] = {}
    for kind, d in (("comet", default_model_dir()), ("reference", original_model_dir())):
        hf = load_comet_model(d)[0] if kind == "comet" else load_hf(d)[0]
        for use in (False, True):
            m, tok = compile_model(d, approx=kind, site_targets=use)
            batches = tokenize_batches(tok, texts, 64, 8)
            ref = np.concatenate([_hf_logits(hf, b) for b in batches])
            for fb in (None, FRAC_BITS):
                out = np.concatenate([plain_forward(m, b, fb) for b in batches])
                key = f"{kind}, {'chosen' if use else 'default'} targets, " + (
                    "float" if fb is None else f"fixed point f={fb}"
                )
                res[key] = {
                    "agreement": float(np.mean(out.argmax(-1) == ref.argmax(-1))),
                    "max_abs_logit_err": float(np.max(np.abs(out - ref))),
                    "accuracy": float(np.mean(out.argmax(-1) == y)),
                }
                print(key, res[key], file=sys.stderr, flush=True)
    return res


if __name__ == "__main__":
    result = run()
    text = json.dumps(result, indent=1)
    if len(sys.argv) == 3 and sys.argv[1] == "--out":
        with open(sys.argv[2], "w") as f:
            f.write(text + "\n")
    print(text)
