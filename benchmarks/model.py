"""`comet-bench model`: a whole private forward pass, per layer and phase.

Both parties run in this process (two threads, in-process channel). The input is a
fixed English sample tokenized to exactly `seq_len` tokens (no padding). Offline
figures are the HE preprocessing of each layer (produced layer by layer); online the
protocol itself. Bytes are both parties' sent payload; rounds and seconds the max over
the two parties. Accuracy is against transformers' own forward of the checkpoint (for
a Comet-form model: the checkpoint with the exact Comet functions patched in).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.approx.backend import PlainBackend
from common.mpc.ring import FRAC_BITS, FixedPoint
from common.protocol.calibrate import compile_model
from common.protocol.program import ClientInput
from common.protocol.run import local_private_forward, plain_forward

SAMPLE = (
    "The new phone arrived two days late and the box was damaged, but honestly the "
    "screen is gorgeous, the battery lasts all day and support answered within minutes. "
)


def resolve_model(model: str) -> Path:
    """`default` is the bundled Comet-form model (built on first use), `original` its
    base, `bert-base` / `bert-tiny` the synthetic shapes (`benchmarks.shapes`); else a
    directory."""
    from benchmarks.shapes import SHAPES, shape_dir

    if model in SHAPES:
        return shape_dir(model)
    if model == "default":
        from comet_server.adapt.default import default_model_dir

        return default_model_dir(build=True)
    if model == "original":
        from comet_server.adapt.default import original_model_dir

        return original_model_dir(build=True)
    path = Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{model!r} is neither 'default', 'original', a shape nor a model directory"
        )
    return path


def sample_input(tokenizer: Any, seq_len: int, batch: int = 1) -> ClientInput:
    ids = tokenizer(SAMPLE * (seq_len // 8 + 2), truncation=True, max_length=seq_len)["input_ids"]
    if len(ids) < seq_len:
        raise ValueError("sample text too short")
    arr = np.tile(np.asarray(ids[:seq_len], dtype=np.int64), (batch, 1))
    return ClientInput(arr, np.ones_like(arr))


def plaintext_output(model_dir: Path, kind: str, inp: ClientInput) -> np.ndarray:
    """transformers' forward of the checkpoint (Comet form: exact Comet functions)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if kind == "comet":
        from comet_server.adapt.patch import load_comet_model

        hf = load_comet_model(model_dir)[0]
    else:
        from common.protocol.hf import load_hf

        hf = load_hf(model_dir)[0]
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(inp.token_ids), attention_mask=torch.tensor(inp.attention_mask)
        )
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).double().numpy()


def run_model(
    model: str,
    seq_len: int,
    approx: str = "auto",
    provider: str = "he",
    batch: int = 1,
    progress: Callable[[str], None] | None = None,
    exact: bool = True,
) -> dict[str, Any]:
    say = progress or (lambda m: None)
    fxp = FixedPoint(FRAC_BITS, exact_trunc=exact)
    model_dir = resolve_model(model)
    say(f"compiling {model_dir} ({approx}) …")
    t = time.perf_counter()
    compiled, tok = compile_model(model_dir, approx=approx)
    compile_s = time.perf_counter() - t
    inp = sample_input(tok, seq_len, batch)
    say(f"private forward: {seq_len} tokens, batch {batch}, provider {provider} …")
    t = time.perf_counter()
    server, client = local_private_forward(compiled, inp, provider=provider, fxp=fxp)
    wall = time.perf_counter() - t
    assert client.output is not None
    got = client.output
    want = plaintext_output(model_dir, compiled.card.approx.kind, inp)
    emul = plain_forward(compiled, inp, backend=PlainBackend(FRAC_BITS, exact=exact))
    layers: dict[str, dict[str, Any]] = {}
    for m in (server.meter, client.meter):
        for (phase, layer), c in m.breakdown(by=("phase", "layer")).items():
            if phase not in ("offline", "online"):
                continue
            row = layers.setdefault(layer or "-", {"layer": layer or "-"})
            row[f"{phase}_bytes"] = row.get(f"{phase}_bytes", 0) + c.sent_bytes
            row[f"{phase}_rounds"] = max(row.get(f"{phase}_rounds", 0), c.rounds)
            row[f"{phase}_s"] = max(row.get(f"{phase}_s", 0.0), c.seconds)
    # Online bytes sent per op kind (summed over layers), per party: where they go.
    ops: dict[str, dict[str, int]] = {}
    for who, m in (("server", server.meter), ("client", client.meter)):
        for (phase, op), c in m.breakdown(by=("phase", "op")).items():
            if phase == "online" and c.sent_bytes:
                ops.setdefault(op or "-", {"server": 0, "client": 0})[who] += c.sent_bytes
    # Offline cost per correlation kind: bytes up (client → server) and down, and each
    # party's seconds in it (wall time inside the kind's scope).
    kinds: dict[str, dict[str, Any]] = {}
    for who, m in (("server", server.meter), ("client", client.meter)):
        for (phase, op), c in m.breakdown(by=("phase", "op")).items():
            if phase != "offline" or not (c.sent_bytes or c.recv_bytes):
                continue
            row = kinds.setdefault(op or "-", {"kind": op or "-"})
            if who == "client":
                row["bytes_up"], row["bytes_down"] = c.sent_bytes, c.recv_bytes
            row[f"{who}_s"] = c.seconds
    flat_g, flat_w = got.ravel(), want.ravel()
    result: dict[str, Any] = {
        "meta": {
            "model": str(model_dir),
            "approx": compiled.card.approx.kind,
            "seq_len": seq_len,
            "batch": batch,
            "provider": provider,
            "truncation": "exact" if exact else "local",
            "compile_s": compile_s,
            "wall_s": wall,
        },
        # A row with nothing sent (a scope that only computed locally) says nothing.
        "layers": [
            r for r in layers.values() if r.get("offline_bytes", 0) or r.get("online_bytes", 0)
        ],
        "online_sent_by_op": ops,
        "offline_by_kind": sorted(kinds.values(), key=lambda r: -r.get("bytes_up", 0)),
        "totals": {
            phase: {
                "bytes": sum(
                    m.totals(phase=phase).sent_bytes for m in (server.meter, client.meter)
                ),
                "rounds": max(m.totals(phase=phase).rounds for m in (server.meter, client.meter)),
                "seconds": max(m.totals(phase=phase).seconds for m in (server.meter, client.meter)),
            }
            for phase in ("setup", "offline", "online")
        },
        "accuracy": {
            "max_abs_err": float(np.abs(got - want).max()),
            "cosine": float(flat_g @ flat_w / np.linalg.norm(flat_g) / np.linalg.norm(flat_w)),
            "max_abs_err_vs_emulation": float(np.abs(got - emul).max()),
        },
    }
    if compiled.card.arch.head == "classifier":
        result["accuracy"]["label_agreement"] = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    return result
