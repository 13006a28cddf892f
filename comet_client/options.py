"""Click options shared by the client's commands (classify, prepare, generate)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click


def connection_options(f: Callable) -> Callable:
    """--tls-ca, --server-name, --insecure, --allow-insecure-dealer and --timeout: how
    to reach the server, and what of it to accept."""
    for opt in reversed(
        [
            click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path)),
            click.option(
                "--server-name", help="TLS: the name in the server's certificate, if not HOST."
            ),
            click.option(
                "--insecure", is_flag=True, help="Allow a plaintext channel to a remote host."
            ),
            click.option(
                "--allow-insecure-dealer",
                is_flag=True,
                help="TESTS ONLY: accept a server whose offline phase is the insecure dealer.",
            ),
            click.option("--timeout", type=click.FloatRange(0, min_open=True), default=600.0),
        ]
    ):
        f = opt(f)
    return f
