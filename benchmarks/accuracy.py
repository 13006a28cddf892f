"""`comet-bench accuracy`: the table of docs/ACCURACY.md.

On the held-out test split of the tweets task (never used for training or model
selection), for the bundled default model (Comet form) and its unadapted original:
- plaintext original (transformers), plaintext Comet form (transformers with the exact
  Comet functions);
- each approximation set in plain float arithmetic (the protocol's formulas, Newton
  rsqrt included, without fixed point);
- the fixed-point emulation of each set (the protocol's arithmetic on plaintext);
- private inference of each set on the first `n_private` texts: the real two-party
  protocol, both parties in this process. The offline phase uses the insecure dealer
  by default: the online computation — and so the result — is the same whichever
  provider produced the correlations (they are uniformly random either way), and the
  HE offline phase would take minutes per batch. `--provider he` runs it for real.
Accuracy is against the labels; agreement is against the plaintext model of the same
form (Comet private vs Comet plaintext, reference private vs original plaintext).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from common.approx.backend import PlainBackend
from common.mpc.ring import FRAC_BITS
from common.protocol.calibrate import compile_model, tokenize_batches
from common.protocol.card import CompiledModel
from common.protocol.program import ClientInput
from common.protocol.run import local_private_forward, plain_forward


def _hf_logits(model: Any, b: ClientInput) -> np.ndarray:
    with torch.no_grad():
        o = model(
            input_ids=torch.tensor(b.token_ids), attention_mask=torch.tensor(b.attention_mask)
        )
    return o.logits.double().numpy()


def run_accuracy(
    n_private: int = 200,
    provider: str = "insecure_dealer",
    max_length: int = 64,
    batch: int = 8,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from comet_server.adapt.data import load_tweets
    from comet_server.adapt.default import default_model_dir, original_model_dir
    from comet_server.adapt.patch import load_comet_model
    from common.protocol.hf import load_hf

    say = progress or (lambda m: None)
    texts, labels = load_tweets("test")
    y = np.asarray(labels)
    comet_dir, orig_dir = default_model_dir(build=True), original_model_dir(build=True)
    say("compiling both models …")
    comet, tok = compile_model(comet_dir, approx="comet")
    ref, _ = compile_model(orig_dir, approx="reference")
    # Batches of similar length (less padding); results are put back in text order.
    order = np.argsort([len(tok(t)["input_ids"]) for t in texts], kind="stable")
    n_priv = min(n_private, len(texts))
    priv_order = np.argsort([len(tok(t)["input_ids"]) for t in texts[:n_priv]], kind="stable")

    def run_all(fn: Callable[[ClientInput], np.ndarray], idx: np.ndarray) -> np.ndarray:
        batches = tokenize_batches(tok, [texts[i] for i in idx], max_length, batch)
        out = np.concatenate([fn(b) for b in batches])
        res = np.empty_like(out)
        res[idx] = out
        return res

    say("plaintext models …")
    orig_hf, comet_hf = load_hf(orig_dir)[0], load_comet_model(comet_dir)[0]
    orig_logits = run_all(lambda b: _hf_logits(orig_hf, b), order)
    comet_logits = run_all(lambda b: _hf_logits(comet_hf, b), order)
    say("plaintext approximation sets (float) …")
    floats = {
        "comet": run_all(lambda b: plain_forward(comet, b, None), order),
        "reference": run_all(lambda b: plain_forward(ref, b, None), order),
    }
    say("fixed-point emulation …")
    # The emulation also yields the expected number of local truncation failures of the
    # private run on the same texts (Σ |v|/2^64 over every truncated value).
    emul_backends = {
        name: PlainBackend(FRAC_BITS, track_risk=True) for name in ("comet", "reference")
    }
    emul = {
        name: run_all(lambda b, m=m, be=emul_backends[name]: plain_forward(m, b, backend=be),
                      order)
        for name, m in (("comet", comet), ("reference", ref))
    }  # fmt: skip
    private: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, model in (("comet", comet), ("reference", ref)):
        say(f"private inference, {name} set, {n_priv} texts ({provider}) …")
        t = time.perf_counter()

        def private_run(b: ClientInput, model: CompiledModel = model) -> np.ndarray:
            _, client = local_private_forward(model, b, provider=provider)
            assert client.output is not None
            return client.output

        private[name] = run_all(private_run, priv_order)
        seconds[name] = time.perf_counter() - t

    def acc(logits: np.ndarray, n: int | None = None) -> float:
        return float(np.mean(logits.argmax(-1) == y[: len(logits) if n is None else n]))

    def agree(a: np.ndarray, b: np.ndarray) -> float:
        n = min(len(a), len(b))
        return float(np.mean(a[:n].argmax(-1) == b[:n].argmax(-1)))

    rows = [
        {"row": "plaintext original", "set": "-", "n": len(y), "accuracy": acc(orig_logits)},
        {
            "row": "plaintext Comet form",
            "set": "comet",
            "n": len(y),
            "accuracy": acc(comet_logits),
            "agreement": agree(comet_logits, orig_logits),
            "agreement_with": "plaintext original",
        },
    ]
    for name, plain_ref, ref_name in (
        ("comet", comet_logits, "plaintext Comet form"),
        ("reference", orig_logits, "plaintext original"),
    ):
        rows.append(
            {
                "row": f"plaintext {name} set (float)",
                "set": name,
                "n": len(y),
                "accuracy": acc(floats[name]),
                "agreement": agree(floats[name], plain_ref),
                "agreement_with": ref_name,
                "max_abs_logit_err": float(np.abs(floats[name] - plain_ref).max()),
            }
        )
        rows.append(
            {
                "row": f"fixed-point emulation, {name} set",
                "set": name,
                "n": len(y),
                "accuracy": acc(emul[name]),
                "agreement": agree(emul[name], plain_ref),
                "agreement_with": ref_name,
                "max_abs_logit_err": float(np.abs(emul[name] - plain_ref).max()),
                "frac_bits": FRAC_BITS,
                "expected_truncation_failures_per_text": emul_backends[name].truncation_risk
                / len(y),
            }
        )
        p = private[name]
        rows.append(
            {
                "row": f"private inference, {name} set",
                "set": name,
                "n": len(p),
                "accuracy": acc(p),
                "agreement": agree(p, plain_ref),
                "agreement_with": ref_name,
                "max_abs_logit_err": float(np.abs(p - plain_ref[: len(p)]).max()),
                "max_abs_err_vs_emulation": float(np.abs(p - emul[name][: len(p)]).max()),
                # A local truncation failure shows as an error of order 2^(64-2f) or more.
                "texts_off_by_more_than_1": int(
                    (np.abs(p - emul[name][: len(p)]).max(-1) > 1).sum()
                ),
                "seconds": seconds[name],
                "accuracy_plaintext_same_texts": acc(plain_ref[: len(p)]),
            }
        )
    return {
        "meta": {
            "comet_model": str(comet_dir),
            "original_model": str(orig_dir),
            "provider": provider,
            "max_length": max_length,
            "test_texts": len(y),
        },
        "rows": rows,
    }
