"""`comet-bench`: benchmarks of the two-party engine.

Results go to stdout (a table, or JSON with ``--json``); progress goes to stderr.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from benchmarks import ops as ops_mod


# Option blocks shared by several commands (one definition each).
def json_option(help: str = "Print JSON instead of a table.") -> Callable:
    return click.option("--json", "as_json", is_flag=True, help=help)


def provider_option(
    default: str = "he",
    help: str = "Offline phase: BFV preprocessing, or the insecure test-only dealer.",
) -> Callable:
    return click.option(
        "--provider",
        type=click.Choice(ops_mod.PROVIDERS),
        default=default,
        show_default=True,
        help=help,
    )


def truncation_option(help: str = "Exact truncation (the default) or SecureML local.") -> Callable:
    return click.option(
        "--truncation",
        type=click.Choice(["exact", "local"]),
        default="exact",
        show_default=True,
        help=help,
    )


def approx_option() -> Callable:
    return click.option(
        "--approx",
        type=click.Choice(["auto", "comet", "reference"]),
        default="auto",
        show_default=True,
        help="auto: comet for adapted checkpoints (comet.json), else reference.",
    )


def profile_option() -> Callable:
    return click.option(
        "--profile",
        type=click.Choice(["none", "lan", "wan"]),
        default="none",
        show_default=True,
        help="none: loopback; lan: 3 Gbit/s, 0.8 ms RTT; wan: 200 Mbit/s, 40 ms RTT (root).",
    )


def out_option() -> Callable:
    return click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also append the JSON lines to this file.",
    )


def _append_jsonl(out: Path | None, rows: list[dict[str, Any]]) -> list[str]:
    lines = [json.dumps(_json_safe(r), ensure_ascii=False) for r in rows]
    if out is not None:
        with out.open("a") as f:
            f.write("\n".join(lines) + "\n")
    return lines


def shape_options(seq_len: int = 32) -> Callable:
    def deco(f: Callable) -> Callable:
        f = click.option("--batch", type=click.IntRange(1, 64), default=1, show_default=True)(f)
        return click.option(
            "--seq-len", type=click.IntRange(2, 512), default=seq_len, show_default=True
        )(f)

    return deco


@click.group()
def main() -> None:
    """Benchmarks of the Comet two-party inference engine."""


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


def _table(result: dict[str, Any]) -> Table:
    m = result["meta"]
    table = Table(
        title=f"comet-bench ops ({m['mode']}, provider {m['provider']})",
        caption="bytes: payload sent by both parties; times: max over the two parties, "
        "both in one process (threads, shared GIL)",
    )
    table.add_column("op")
    table.add_column("shape")
    table.add_column("provider")
    for name in ("offline bytes", "online bytes", "rounds", "offline s", "online s"):
        table.add_column(name, justify="right")
    table.add_column("max abs err", justify="right")
    for r in result["ops"]:
        table.add_row(
            r["op"],
            r["shape"],
            r["provider"],
            f"{r['offline_bytes']:,}",
            f"{r['online_bytes']:,}",
            str(r["rounds"]),
            f"{r['offline_s']:.3f}",
            f"{r['online_s']:.4f}",
            f"{r['max_abs_err']:.2e}",
        )
    return table


@main.command("ops")
@json_option()
@click.option("--quick", is_flag=True, help="Small sizes (seconds, not minutes).")
@provider_option()
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(ops_mod.OPS),
    help="Run only this op (repeatable).",
)
@click.option("--seed", type=int, default=ops_mod.SEED, show_default=True, help="Input seed.")
def ops_cmd(as_json: bool, quick: bool, provider: str, only: tuple[str, ...], seed: int) -> None:
    """Cost of each engine op: offline/online bytes, rounds, time and error."""
    err = Console(stderr=True)
    mode = "quick" if quick else "full"
    err.print(f"comet-bench ops: {mode} sizes, provider {provider}", highlight=False)
    result = ops_mod.run_ops(
        quick,
        provider,
        seed=seed,
        only=only or None,
        progress=lambda msg: err.print(msg, highlight=False, markup=False),
    )
    if as_json:
        click.echo(json.dumps(_json_safe(result), indent=2, ensure_ascii=False))
    else:
        out = Console()
        if not out.is_terminal:  # a file or a pipe: never fold or cut the numbers
            out = Console(width=200)
        out.print(_table(result))


def _approx_table(result: dict[str, Any]) -> Table:
    m = result["meta"]
    table = Table(
        title=f"comet-bench approx ({m['mode']}, provider {m['provider']})",
        caption="bytes: payload sent by both parties; online = the function alone",
    )
    for name in ("set", "fn", "shape"):
        table.add_column(name)
    for name in ("online bytes", "offline bytes", "rounds", "online s", "max abs err"):
        table.add_column(name, justify="right")
    table.add_column("max rel err", justify="right")
    for r in result["approx"]:
        table.add_row(
            r["set"],
            r["fn"],
            r["shape"],
            f"{r['online_bytes']:,}",
            f"{r['offline_bytes']:,}",
            str(r["rounds"]),
            f"{r['online_s']:.3f}",
            f"{r['max_abs_err']:.2e}",
            f"{r['max_rel_err']:.2e}",
        )
    return table


def _emit(result: dict[str, Any], as_json: bool, table: Table) -> None:
    if as_json:
        click.echo(json.dumps(_json_safe(result), indent=2, ensure_ascii=False))
    else:
        out = Console()
        if not out.is_terminal:  # a file or a pipe: never fold or cut the numbers
            out = Console(width=200)
        out.print(table)


@main.command("approx")
@json_option()
@click.option("--quick", is_flag=True, help="Small shapes (seconds, not minutes).")
@provider_option()
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["rsqrt", "gelu", "softmax", "layernorm"]),
    help="Run only this function (repeatable).",
)
def approx_cmd(as_json: bool, quick: bool, provider: str, only: tuple[str, ...]) -> None:
    """Each non-linear function, Comet vs reference set: bytes, rounds, error."""
    from benchmarks import approx as approx_mod

    err = Console(stderr=True)
    result = approx_mod.run_approx(
        quick, provider, only or None, lambda msg: err.print(msg, highlight=False, markup=False)
    )
    _emit(result, as_json, _approx_table(result))


def _model_table(result: dict[str, Any]) -> Table:
    m, acc = result["meta"], result["accuracy"]
    caption = (
        f"max abs err {acc['max_abs_err']:.3g}, cosine {acc['cosine']:.5f}"
        + (f", label agreement {acc['label_agreement']:.2f}" if "label_agreement" in acc else "")
        + f"; wall {m['wall_s']:.1f} s"
    )
    table = Table(
        title=f"comet-bench model {m['model']} ({m['approx']}, {m['seq_len']} tokens, "
        f"batch {m['batch']}, provider {m['provider']})",
        caption=caption,
    )
    table.add_column("layer")
    for name in ("offline bytes", "offline s", "online bytes", "online rounds", "online s"):
        table.add_column(name, justify="right")
    rows = result["layers"] + [
        {
            "layer": "total",
            "offline_bytes": result["totals"]["offline"]["bytes"],
            "offline_s": result["totals"]["offline"]["seconds"],
            "online_bytes": result["totals"]["online"]["bytes"],
            "online_rounds": result["totals"]["online"]["rounds"],
            "online_s": result["totals"]["online"]["seconds"],
        }
    ]
    for r in rows:
        table.add_row(
            r["layer"],
            f"{r.get('offline_bytes', 0):,}",
            f"{r.get('offline_s', 0.0):.2f}",
            f"{r.get('online_bytes', 0):,}",
            str(r.get("online_rounds", 0)),
            f"{r.get('online_s', 0.0):.3f}",
        )
    kinds = result.get("offline_by_kind", [])
    if kinds:
        table.add_section()
    for k in kinds:  # offline bytes both ways per correlation kind (JSON: up/down apart)
        table.add_row(
            f"offline: {k['kind']}",
            f"{k.get('bytes_up', 0) + k.get('bytes_down', 0):,}",
            f"{max(k.get('server_s', 0.0), k.get('client_s', 0.0)):.2f}",
            "",
            "",
            "",
        )
    return table


@main.command("model")
@json_option()
@click.option(
    "--model",
    default="default",
    show_default=True,
    help="'default' (bundled Comet-form model), 'original' (its unadapted base), "
    "'bert-base' / 'bert-tiny' (synthetic shapes) or a checkpoint directory.",
)
@shape_options()
@approx_option()
@provider_option()
@truncation_option()
def model_cmd(
    as_json: bool,
    model: str,
    seq_len: int,
    batch: int,
    approx: str,
    provider: str,
    truncation: str,
) -> None:
    """Private forward of a whole model: per-layer bytes, rounds, seconds; error."""
    from benchmarks import model as model_mod

    err = Console(stderr=True)
    result = model_mod.run_model(
        model,
        seq_len,
        approx,
        provider,
        batch,
        lambda msg: err.print(msg, highlight=False, markup=False),
        exact=truncation == "exact",
    )
    _emit(result, as_json, _model_table(result))


def _offline_table(result: dict[str, Any]) -> Table:
    m, t = result["meta"], result["totals"]
    table = Table(
        title=f"comet-bench offline {m['model']} ({m['approx']}, {m['batch']}×{m['seq_len']}, "
        f"{m['workers']} HE worker(s))",
        caption="CPU: each party's protocol thread, + the server's worker processes; "
        "floor: HE-based OLE in Z_2^64 (DESIGN.md)",
    )
    table.add_column("kind")
    for name in ("MB up", "MB down", "cts up", "cts down", "server CPU s", "workers CPU s",
                 "client CPU s", "elements", "B/element", "floor B/el."):  # fmt: skip
        table.add_column(name, justify="right")
    for r in result["kinds"]:
        bpe, floor = r.get("bytes_per_element"), r.get("floor_bytes_per_element")
        table.add_row(
            r["kind"],
            f"{r.get('bytes_up', 0) / 1e6:,.1f}",
            f"{r.get('bytes_down', 0) / 1e6:,.1f}",
            f"{r.get('ciphertexts_up', 0):,}",
            f"{r.get('ciphertexts_down', 0):,}",
            f"{r.get('server_cpu_s', 0.0):.1f}",
            f"{r.get('server_worker_cpu_s', 0.0):.1f}",
            f"{r.get('client_cpu_s', 0.0):.1f}",
            f"{r['elements']:,} {r['unit']}s",
            "" if bpe is None else f"{bpe:.3g}",
            "" if floor is None else f"{floor:g}",
        )
    table.add_section()
    table.add_row(
        "total", f"{t['bytes_up'] / 1e6:,.1f}", f"{t['bytes_down'] / 1e6:,.1f}", "", "",
        f"{t['server_cpu_s']:.1f}", f"{t['server_worker_cpu_s']:.1f}", f"{t['client_cpu_s']:.1f}",
        f"wall {t['offline_wall_s']:.1f} s", "", "",
    )  # fmt: skip
    return table


@main.command("offline")
@json_option()
@click.option(
    "--model",
    default="default",
    show_default=True,
    help="'default', 'original', 'bert-base' / 'bert-base-1l' / 'bert-tiny' (synthetic "
    "shapes) or a checkpoint directory.",
)
@shape_options()
@approx_option()
@click.option(
    "--he-workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server HE worker processes (1: in the server's own thread).",
)
def offline_cmd(
    as_json: bool, model: str, seq_len: int, batch: int, approx: str, he_workers: int
) -> None:
    """HE offline phase per correlation kind: bytes, ciphertexts, CPU per party and process."""
    from benchmarks import offline as offline_mod

    err = Console(stderr=True)
    result = offline_mod.run_offline(
        model, seq_len, batch, approx, he_workers,
        lambda msg: err.print(msg, highlight=False, markup=False),
    )  # fmt: skip
    _emit(result, as_json, _offline_table(result))


def _sites_table(result: dict[str, Any]) -> Table:
    m = result["meta"]
    table = Table(
        title=f"comet-bench sites {m['model']} ({m['approx']})",
        caption="plan range = observed range widened by the calibration margin; "
        "CrypTen: exp-based start + 3 Newton steps on the same range (float)",
    )
    table.add_column("site")
    for name in ("observed range", "plan ratio", "deg", "steps", "rounds", "products", "openings"):
        table.add_column(name, justify="right")
    for name in ("max rel err", "CrypTen rounds", "CrypTen max rel err"):
        table.add_column(name, justify="right")
    for r in result["sites"]:
        obs = r["observed"]
        table.add_row(
            r["site"],
            f"{obs[0]:.3g} … {obs[1]:.3g}" if obs else "analytic",
            f"{r['ratio']:.3g}",
            str(r["degree"]),
            str(r["steps"]),
            str(r["rounds"]),
            str(r["products"]),
            str(r["openings"]),
            f"{r['max_rel_err']:.1e}",
            str(r["crypten_rounds"]),
            f"{r['crypten_max_rel_err']:.1e}",
        )
    return table


@main.command("sites")
@json_option()
@click.option("--model", default="default", show_default=True, help="As for `model`.")
@approx_option()
def sites_cmd(as_json: bool, model: str, approx: str) -> None:
    """Per-site rsqrt plans (range, iterations, rounds) vs CrypTen's start."""
    from benchmarks import sites as sites_mod

    err = Console(stderr=True)
    result = sites_mod.run_sites(
        model, approx, lambda msg: err.print(msg, highlight=False, markup=False)
    )
    _emit(result, as_json, _sites_table(result))


def _risk_table(result: dict[str, Any]) -> Table:
    m = result["meta"]
    total, other = result["total"], result["other"]
    table = Table(
        title=f"comet-bench risk {m['model']} ({m['approx']}, {m['seq_len']} tokens, "
        f"f = {m['frac_bits']})",
        caption=f"expected failed truncations per inference, {m['truncation']} truncation: "
        f"{total:.3g} ({result['truncations']:,} truncated values, the largest "
        f"2^{result['max_log2_abs'] or 0:.1f}); "
        f"{other['truncation']} truncation on the same values: {other['total']:.3g}",
    )
    table.add_column("site")
    table.add_column(f"{m['truncation']}", justify="right")
    table.add_column("share", justify="right")
    table.add_column(f"{other['truncation']}", justify="right")
    for site, r in result["sites"].items():
        o = other["sites"].get(site, 0.0)
        table.add_row(site, f"{r:.3g}", f"{100 * r / total:.1f}%" if total else "-", f"{o:.3g}")
    table.add_row("total", f"{total:.3g}", "100%" if total else "-", f"{other['total']:.3g}")
    return table


@main.command("risk")
@click.option(
    "--model",
    default="default",
    show_default=True,
    help="'default', 'original', 'bert-base' / 'bert-tiny' (synthetic shapes), 'smollm2' "
    "(a decoder, where this build supports it) or a checkpoint directory.",
)
@click.option("--seq-len", type=click.IntRange(2, 512), default=64, show_default=True)
@approx_option()
@truncation_option("The policy whose risk is the total (the other is shown beside it).")
@json_option('Print {"total", "sites", "other", …} as JSON.')
def risk_cmd(model: str, seq_len: int, approx: str, truncation: str, as_json: bool) -> None:
    """Expected catastrophic failures (failed truncations) per inference, per site."""
    from benchmarks import risk as risk_mod

    err = Console(stderr=True)
    try:
        result = risk_mod.run_risk(
            model,
            seq_len,
            approx,
            progress=lambda msg: err.print(msg, highlight=False, markup=False),
            exact=truncation == "exact",
        )
    except (risk_mod.ModelUnavailable, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    _emit(result, as_json, _risk_table(result))


@main.command("accuracy")
@json_option()
@click.option("--n-private", type=click.IntRange(1, 10_000), default=200, show_default=True)
@provider_option(
    "insecure_dealer",
    "Offline phase of the private runs (the online result does not depend on it).",
)
def accuracy_cmd(as_json: bool, n_private: int, provider: str) -> None:
    """Accuracy of the default model: plaintext, emulation and private, both sets."""
    import warnings

    from benchmarks import accuracy as acc_mod
    from common.mpc.preprocessing import InsecureDealerWarning

    err = Console(stderr=True)
    with warnings.catch_warnings():
        if provider == "insecure_dealer":
            err.print("note: offline phase by the insecure test dealer (accuracy study only)")
            warnings.simplefilter("ignore", InsecureDealerWarning)
        result = acc_mod.run_accuracy(
            n_private, provider, progress=lambda m: err.print(m, highlight=False, markup=False)
        )
    table = Table(title="comet-bench accuracy (tweets, held-out test split)")
    for name in ("row", "n", "accuracy", "agreement", "with"):
        table.add_column(name, justify="left" if name in ("row", "with") else "right")
    for r in result["rows"]:
        table.add_row(
            r["row"],
            str(r["n"]),
            f"{r['accuracy']:.4f}",
            f"{r['agreement']:.4f}" if "agreement" in r else "",
            r.get("agreement_with", ""),
        )
    _emit(result, as_json, table)


@main.command("net")
@profile_option()
@click.option(
    "--model",
    default="default",
    show_default=True,
    help="default | original | bert-tiny | bert-base | bert-base-1l (one layer) | a checkpoint "
    "directory.",
)
@shape_options()
@click.option(
    "--approx",
    type=click.Choice(["comet", "reference", "both"]),
    default="comet",
    show_default=True,
    help="both: the two sets in the same run, with their ratio.",
)
@provider_option(help="Offline phase (insecure_dealer: online figures only, no security).")
@json_option("JSON lines on stdout, one per row.")
@out_option()
def net_cmd(
    profile: str,
    model: str,
    seq_len: int,
    batch: int,
    approx: str,
    provider: str,
    as_json: bool,
    out: Path | None,
) -> None:
    """comet-server and comet-client as two processes over a (shaped) network."""
    from benchmarks.net import run_net
    from benchmarks.netshape import NetUnavailable

    err = Console(stderr=True)
    try:
        rows = run_net(model, profile, seq_len, batch, approx, provider,
                       say=lambda m: err.print(m, highlight=False, markup=False))  # fmt: skip
    except NetUnavailable as e:
        raise click.ClickException(f"cannot shape the network here: {e}") from None
    lines = _append_jsonl(out, rows)
    if as_json:
        click.echo("\n".join(lines))
        return
    table = Table(title=f"comet-bench net: {model}, {seq_len} tokens × {batch}, "
                        f"profile {profile}, provider {provider}")  # fmt: skip
    cols = ("approx", "phase", "MB", "rounds", "seconds", "lower bound s", "estimate s", "max err",
            "cosine")  # fmt: skip
    for c in cols:
        table.add_column(c, justify="left" if c in ("approx", "phase") else "right")
    for r in rows:
        for phase in ("offline", "online"):
            p = r[phase]
            if "ratio" in r:
                table.add_row("ref/comet", phase, f"×{p['bytes']}", f"×{p['rounds']}",
                              f"×{p['seconds']}", "", "", "", "")  # fmt: skip
                continue
            table.add_row(r["approx"], phase, f"{p['bytes'] / 1e6:.1f}", str(p["rounds"]),
                          f"{p['seconds']:.2f}", f"{p['lower_bound_s']:.2f}",
                          f"{p.get('estimate_s', 0):.2f}",
                          f"{r['accuracy']['max_abs_err']:.2e}",
                          f"{r['accuracy']['cosine']:.5f}")  # fmt: skip
    m = rows[0]["measured"]
    _emit({}, False, table)
    err.print(f"network measured: RTT {m['rtt_ms']} ms, {m['throughput_mbit']} Mbit/s")


@main.command("report")
@click.argument("report", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG to write (default: REPORT with the suffix .png).",
)
def report_cmd(report: Path, out: Path | None) -> None:
    """Per-layer bar chart (PNG) of bytes and seconds from a cost report.

    REPORT is the JSON of `comet-client --save-report` or of `comet-bench model --json`.
    """
    from benchmarks.report import plot_file

    try:
        png = plot_file(report, out)
    except (ValueError, KeyError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(str(png))


@main.command("plot-net")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True)  # fmt: skip
def plot_net_cmd(files: tuple[Path, ...], out_dir: Path) -> None:
    """PNG charts from `comet-bench net --out` JSON-lines FILES."""
    from benchmarks.report import load_jsonl, plot_net

    try:
        for png in plot_net(load_jsonl(list(files)), out_dir):
            click.echo(str(png))
    except (ValueError, KeyError) as e:
        raise click.ClickException(str(e)) from None


@main.command("net-table")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
def net_table_cmd(files: tuple[Path, ...]) -> None:
    """The markdown table of docs/BENCHMARKS.md from `comet-bench net --out` FILES."""
    from benchmarks.report import load_jsonl, net_table

    try:
        click.echo(net_table(load_jsonl(list(files), ratios=True)))
    except (ValueError, KeyError) as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    main()


@main.command("rng")
@json_option()
@click.option("--words", type=click.IntRange(1024, 1 << 27), default=1 << 23, show_default=True)
def rng_cmd(as_json: bool, words: int) -> None:
    """Cryptographic generator (ChaCha20) throughput against numpy's PCG64."""
    from benchmarks import rng as rng_mod

    result = rng_mod.measure(words)
    table = Table(title="random generator, one core")
    for col in ("generator", "seconds", "GB/s"):
        table.add_column(col)
    for name in ("secure_chacha20", "pcg64"):
        r = result[name]
        table.add_row(name, f"{r['seconds']:.4f}", f"{r['gb_per_s']:.2f}")
    _emit(result, as_json, table)


@main.group("generate")
def generate_group() -> None:
    """Private generation on the bundled decoder (SmolLM2-135M-Instruct)."""


@generate_group.command("cost")
@click.option("--prompt", default="The capital of France is", show_default=True)
@click.option("--tokens", type=click.IntRange(1, 64), default=4, show_default=True)
@provider_option("insecure_dealer", "Offline phase (he: the real HE phase, per step).")
@click.option(
    "--no-kv-cache", is_flag=True, help="Baseline: every token recomputes the whole prefix."
)
def generate_cost_cmd(prompt: str, tokens: int, provider: str, no_kv_cache: bool) -> None:
    """Per-call cost of private greedy generation (JSON)."""
    from benchmarks import generation

    err = Console(stderr=True)
    say = lambda m: err.print(m, markup=False)  # noqa: E731
    res = generation.cost(prompt, tokens, provider, say, kv_cache=not no_kv_cache)
    click.echo(json.dumps(_json_safe(res), indent=2))


@generate_group.command("fidelity")
@click.option("--tokens", type=click.IntRange(1, 64), default=16, show_default=True)
@click.option(
    "--frac-bits",
    type=click.IntRange(8, 30),
    default=None,
    help="Emulate fixed point with this many fractional bits (default: float).",
)
@click.option(
    "--private", is_flag=True, help="The private run (in process, insecure dealer; slow)."
)
@click.option(
    "--prompts",
    "n_prompts",
    type=click.IntRange(1),
    default=None,
    help="Only the first N prompts (default: all 10).",
)
@click.option(
    "--jsonl",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Append each prompt's row to this file as soon as it is done.",
)
def generate_fidelity_cmd(
    tokens: int, frac_bits: int | None, private: bool, n_prompts: int | None, jsonl: Path | None
) -> None:
    """Greedy tokens of the compiled model vs transformers' over 10 prompts (JSON)."""
    from benchmarks import generation

    err = Console(stderr=True)

    def on_row(row: dict) -> None:
        if jsonl is not None:
            with jsonl.open("a") as f:
                f.write(json.dumps(_json_safe(row)) + "\n")

    res = generation.fidelity(
        generation.PROMPTS[:n_prompts], tokens, frac_bits, lambda m: err.print(m, markup=False),
        private=private, on_row=on_row,
    )  # fmt: skip
    click.echo(json.dumps(_json_safe(res), indent=2))


@generate_group.command("offline")
@click.option(
    "--context",
    type=click.IntRange(1, 2048),
    default=37,
    show_default=True,
    help="Cache length after the call (a token step after a 36-position prefix by default).",
)
@click.option(
    "--positions", type=click.IntRange(1), default=1, show_default=True,
    help="New positions in the call (1: a token step; the prompt length: a prefill).",
)  # fmt: skip
@click.option("--he-workers", type=click.IntRange(1, 64), default=2, show_default=True)
@out_option()
def generate_offline_cmd(context: int, positions: int, he_workers: int, out: Path | None) -> None:
    """The HE offline phase of one generation call, per correlation kind (JSON)."""
    from benchmarks import generation

    err = Console(stderr=True)
    res = generation.offline_step(context, he_workers, lambda m: err.print(m, markup=False),
                                  n=positions)  # fmt: skip
    _append_jsonl(out, [res])
    click.echo(json.dumps(_json_safe(res), indent=2))


@generate_group.command("net")
@profile_option()
@click.option("--prompt-tokens", type=click.IntRange(1, 512), default=32, show_default=True)
@click.option("--tokens", type=click.IntRange(1, 64), default=3, show_default=True)
@provider_option("insecure_dealer", "Offline phase (he: the real HE phase, per step).")
@out_option()
def generate_net_cmd(
    profile: str, prompt_tokens: int, tokens: int, provider: str, out: Path | None
) -> None:
    """comet-server --model smollm2 and comet-client generate as two processes over a
    (shaped) network: per-call cost and the online lower bound (JSON)."""
    from benchmarks import generation
    from benchmarks.netshape import NetUnavailable

    err = Console(stderr=True)
    try:
        res = generation.net(profile, prompt_tokens, tokens, provider,
                             lambda m: err.print(m, highlight=False, markup=False))  # fmt: skip
    except NetUnavailable as e:
        raise click.ClickException(f"cannot shape the network here: {e}") from None
    _append_jsonl(out, [res])
    click.echo(json.dumps(_json_safe(res), indent=2))
