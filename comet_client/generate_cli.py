"""`comet-client generate`: private text generation on a comet-server's decoder.

Tokens are streamed to the terminal as they are picked (the client samples them
locally from the logits that only it sees), then the cost per phase is printed:
the prefill and each token's offline and online bytes, rounds and seconds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from comet_client.generation import Generation, generate
from comet_client.options import connection_options
from comet_client.session import CometError, Connection
from common.protocol.generate import Sampling
from common.protocol.session import InvalidInput

CONTEXT = {"help_option_names": ["-h", "--help"]}


def generation_table(gen: Generation) -> Table:
    """Prefill, the mean token step and the totals, offline and online."""
    from comet_client.cli import _fmt_bytes

    c = gen.cost
    t = Table(
        title=f"model {gen.model}: {len(gen.prompt_ids)} prompt tokens, "
        f"{len(gen.token_ids)} generated (this client's view)"
    )
    t.add_column("call")
    for col in ("phase", "sent", "received", "rounds", "seconds"):
        t.add_column(col, justify="left" if col == "phase" else "right")
    rows = []
    if c["prefill"]:
        rows.append((f"prefill ({c['prefill']['positions']} positions)", c["prefill"]))
    if c["per_token"]:
        rows.append((f"per token (mean of {len(c['tokens'])})", c["per_token"]))
    rows.append(("total (with setup)", c["total"]))
    for name, r in rows:
        for i, phase in enumerate(("offline", "online")):
            p = r[phase]
            t.add_row(
                name if i == 0 else "", phase, _fmt_bytes(p["bytes_sent"]),
                _fmt_bytes(p["bytes_received"]), f"{p['rounds']:.0f}", f"{p['seconds']:.2f}",
                end_section=i == 1,
            )  # fmt: skip
    return t


@click.command("generate", context_settings=CONTEXT)
@click.argument("prompt")
@click.option("--server", "target", required=True, help="HOST:PORT of a comet-server.")
@click.option("--model", default="", help="Model name (default: the server's default).")
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1),
    default=None,
    help="Stop after this many tokens (or at an end-of-sequence token); at most the "
    "server's limit.  [default: 32, or the server's limit if lower]",
)
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option(
    "--temperature",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="0: greedy; otherwise sample from softmax(logits / temperature).",
)
@click.option("--top-k", type=click.IntRange(0), default=0, help="Sample among the k best; 0: all.")
@click.option(
    "--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, help="Nucleus sampling."
)
@click.option("--seed", type=int, default=None, help="Reproducible draws (default: from the OS).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@connection_options
@click.option("--quiet", is_flag=True, help="No status lines on stderr.")
def generate_command(
    prompt: str,
    target: str,
    model: str,
    max_new_tokens: int | None,
    chat: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    as_json: bool,
    tls_ca: Path | None,
    server_name: str | None,
    insecure: bool,
    allow_insecure_dealer: bool,
    timeout: float,
    quiet: bool,
) -> None:
    """Continue PROMPT privately: the server never sees the prompt nor the generated
    tokens, this client never sees the weights. Revealed to the server: the prompt's
    length, the number of tokens generated, timing."""

    err = Console(stderr=True)
    conn = Connection(target, tls_ca, insecure, server_name)
    sampling = Sampling(temperature, top_k, top_p, seed)
    started = [False]

    def on_text(piece: str) -> None:
        if as_json:
            return
        started[0] = True
        sys.stdout.write(piece)
        sys.stdout.flush()

    said: set[str] = set()

    def on_layer(phase: str, layer: str) -> None:  # one status line per phase of the prefill
        if not quiet and not started[0] and phase in ("offline", "online") and phase not in said:
            said.add(phase)
            err.print(f"[prefill: {phase} phase …]", highlight=False, markup=False)

    try:
        gen = generate(
            conn, prompt, model, max_new_tokens, sampling, chat, allow_insecure_dealer,
            timeout, on_text, on_layer,
        )  # fmt: skip
    except InvalidInput as e:
        if started[0]:
            sys.stdout.write("\n")
        err.print(f"comet-client: error: {e}", highlight=False, markup=False)
        sys.exit(2)
    except CometError as e:
        if started[0]:
            sys.stdout.write("\n")
        code = f" [{e.code}]" if e.code else ""
        err.print(f"comet-client: error{code}: {e}", highlight=False, markup=False)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(gen.to_json()))
        return
    sys.stdout.write("\n")
    Console().print(generation_table(gen))
