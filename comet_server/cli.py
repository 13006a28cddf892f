"""`comet-server`: serve private inference of one or more models."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import click

from comet_server.service import Limits


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--model",
    "models",
    multiple=True,
    help="default | original | smollm2 | DIR | NAME=DIR (repeatable; the first is the "
    "default). smollm2: the bundled decoder (generation; built on first use, its card "
    "cached). Without it: the bundled default model (built on first use).",
)
@click.option(
    "--approx",
    type=click.Choice(["auto", "comet", "reference"]),
    default="auto",
    show_default=True,
    help="auto: Comet set for adapted checkpoints (comet.json), reference set otherwise.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=50051, show_default=True)
@click.option("--max-sessions", type=click.IntRange(1), default=4, show_default=True)
@click.option("--max-batch", type=click.IntRange(1), default=8, show_default=True)
@click.option(
    "--session-timeout",
    type=click.FloatRange(0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds a session may wait for its client before it is closed.",
)
@click.option(
    "--handshake-timeout",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a client has to send Hello, then Start, and its Goodbye after the result.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1),
    default=None,
    help="Largest batch × sequence length per session (default: what fits half of the "
    "available memory shared by --max-sessions, and the frame limit).",
)
@click.option(
    "--session-memory",
    type=click.IntRange(1),
    default=None,
    help="Bytes one session may use, estimated from its plan before it starts; a larger "
    "request is refused (default: the available memory shared by --max-sessions).",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Decoders: the most tokens one generation session may produce.",
)
@click.option(
    "--outputs",
    type=click.Choice(["auto", "logits", "hidden", "both"]),
    default="auto",
    show_default=True,
    help="What a client may ask for. auto: logits for a classifier, the hidden states for "
    "a bare encoder; hidden/both also give a classifier's last hidden states (far more "
    "about the weights than the logits, see docs/SECURITY.md).",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--insecure", is_flag=True, help="Allow a plaintext channel on a non-loopback host.")
@click.option(
    "--allow-insecure-dealer",
    is_flag=True,
    help="TESTS ONLY: produce correlations with a shared seed instead of HE (no security).",
)
@click.option(
    "--he-workers",
    type=click.IntRange(0),
    default=None,
    help="Worker processes for the server's HE work (SEAL holds the GIL: one per core "
    "uses them all). 0 or 1: in the session thread.  [default: one per core]",
)
@click.option(
    "--prepared-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where clients' prepared offline phases are kept (`comet-client prepare`). "
    "[default: $COMET_HOME/server/prepared]",
)
@click.option(
    "--prepared-bytes",
    type=click.IntRange(0),
    default=2_000_000_000,
    show_default=True,
    help="Total size limit of the prepared sets kept; 0: keep none (prepare is refused).",
)
@click.option(
    "--prepared-model-bytes",
    type=click.IntRange(0),
    default=None,
    help="Size limit of the prepared sets of one model.  [default: --prepared-bytes]",
)
@click.option(
    "--prepared-per-client",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Prepared sets kept per client host.",
)
@click.option(
    "--prepared-expiry",
    type=click.FloatRange(0, min_open=True),
    default=7 * 86400.0,
    show_default=True,
    help="Seconds a prepared set is kept unused before it is deleted.",
)
@click.option("-v", "--verbose", is_flag=True)
def main(
    models: tuple[str, ...],
    approx: str,
    host: str,
    port: int,
    max_sessions: int,
    max_batch: int,
    session_timeout: float,
    handshake_timeout: float,
    max_tokens: int | None,
    session_memory: int | None,
    max_new_tokens: int,
    outputs: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure: bool,
    allow_insecure_dealer: bool,
    he_workers: int | None,
    prepared_dir: Path | None,
    prepared_bytes: int,
    prepared_model_bytes: int | None,
    prepared_per_client: int,
    prepared_expiry: float,
    verbose: bool,
) -> None:
    """Serve two-party private inference over gRPC (the client keeps its text private,
    the server its weights)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("comet.server")
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    from comet_server.registry import load_models
    from comet_server.server import build_server
    from common.he.executor import ProcessExecutor

    workers = (os.cpu_count() or 1) if he_workers is None else he_workers
    executor = ProcessExecutor(workers) if workers > 1 and not allow_insecure_dealer else None
    try:
        store = None
        if prepared_bytes:
            from common.protocol.prepared import Limits as StoreLimits
            from common.protocol.prepared import PreparedStore, comet_home

            store = PreparedStore(
                prepared_dir or comet_home() / "server" / "prepared",
                StoreLimits(
                    prepared_bytes, prepared_model_bytes, prepared_per_client, prepared_expiry
                ),
            )
        served = load_models(list(models) or ["default"], approx)
        server, service, bound = build_server(
            served,
            host,
            port,
            provider="insecure_dealer" if allow_insecure_dealer else "he",
            limits=Limits(
                max_sessions,
                session_timeout,
                max_batch,
                handshake_timeout=handshake_timeout,
                max_tokens=max_tokens,
                session_memory=session_memory,
                outputs=outputs,
                max_new_tokens=max_new_tokens,
            ),
            tls=(tls_cert, tls_key) if tls_cert and tls_key else None,
            insecure=insecure,
            executor=executor,
            prepared=store,
        )
    except (FileNotFoundError, ValueError, OSError) as e:
        if executor is not None:
            executor.close()
        click.echo(f"comet-server: error: {e}", err=True)
        sys.exit(2)
    if allow_insecure_dealer:
        log.warning("--allow-insecure-dealer: correlations from a shared seed, NO SECURITY")
    server.start()
    scheme = "TLS" if tls_cert else "plaintext"
    # The bound port on its own line (tests and scripts read it with --port 0).
    click.echo(f"comet-server listening on {host}:{bound} ({scheme}); models: "
               f"{', '.join(served)}", err=True)  # fmt: skip
    lim = service.limits
    log.info(
        "limits: %d sessions, batch ≤ %d, ≤ %d tokens and ≤ %.2f GiB per session, outputs %s, "
        "timeouts %g s (handshake) / %g s (protocol)",
        lim.max_sessions, lim.max_batch, lim.max_tokens, (lim.session_memory or 0) / 2**30,
        lim.outputs, lim.handshake_timeout, lim.session_timeout,
    )  # fmt: skip
    # `kill -USR1 <pid>` prints every thread's stack to stderr (diagnosing a stuck server).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down (%d sessions active)", service.active)
    # Sessions in flight end with UNAVAILABLE at once (their handlers do not wait for
    # the HE work); workers are daemon threads that stop at their next message. HE
    # worker processes are terminated (a job in flight belongs to an ending session).
    service.shutdown()
    server.stop(grace=3).wait()
    if executor is not None:  # after the sessions were told UNAVAILABLE
        executor.close()
    log.info("stopped")
