"""`comet-client`: private inference of TEXT... on a comet-server.

`comet-client --server HOST:PORT TEXT...` classifies / embeds (the `classify` command,
the default); other verbs are subcommands (`comet-client COMMAND --help`): `generate`
continues a prompt on a decoder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from comet_client.options import connection_options
from comet_client.session import CometError, Connection, Result, infer_many
from common.protocol.session import InvalidInput


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def cost_table(cost: dict) -> Table:
    t = Table(title="cost per layer (this client's view; rounds = sequential rounds)")
    t.add_column("phase")
    t.add_column("layer")
    for c in ("sent", "received", "rounds", "seconds"):
        t.add_column(c, justify="right")
    for phase in ("offline", "online"):
        p = cost[phase]
        for r in p["layers"]:
            t.add_row(
                phase, r["name"], _fmt_bytes(r["bytes_sent"]), _fmt_bytes(r["bytes_received"]),
                str(r["rounds"]), f"{r['seconds']:.2f}",
            )  # fmt: skip
        t.add_row(
            f"[bold]{phase}[/bold]", "[bold]total[/bold]", _fmt_bytes(p["bytes_sent"]),
            _fmt_bytes(p["bytes_received"]), str(p["rounds"]), f"{p['seconds']:.2f}",
            end_section=True,
        )  # fmt: skip
    return t


def result_table(texts: tuple[str, ...], res: Result) -> Table:
    t = Table(title=f"model {res.model} ({res.card.approx.kind} set), output: {res.output_kind}")
    t.add_column("text", overflow="fold", max_width=60)
    if res.labels is not None and res.probabilities is not None:
        t.add_column("label")
        names = list(res.card.arch.labels) or [str(i) for i in range(res.output.shape[-1])]
        t.add_column("probabilities")
        for text, label, p in zip(texts, res.labels, res.probabilities, strict=True):
            probs = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, p, strict=True))
            t.add_row(text, label, probs)
    else:
        assert res.pooled is not None
        t.add_column(f"mean-pooled embedding (first 6 of {res.pooled.shape[-1]})")
        for text, v in zip(texts, res.pooled, strict=True):
            t.add_row(text, " ".join(f"{x:+.3f}" for x in v[:6]) + " …")
    return t


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is not a command name, belongs to the default
    command: `comet-client --server X TEXT` means `comet-client classify --server X TEXT`.
    A text that equals a command name needs the explicit form (`classify ... prepare`)."""

    default_command = "classify"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(cls=_DefaultGroup, context_settings=CONTEXT)
def main() -> None:
    """Private inference on a comet-server: the server never sees the text, this client
    never sees the weights. `comet-client --server HOST:PORT TEXT...` classifies (or
    embeds) TEXT; see `comet-client classify --help`."""


@main.command("classify", context_settings=CONTEXT)
@click.argument("texts", nargs=-1, required=True)
@click.option("--server", "target", required=True, help="HOST:PORT of a comet-server.")
@click.option("--model", default="", help="Model name (default: the server's default).")
@click.option(
    "--output",
    type=click.Choice(["auto", "logits", "hidden"]),
    default="auto",
    show_default=True,
    help="auto: logits for a classifier, last hidden states for a bare encoder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--save-report", type=click.Path(dir_okay=False, path_type=Path))
@connection_options
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--truncate", is_flag=True, help="Cut texts longer than the model takes.")
@click.option(
    "--buckets",
    default="16,32,64,128,256,512",
    show_default=True,
    help="With --hide-lengths: pad each batch that has no prepared set to the smallest "
    "of these lengths that holds it (the server learns only that length); 'none': to its "
    "longest text. Without --hide-lengths token counts are public and such a batch runs "
    "at its own length (the cheapest offline phase). A batch that uses a prepared set "
    "pads to the set's length.",
)
@click.option(
    "--hide-lengths",
    is_flag=True,
    help="Keep each text's token count secret (the server learns only the padded "
    "length); costs one extra product per attention score.",
)
def classify(
    texts: tuple[str, ...],
    target: str,
    model: str,
    output: str,
    as_json: bool,
    save_report: Path | None,
    tls_ca: Path | None,
    server_name: str | None,
    insecure: bool,
    allow_insecure_dealer: bool,
    timeout: float,
    quiet: bool,
    truncate: bool,
    buckets: str,
    hide_lengths: bool,
) -> None:
    """Classify / embed TEXT privately: the server never sees the text, this client never
    sees the weights. Only the number of texts and their token counts are revealed
    (with --hide-lengths: only each batch's padded shape).

    Any number of texts: they go in batches of at most the server's limit. A batch whose
    shape fits a set made by `comet-client prepare` runs only its online phase."""
    from comet_client.prepared_cli import client_store, parse_buckets

    err = Console(stderr=True)
    conn = Connection(target, tls_ca, insecure, server_name)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[layer]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )
    tasks: dict[tuple[int, str], int] = {}

    def on_layer(batch: int, batches: int, phase: str, layer: str) -> None:
        if phase not in ("offline", "online"):
            return
        if (batch, phase) not in tasks:
            for other in tasks.values():
                progress.update(other, completed=progress.tasks[other].total)
            name = f"batch {batch + 1}/{batches} {phase}" if batches > 1 else phase
            tasks[(batch, phase)] = progress.add_task(name, total=None, layer="")
        progress.update(tasks[(batch, phase)], advance=1, layer=layer)

    try:
        store = client_store()
        with progress:
            res = infer_many(
                conn, texts, model, output, allow_insecure_dealer, timeout, on_layer,
                store=store, buckets=parse_buckets(buckets), truncate=truncate,
                hide_lengths=hide_lengths,
            )  # fmt: skip
            for t in tasks.values():
                progress.update(t, total=progress.tasks[t].completed)
    except InvalidInput as e:
        err.print(f"comet-client: error: {e}", highlight=False, markup=False)
        sys.exit(2)
    except CometError as e:
        code = f" [{e.code}]" if e.code else ""
        err.print(f"comet-client: error{code}: {e}", highlight=False, markup=False)
        sys.exit(1)
    if not quiet:
        for note in res.notes:
            err.print(f"comet-client: {note}", highlight=False, markup=False)
    report = res.to_json()
    report["texts"] = len(texts)
    if save_report:
        save_report.write_text(json.dumps(report) + "\n")
    if as_json:
        click.echo(json.dumps(report))
        return
    out = Console()
    out.print(result_table(texts, res))
    out.print(cost_table(res.cost))
    if len(res.batches) > 1 or any(b["prepared"] for b in res.batches):
        from comet_client.prepared_cli import batch_table

        out.print(batch_table(res))


# Subcommands defined in their own modules (registered here, where `main` is).
from comet_client.generate_cli import generate_command  # noqa: E402
from comet_client.prepared_cli import prepare_cmd, prepared_cmd  # noqa: E402

main.add_command(prepare_cmd, "prepare")
main.add_command(prepared_cmd, "prepared")
main.add_command(generate_command)
