"""`comet-bench risk`: expected catastrophic failures per inference, per site.

A local (SecureML) truncation of a shared value v fails — the result is off by about
2^(64−f), a garbage output — with probability |v|/2^64 (docs/SECURITY.md,
"Truncation"); the exact truncation (the default, `Mpc.trunc_many`) only when |v| ≥
2^62, outside its range. The fixed-point emulation (`PlainBackend(track_risk=True)`)
runs the program the private run runs, with the same values at every truncation, and
sums each truncated value's failure probability: the exact expected number of failed
truncations of a private run on that input (a union bound on the probability that it
fails at all). Both policies are counted in the same pass ("total"/"sites" for the
chosen one, "other" for the other). Sites are the program's labels "layer.op"
(`layer0.gelu`, `embed.layernorm`, …). The input is `benchmarks.model.sample_input`:
a fixed English text, `seq_len` tokens.
Cost: one fixed-point emulation (seconds for MiniLM, ~a minute for BERT-base at 128).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from common.mpc.ring import FRAC_BITS

DECODERS = ("smollm2",)


class ModelUnavailable(ValueError):
    """The named model cannot be run by this build."""


def run_risk(
    model: str,
    seq_len: int,
    approx: str = "auto",
    batch: int = 1,
    frac_bits: int = FRAC_BITS,
    progress: Callable[[str], None] | None = None,
    exact: bool = True,
) -> dict[str, Any]:
    """{"meta", "total", "sites", "truncations", "other"} for `model` on `batch` ×
    `seq_len` tokens. `total` = Σ sites = expected failed truncations per inference
    under `exact` (True: exact truncation, False: local); "other" holds the same for
    the other policy on the same run."""
    from benchmarks.model import resolve_model, sample_input
    from common.approx.backend import PlainBackend
    from common.protocol.calibrate import compile_model
    from common.protocol.hf import UnsupportedModel
    from common.protocol.run import plain_forward

    say = progress or (lambda m: None)
    try:
        model_dir = resolve_model(model)
    except FileNotFoundError as e:
        if model in DECODERS:
            raise ModelUnavailable(
                f"model {model!r} (a decoder, LlamaForCausalLM) is not available in this "
                "build: it compiles BERT-family encoders only (common/protocol/hf.py)"
            ) from e
        raise
    say(f"compiling {model_dir} ({approx}) …")
    try:
        compiled, tok = compile_model(model_dir, approx=approx)
    except UnsupportedModel as e:
        raise ModelUnavailable(f"model {model!r} cannot be compiled by this build: {e}") from e
    inp = sample_input(tok, seq_len, batch)
    say(f"fixed-point emulation (f = {frac_bits}): {seq_len} tokens × {batch} …")
    ops = PlainBackend(frac_bits, track_risk=True, exact=exact)
    plain_forward(compiled, inp, backend=ops)
    sites = dict(sorted(ops.risk_by_site.items(), key=lambda kv: -kv[1]))
    other = dict(sorted(ops.other_risk_by_site.items(), key=lambda kv: -kv[1]))
    return {
        "meta": {
            "model": str(model_dir),
            "approx": compiled.card.approx.kind,
            "seq_len": seq_len,
            "batch": batch,
            "frac_bits": frac_bits,
            "truncation": "exact" if exact else "local",
        },
        "total": ops.truncation_risk / batch,
        "sites": {k: v / batch for k, v in sites.items()},
        "truncations": ops.truncations // batch,
        # headroom of the exact truncation's range |v| < 2^62
        "max_log2_abs": math.log2(ops.max_truncated) if ops.max_truncated else None,
        "other": {
            "truncation": "local" if exact else "exact",
            "total": sum(other.values()) / batch,
            "sites": {k: v / batch for k, v in other.items()},
        },
    }
