"""Evidence for issue #14: many private inferences, counting catastrophic outputs.

`python -m benchmarks.catastrophic [--texts N] [--batch B] [--jsonl FILE]
[--insecure-dealer]` runs the bundled default model (Comet form) privately on the first
N tweets (the held-out test split, then validation, then training; batches of B texts
of similar length, up to 64 tokens), both
parties in this process, the offline phase from HE — or, only when asked with
`--insecure-dealer` (TESTS ONLY, it warns), from the test dealer: the online
computation, where a local truncation can fail, is the same whichever provider made
the correlations, and the dealer makes a run of thousands of texts affordable.
Per batch it compares the private logits with the fixed-point emulation of the same
plan on plaintext: a local truncation failure adds about ±2^(64−f) to a value, so any
catastrophic failure shows as an error of many orders of magnitude; an error above
`--threshold` (default 0.5 logits) is counted as catastrophic, and so is an output the
client's bounds check (`common.protocol.outcheck`) rejects. It also sums the
emulation's exact expected number of failures (exact truncation, the default: values
at or beyond its 2^62 range; and, for comparison, Σ |v|/2^64 over the same values, what
local truncation would risk), so the count can be set against what the risk model
predicts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
import numpy as np


@click.command()
@click.option("--texts", "n_texts", type=click.IntRange(1), default=2000, show_default=True)
@click.option("--batch", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--max-length", type=click.IntRange(4, 512), default=64, show_default=True)
@click.option("--threshold", type=float, default=0.5, show_default=True)
@click.option("--jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--shard",
    default="0/1",
    show_default=True,
    help="i/n: run only batches k with k % n == i (n processes share a run; the batches "
    "keep their numbers in the JSON lines).",
)
@click.option("--skip-batches", type=click.IntRange(0), default=0, help="Start at batch K.")
@click.option(
    "--insecure-dealer",
    is_flag=True,
    help="TESTS ONLY: correlations from the insecure dealer instead of HE (much faster).",
)
def main(
    n_texts: int,
    batch: int,
    max_length: int,
    threshold: float,
    jsonl: Path | None,
    shard: str,
    skip_batches: int,
    insecure_dealer: bool,
) -> None:
    try:
        shard_i, shard_n = (int(v) for v in shard.split("/"))
        if not 0 <= shard_i < shard_n:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"--shard: want i/n with 0 ≤ i < n, got {shard!r}") from None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from comet_server.adapt.data import load_tweets
    from comet_server.adapt.default import default_model_dir
    from common.approx.backend import PlainBackend
    from common.mpc.ring import FRAC_BITS
    from common.protocol.calibrate import compile_model, tokenize_batches
    from common.protocol.outcheck import FailedInference, check_output
    from common.protocol.run import local_private_forward, plain_forward

    provider = "insecure_dealer" if insecure_dealer else "he"
    # the held-out test tweets, then the validation ones, then training ones: failures
    # are about the arithmetic, not the labels, so any real text will do
    texts = load_tweets("test")[0] + load_tweets("val")[0] + load_tweets("train")[0]
    if n_texts > len(texts):
        raise click.UsageError(f"--texts: only {len(texts)} tweets")
    texts = texts[:n_texts]
    model, tok = compile_model(default_model_dir(build=True), approx="comet")
    order = np.argsort([len(tok(t)["input_ids"]) for t in texts], kind="stable")
    batches = tokenize_batches(tok, [texts[i] for i in order], max_length, batch)
    out = open(jsonl, "w") if jsonl else None  # noqa: SIM115
    done = catastrophic = rejected = ran = 0
    risk = risk_local = 0.0
    worst = 0.0
    t0 = time.perf_counter()
    for k, b in enumerate(batches):
        if k < skip_batches or k % shard_n != shard_i:
            continue
        ran += 1
        be = PlainBackend(FRAC_BITS, track_risk=True)
        emul = plain_forward(model, b, backend=be)
        _, client = local_private_forward(model, b, provider=provider)
        got = client.output
        assert got is not None
        err = float(np.abs(got - emul).max())
        try:
            check_output(model.card, "logits", got, b.attention_mask)
            ok = True
        except FailedInference:
            ok = False
        bad = err > threshold or not ok
        done += len(b.token_ids)
        catastrophic += int(bad)
        rejected += int(not ok)
        risk += float(be.truncation_risk)
        risk_local += sum(be.other_risk_by_site.values())
        worst = max(worst, err)
        row = {
            "batch": k,
            "texts": len(b.token_ids),
            "seq_len": int(b.token_ids.shape[1]),
            "max_abs_err": err,
            "bounds_ok": ok,
            "expected_failures": float(be.truncation_risk),
        }
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()
        print(
            f"{done}/{len(texts)} texts, batch {k}: len {row['seq_len']}, max err {err:.2e}"
            f"{'  CATASTROPHIC' if bad else ''}",
            file=sys.stderr,
        )
    summary = {
        "texts": done, "batches": len(batches), "batches_run": ran,
        "catastrophic_batches": catastrophic,
        "rejected_by_bounds": rejected, "max_abs_err": worst, "threshold": threshold,
        "expected_failures_total": risk, "seconds": time.perf_counter() - t0,
        "expected_failures_if_local_truncation": risk_local,
        "provider": provider, "shard": shard, "skip_batches": skip_batches,
    }  # fmt: skip
    if out:
        out.write(json.dumps({"summary": summary}) + "\n")
        out.close()
    click.echo(json.dumps(summary))


if __name__ == "__main__":
    main()
