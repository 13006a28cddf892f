"""`comet-client prepare` / `comet-client prepared`: offline phases made ahead of time.

`prepare` runs offline phases now (they depend only on the model, the batch size and
the padded length, never on a text); both parties store their halves. A later
`comet-client --server … TEXT…` whose batch fits a stored set runs only its online
phase. `prepared` lists what this client holds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from comet_client.options import connection_options
from comet_client.session import CometError, Connection, Result, prepare
from common.protocol.prepared import LENGTH_BUCKETS, PreparedError, PreparedStore, comet_home
from common.protocol.session import InvalidInput

CONTEXT = {"help_option_names": ["-h", "--help"]}


def client_store() -> PreparedStore:
    """This client's store of prepared halves: `$COMET_HOME/prepared` (0700)."""
    return PreparedStore(comet_home() / "prepared")


def parse_buckets(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none", "off"):
        return ()
    try:
        out = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise click.BadParameter(f"--buckets: {text!r} is not a list of lengths") from None
    if any(b < 1 for b in out):
        raise click.BadParameter("--buckets: lengths must be positive")
    return out or LENGTH_BUCKETS


def _bytes(n: float) -> str:
    from comet_client.cli import _fmt_bytes

    return _fmt_bytes(n)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def batch_table(res: Result) -> Table:
    t = Table(title="batches (the cost table above is their sum)")
    for c in ("batch", "texts", "shape", "prepared set", "offline s", "online s"):
        t.add_column(c, justify="right" if c.endswith(" s") else "left")
    for i, b in enumerate(res.batches):
        t.add_row(
            str(i + 1), ", ".join(f"#{j + 1}" for j in sorted(b["texts"])),
            f"{b['batch']} × {b['seq_len']}", (b["prepared"] or "-")[:8] or "-",
            f"{b['cost']['offline']['seconds']:.2f}", f"{b['cost']['online']['seconds']:.2f}",
        )  # fmt: skip
    return t


@click.command("prepare", context_settings=CONTEXT)
@click.option("--server", "target", required=True, help="HOST:PORT of a comet-server.")
@click.option("--model", default="", help="Model name (default: the server's default).")
@click.option("--batch", type=click.IntRange(1), required=True, help="Texts per batch.")
@click.option("--length", type=click.IntRange(1), required=True, help="Padded tokens per text.")
@click.option("--count", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--output", type=click.Choice(["auto", "logits", "hidden"]), default="auto", show_default=True
)
@connection_options
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--hide-lengths", is_flag=True, help="Sets for `classify --hide-lengths`.")
def prepare_cmd(
    target: str,
    model: str,
    batch: int,
    length: int,
    count: int,
    output: str,
    tls_ca: Path | None,
    server_name: str | None,
    insecure: bool,
    allow_insecure_dealer: bool,
    timeout: float,
    quiet: bool,
    hide_lengths: bool,
) -> None:
    """Run COUNT offline phases for BATCH texts of LENGTH tokens now; both parties keep
    their halves, and a later inference of that shape (texts are padded to it) runs
    only its online phase. Each set is used once. Reveals only the shape."""
    err = Console(stderr=True)
    conn = Connection(target, tls_ca, insecure, server_name)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[layer]}"),
        TimeElapsedColumn(), console=err, disable=quiet,
    )  # fmt: skip
    tasks: dict[int, int] = {}

    def on_layer(i: int, phase: str, layer: str) -> None:
        if phase != "offline":
            return
        if i not in tasks:
            tasks[i] = progress.add_task(f"set {i + 1}/{count} offline", total=None, layer="")
        progress.update(tasks[i], advance=1, layer=layer)

    t0 = time.perf_counter()
    try:
        with progress:
            made = prepare(
                conn, client_store(), batch, length, count, model, output,
                allow_insecure_dealer, timeout, on_layer, hide_lengths,
            )  # fmt: skip
    except InvalidInput as e:
        err.print(f"comet-client: error: {e}", highlight=False, markup=False)
        sys.exit(2)
    except (CometError, PreparedError) as e:
        code = f" [{e.code}]" if getattr(e, "code", None) else ""
        err.print(f"comet-client: error{code}: {e}", highlight=False, markup=False)
        sys.exit(1)
    dt = time.perf_counter() - t0
    nb = sum(s.nbytes for s in made)
    click.echo(
        f"prepared {len(made)} set(s) of {batch} × {length} for model {made[0].model} in "
        f"{dt:.1f} s ({60 * len(made) / dt:.2f} sets/min); {_bytes(nb)} stored here"
    )


@click.command("prepared", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per set on stdout.")
def prepared_cmd(as_json: bool) -> None:
    """List the prepared sets this client holds (model, shape, count, bytes, age)."""
    import json

    sets = client_store().list()
    if as_json:
        for s in sets:
            d = json.loads(s.to_json())
            d.pop("party", None)
            click.echo(json.dumps(d))
        return
    groups: dict[tuple, list] = {}
    for s in sets:
        out = s.output + (" (hidden lengths)" if s.hide_lengths else "")
        groups.setdefault((s.server or s.owner, s.model, s.batch, s.seq_len, out), []).append(s)
    t = Table(title=f"prepared sets in {client_store().root}")
    for c in ("server", "model", "shape", "output", "count", "bytes", "age (oldest)"):
        t.add_column(c, justify="right" if c in ("count", "bytes") else "left")
    now = time.time()
    for (owner, model, b, L, out), ss in sorted(groups.items()):
        t.add_row(
            owner, model, f"{b} × {L}", out, str(len(ss)), _bytes(sum(s.nbytes for s in ss)),
            _age(now - min(s.created for s in ss)),
        )  # fmt: skip
    Console().print(t)
