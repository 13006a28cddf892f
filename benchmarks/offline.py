"""`comet-bench offline`: the HE offline phase of a whole model, per correlation kind.

Both parties run in this process as two threads over an in-process channel (as in
`comet-bench model`); the server's HE jobs run in `workers` worker processes (1: in its
own thread, as `comet-server --he-workers 1`). Per correlation kind — linear masks,
Beaver triples, square pairs, mask-group products, matrix triples — the table gives:

* bytes and ciphertexts up (client → server) and down, summed over layers;
* CPU seconds of each party's protocol thread (`time.thread_time`, so right although
  both parties share one process) and of the server's worker processes;
* the Galois keys of the linear masks' merged returns, sent once per session, apart
  (`totals.galois_key_bytes`);
* the elements produced (element-wise products; linear and matrix MACs) and the bytes
  per element, beside the byte floor of HE-based OLE in Z_2^64 from the analysis in
  DESIGN.md (91 B per element-wise product with 3 CRT primes, 0.08 B per linear MAC at
  BERT-base dimensions; none is stated for matrix triples).

Wall seconds are the offline phase's, from the client's clock; on a loaded machine
they mean little, CPU seconds much more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from benchmarks.model import resolve_model, sample_input
from common.he.executor import ProcessExecutor
from common.mpc.correlations import Plan, SegmentedRecorder
from common.mpc.engine import Mpc
from common.mpc.preprocessing import make_provider
from common.mpc.ring import FixedPoint
from common.mpc.roles import CLIENT, SERVER
from common.protocol.calibrate import compile_model
from common.protocol.program import encoder_forward
from common.protocol.run import private_forward
from common.transport import Meter, NullChannel, run_local

# The kinds in the order the provider produces them (`HeProvider.generate` scopes).
KINDS = ("linear-masks", "triples", "squares", "wraps", "mask-groups", "matmul-triples")
# Byte floors per element from DESIGN.md ("The offline phase at BERT-base size").
FLOOR_B = {"triples": 91.0, "squares": 91.0, "mask-groups": 91.0, "linear-masks": 0.08}
UNIT = {
    "linear-masks": "MAC",
    "triples": "product",
    "squares": "product",
    "wraps": "truncation",
    "mask-groups": "product",
    "matmul-triples": "MAC",
}


def plan_elements(plan: Plan) -> dict[str, int]:
    """Elements each kind produces for `plan`: element-wise products, or the MACs of
    the HE matrix products (a matrix triple runs two cross products of m·k·n MACs)."""
    groups = 0
    for g in plan.groups:
        for i, j in g.pairs:
            shp = _broadcast(g.shapes[i], g.shapes[j])
            groups += math.prod(shp)
    matmul = 0
    for shape in plan.matmuls:
        *batch, m, k, n = shape
        matmul += 2 * math.prod(batch) * m * k * n
    return {
        "linear-masks": sum(s.rows * s.k * s.n for s in plan.linears),
        "triples": plan.triples,
        "squares": plan.squares,
        "wraps": plan.wraps,
        "mask-groups": groups,
        "matmul-triples": matmul,
    }


def kind_rows(server: Meter, client: Meter) -> dict[str, dict[str, Any]]:
    """Per correlation kind (`KINDS`), from both parties' meters: the offline bytes and
    ciphertexts up/down (client side) and each party's CPU, worker CPU and wall seconds
    under that kind's label."""
    rows: dict[str, dict[str, Any]] = {k: {"kind": k} for k in KINDS}
    for who, meter in (("server", server), ("client", client)):
        for (phase, op), c in meter.breakdown(by=("phase", "op")).items():
            if phase != "offline" or op not in rows:
                continue
            row = rows[op]
            if who == "client":
                row.update(bytes_up=c.sent_bytes, bytes_down=c.recv_bytes,
                           ciphertexts_up=c.sent_ciphertexts,
                           ciphertexts_down=c.recv_ciphertexts)  # fmt: skip
            row[f"{who}_cpu_s"] = c.cpu_seconds
            row[f"{who}_worker_cpu_s"] = c.worker_cpu_seconds
            row[f"{who}_wall_s"] = c.seconds
    return rows


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    return tuple(max(x, y) for x, y in zip(a, b, strict=True))


def run_offline(
    model: str,
    seq_len: int,
    batch: int = 1,
    approx: str = "auto",
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one private forward with the HE offline phase; return the per-kind report.

    Cost: the model's whole offline phase (minutes for the default model) plus its
    online phase (seconds).
    """
    say = progress or (lambda m: None)
    model_dir = resolve_model(model)
    say(f"compiling {model_dir} ({approx}) …")
    compiled, tok = compile_model(model_dir, approx=approx)
    card = compiled.card
    inp = sample_input(tok, seq_len, batch)
    shape = tuple(inp.token_ids.shape)
    keep = inp.attention_mask
    fxp = FixedPoint()

    # The plan (public: shapes only), for the elements per kind.
    null = NullChannel(SERVER)
    rec = SegmentedRecorder(lambda: null.meter.current.layer or "")
    encoder_forward(_planning_backend(null, rec, fxp), card, SERVER, shape, keep,
                    compiled.weights, None, scope=lambda **kw: null.scope(**kw))  # fmt: skip
    elements = {k: 0 for k in KINDS}
    for seg in rec.recorders.values():
        for k, v in plan_elements(seg.plan).items():
            elements[k] += v

    executor = ProcessExecutor(workers) if workers > 1 else None
    say(f"private forward: {seq_len} tokens, batch {batch}, HE, {workers} worker(s) …")

    def body(ch, role: int):
        if role == SERVER:
            prov = make_provider("he", executor=executor)
            return private_forward(ch, card, shape, keep, compiled.weights, None, prov, fxp)
        return private_forward(ch, card, shape, keep, None, inp, make_provider("he"), fxp)

    t = time.perf_counter()
    try:
        server, client = run_local(body, (SERVER,), (CLIENT,), timeout=24 * 3600.0)
    finally:
        if executor is not None:
            executor.close()
    wall = time.perf_counter() - t

    rows = kind_rows(server.meter, client.meter)
    out_rows = []
    for k in KINDS:
        row = rows[k]
        if not row.get("bytes_up") and not row.get("bytes_down"):
            continue
        n = elements[k]
        total = row.get("bytes_up", 0) + row.get("bytes_down", 0)
        row.update(elements=n, unit=UNIT[k], bytes_per_element=total / n if n else None,
                   floor_bytes_per_element=FLOOR_B.get(k))  # fmt: skip
        out_rows.append(row)
    off = {"server": server.meter.totals(phase="offline"),
           "client": client.meter.totals(phase="offline")}  # fmt: skip
    # the linear masks' Galois keys (`HeProvider._galois_keys`), once per session
    keys = client.meter.breakdown(by=("phase", "op")).get(("offline", "galois-keys"))
    return {
        "meta": {
            "model": str(model_dir),
            "approx": card.approx.kind,
            "seq_len": seq_len,
            "batch": batch,
            "workers": workers,
        },
        "kinds": out_rows,
        "totals": {
            "bytes_up": off["client"].sent_bytes,
            "bytes_down": off["client"].recv_bytes,
            "server_cpu_s": off["server"].cpu_seconds,
            "server_worker_cpu_s": off["server"].worker_cpu_seconds,
            "client_cpu_s": off["client"].cpu_seconds,
            "offline_wall_s": off["client"].seconds,
            "galois_key_bytes": keys.sent_bytes if keys is not None else 0,
            "run_wall_s": wall,
        },
    }


def _planning_backend(null: NullChannel, rec: SegmentedRecorder, fxp: FixedPoint):
    from common.approx.backend import SharedBackend

    return SharedBackend(Mpc(null, rec, fxp))
