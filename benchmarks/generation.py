"""Private generation benchmarks on the bundled decoder (SmolLM2-135M-Instruct).

`comet-bench generate cost`: one prompt, N private greedy tokens, the cost of every
call (prefill, each token): online bytes/rounds/seconds and offline seconds.
`comet-bench generate fidelity`: greedy tokens of the compiled model (plain float, the
fixed-point emulation with --frac-bits, or the private run with --private) against
transformers' greedy `generate` over a list of prompts: identical tokens, first
divergence, max logit error (overall and per step).
The compiled card is the server's (`comet_server.registry.compile_decoder_cached`):
calibrated once (≈ 6 min), then read from the cache.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PROMPTS = [
    "The capital of France is",
    "My favourite way to spend a rainy afternoon is",
    "To make a good cup of tea, you should",
    "The three primary colours are",
    "Once upon a time, in a small village,",
    "The most important thing about learning to code is",
    "Water boils at a temperature of",
    "A healthy breakfast usually includes",
    "The best advice I ever received was",
    "In the year 2050, cities will",
]


def _load(say: Callable[[str], None]) -> tuple[Any, Any, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    from comet_server.adapt.smollm2 import smollm2_model_dir
    from comet_server.registry import compile_decoder_cached

    d = smollm2_model_dir(build=True)
    say(f"compiling {d} (the card from the cache if it is there) …")
    compiled, tok = compile_decoder_cached(d, "smollm2")
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    return compiled, tok, hf


def _hf_greedy(hf: Any, ids: list[int], n: int) -> tuple[list[int], list[np.ndarray]]:
    import torch

    with torch.no_grad():
        o = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return o.sequences[0, len(ids) :].tolist(), [x[0].numpy() for x in o.logits]


def cost(
    prompt: str, tokens: int, provider: str, say: Callable[[str], None], kv_cache: bool = True
) -> dict[str, Any]:
    """Private greedy generation of `tokens` tokens; per-call costs and agreement.
    `kv_cache=False`: every token recomputes the whole prefix (the baseline)."""
    from common.protocol.generate import local_generate

    compiled, tok, hf = _load(say)
    ids = tok(prompt)["input_ids"]
    ref, _ = _hf_greedy(hf, ids, tokens)
    say(f"private generation: {len(ids)} prompt tokens, {tokens} new, provider {provider}, "
        f"KV cache {'on' if kv_cache else 'off'} …")  # fmt: skip
    t = time.perf_counter()
    _, client = local_generate(compiled, ids, tokens, provider=provider, kv_cache=kv_cache)
    wall = time.perf_counter() - t
    calls = [
        {
            "kind": c.kind,
            "context": c.context,
            "online_bytes": c.online.sent_bytes + c.online.recv_bytes,
            "online_rounds": c.online.rounds,
            "online_s": c.online.seconds,
            "offline_bytes": c.offline.sent_bytes + c.offline.recv_bytes,
            "offline_s": c.offline.seconds,
        }
        for c in client.costs
    ]
    return {
        "prompt": prompt,
        "provider": provider,
        "kv_cache": kv_cache,
        "setup_bytes": client.setup.sent_bytes + client.setup.recv_bytes,
        "setup_s": client.setup.seconds,
        "token_ids": client.token_ids,
        "transformers_token_ids": ref,
        "identical": sum(a == b for a, b in zip(client.token_ids, ref, strict=False)),
        "wall_s": wall,
        "calls": calls,
    }


def fidelity(
    prompts: Sequence[str],
    tokens: int,
    frac_bits: int | None,
    say: Callable[[str], None],
    private: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Greedy tokens of the compiled model's emulation (or, `private`, of the private
    run: both parties in one process, insecure dealer) against transformers'.
    `on_row` gets each prompt's row as soon as it is done (long runs)."""
    from common.protocol.generate import local_generate, plain_generate

    compiled, tok, hf = _load(say)
    rows = []
    for p in prompts:
        ids = tok(p)["input_ids"]
        ref, ref_logits = _hf_greedy(hf, ids, tokens)
        t = time.perf_counter()
        if private:
            _, client = local_generate(compiled, ids, tokens)
            toks, logs = client.token_ids, client.logits
        else:
            toks, logs = plain_generate(compiled, ids, tokens, frac_bits=frac_bits)
        wall = time.perf_counter() - t
        first = next((i for i, (a, b) in enumerate(zip(toks, ref, strict=False)) if a != b), None)
        upto = len(toks) if first is None else first + 1
        errs = [float(np.abs(a - b).max()) for a, b in zip(logs, ref_logits, strict=False)]
        rows.append(
            {
                "prompt": p,
                "identical": sum(a == b for a, b in zip(toks, ref, strict=False)),
                "tokens": len(ref),
                "first_divergence": first,
                "max_logit_err": max(errs[:upto]),
                "logit_err_per_step": [round(e, 4) for e in errs[:upto]],
                "token_ids": toks,
                "transformers_token_ids": ref,
                "wall_s": round(wall, 1),
            }
        )
        say(f"{p!r}: {rows[-1]['identical']}/{tokens} identical")
        if on_row is not None:
            on_row(rows[-1])
    mode = "private" if private else ("float" if frac_bits is None else "emulation")
    return {"mode": mode, "frac_bits": frac_bits, "tokens": tokens, "prompts": rows}
