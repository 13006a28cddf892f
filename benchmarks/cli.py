"""`comet-bench`: benchmarks of the two-party engine.

Results go to stdout (a table, or JSON with ``--json``); progress goes to stderr.
"""

from __future__ import annotations

import json
import math
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from benchmarks import ops as ops_mod


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
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--quick", is_flag=True, help="Small sizes (seconds, not minutes).")
@click.option(
    "--provider",
    type=click.Choice(ops_mod.PROVIDERS),
    default="he",
    show_default=True,
    help="Offline phase: BFV preprocessing, or the insecure test-only dealer.",
)
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


if __name__ == "__main__":
    main()
