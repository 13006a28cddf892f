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
from pathlib import Path
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


def offline_step(
    context: int, workers: int, say: Callable[[str], None], n: int = 1
) -> dict[str, Any]:
    """The HE offline phase of one generation call alone: `n` new positions after a
    cache of `context − n` (its plan depends on nothing else), both parties in this
    process, the server's HE jobs in `workers` processes. Per correlation kind: bytes
    up/down, ciphertexts, CPU seconds per party and of the workers, and the elements
    the plan asks for; the linear-mask MACs are split by site (the LM head vs the
    layers) from the plan. No online phase and no prefill run: a step's correlations
    are the same whatever the cache holds."""
    from benchmarks.offline import KINDS, UNIT, kind_rows, plan_elements
    from common.he.executor import ProcessExecutor
    from common.mpc.preprocessing import make_provider
    from common.mpc.ring import U64
    from common.mpc.roles import CLIENT, SERVER
    from common.protocol.decoder import KvCache
    from common.protocol.generate import DecoderSession
    from common.transport import run_local

    if not 1 <= n <= context:
        raise ValueError("need 1 ≤ n ≤ context")
    compiled, _, _ = _load(say)
    card = compiled.card
    a = card.arch
    pos0 = context - n

    def cache() -> KvCache | None:
        if pos0 == 0:
            return None
        z = [np.zeros((1, a.kv_heads, pos0, a.head_dim), U64) for _ in range(a.layers)]
        return KvCache(z, [x.copy() for x in z])

    executor = ProcessExecutor(workers) if workers > 1 else None

    def body(ch, role: int):
        prov = make_provider("he", executor=executor if role == SERVER else None)
        prov.setup(ch)
        sess = DecoderSession(ch, card, prov, compiled.weights if role == SERVER else None)
        sess.cache = cache()
        sess.offline(n)
        return ch.meter, sess.plan(n)[0]

    say(f"HE offline phase of one call: {n} position(s) after a cache of {pos0} …")
    t = time.perf_counter()
    try:
        (smeter, _), (cmeter, plan) = run_local(body, (SERVER,), (CLIENT,),
                                                     timeout=24 * 3600.0)  # fmt: skip
    finally:
        if executor is not None:
            executor.close()
    wall = time.perf_counter() - t

    elements = plan_elements(plan)
    rows = kind_rows(smeter, cmeter)
    kinds = []
    for k in KINDS:
        row = rows[k]
        if row.get("bytes_up") or row.get("bytes_down"):
            row.update(elements=elements[k], unit=UNIT[k])
            kinds.append(row)
    # Offline bytes outside any correlation kind (the plan digests both sides check).
    off = {"server": smeter.totals(phase="offline"), "client": cmeter.totals(phase="offline")}
    control = {
        "bytes_up": off["client"].sent_bytes - sum(r["bytes_up"] for r in kinds),
        "bytes_down": off["client"].recv_bytes - sum(r["bytes_down"] for r in kinds),
    }
    macs: dict[str, int] = {}
    for s in plan.linears:
        site = "lm head" if s.key.startswith("head") or s.key == "emb.word" else "layers"
        macs[site] = macs.get(site, 0) + s.rows * s.k * s.n
    setup = cmeter.totals(phase="setup")
    return {
        "context": context,
        "positions": n,
        "workers": workers,
        "kinds": kinds,
        "linear_macs_by_site": macs,
        "linear_sites": [(s.key, s.rows, s.k, s.n) for s in plan.linears],
        "control": control,
        "setup_bytes": setup.sent_bytes + setup.recv_bytes,
        "totals": {
            "bytes_up": off["client"].sent_bytes,
            "bytes_down": off["client"].recv_bytes,
            "server_cpu_s": round(off["server"].cpu_seconds, 2),
            "server_worker_cpu_s": round(off["server"].worker_cpu_seconds, 2),
            "client_cpu_s": round(off["client"].cpu_seconds, 2),
            "wall_s": round(wall, 1),
        },
    }


def prompt_of_length(tokenizer: Any, n: int) -> str:
    """A plain-English prompt that tokenizes to exactly `n` tokens."""
    from benchmarks.net import WORDS, texts_of_length

    text = " ".join(WORDS * (n // len(WORDS) + 2))
    ids = tokenizer(text)["input_ids"][:n]
    cut = tokenizer.decode(ids, skip_special_tokens=True)
    if len(tokenizer(cut)["input_ids"]) == n:
        return cut
    return texts_of_length(tokenizer, n, 1)[0]


def net(
    profile: str,
    prompt_tokens: int,
    tokens: int,
    provider: str,
    say: Callable[[str], None],
    model: str = "smollm2",
) -> dict[str, Any]:
    """`comet-server --model smollm2` (or `model` = NAME=DIR) and `comet-client
    generate` as two processes over a `comet-bench net` profile: a prompt of exactly
    `prompt_tokens` tokens, `tokens` greedy tokens; per call (prefill, each token)
    offline and online bytes, rounds, seconds, and the online lower bound
    max(bytes/bandwidth, rounds·RTT/2) of the measured path."""
    import json
    import subprocess

    from benchmarks.net import PROFILES, _env, lower_bound, serving, transfer_and_latency
    from comet_server.adapt.smollm2 import smollm2_model_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    name, _, path = model.partition("=")
    d = Path(path) if path else smollm2_model_dir(build=True)
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    prompt = prompt_of_length(tok, prompt_tokens)
    dealer = ["--allow-insecure-dealer"] if provider == "insecure_dealer" else []
    srv_args = ["--model", model, "--max-new-tokens", str(tokens), "--session-timeout",
                "7200", *dealer]  # fmt: skip
    with serving(PROFILES[profile], srv_args, say) as (prefix, target, netm):
        say(f"private generation: {prompt_tokens} prompt tokens, {tokens} new …")
        t = time.perf_counter()
        done = subprocess.run(
            [*prefix, "-m", "comet_client", "generate", "--server", target, "--model",
             name, "--json", "--quiet", "--timeout", "7200", "--max-new-tokens",
             str(tokens), *dealer, prompt],
            capture_output=True, text=True, env=_env(),
        )  # fmt: skip
        wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"comet-client generate failed: {done.stderr[-3000:]}")
    out = json.loads(done.stdout)
    cost = out["cost"]

    def call(kind: str, c: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {"kind": kind, "context": c["context"]}
        for phase in ("offline", "online"):
            p = c[phase]
            s, r = p["bytes_sent"], p["bytes_received"]
            row[phase] = {**p, "bytes": s + r}
        o = c["online"]
        s, r = o["bytes_sent"], o["bytes_received"]
        tr, lat = transfer_and_latency(s, r, o["rounds"], netm)
        row["online"].update(lower_bound_s=round(lower_bound(s, r, o["rounds"], netm), 3),
                             transfer_s=round(tr, 3), latency_s=round(lat, 3))  # fmt: skip
        return row

    calls = [call("prefill", cost["prefill"])] + [call("token", c) for c in cost["tokens"]]
    return {
        "bench": "generate-net",
        "profile": profile,
        "measured": netm,
        "provider": provider,
        "prompt": prompt,
        "prompt_tokens": out["prompt_tokens"],
        "token_ids": out["token_ids"],
        "text": out["text"],
        "card_digest": out["card_digest"],
        "setup": cost["setup"],
        "calls": calls,
        "per_token": cost["per_token"],
        "client_wall_s": round(wall, 1),
    }
