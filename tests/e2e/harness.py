"""Run comet-server / comet-client as subprocesses; a byte-counting TCP forwarder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Server:
    """`comet-server` on an ephemeral port; stderr goes to a log file."""

    def __init__(
        self, tmp: Path, *args: str, startup: float = 120.0, module: str = "comet_server"
    ) -> None:
        self.log = tmp / f"server-{time.monotonic_ns()}.log"
        self._f = self.log.open("w")
        cmd = [sys.executable, "-m", module, "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=self._f, stderr=self._f, env=_env(), cwd=ROOT)
        deadline = time.monotonic() + startup
        while time.monotonic() < deadline:
            m = re.search(r"listening on (\S+):(\d+)", self.log.read_text())
            if m:
                self.port = int(m.group(2))
                self.address = f"127.0.0.1:{self.port}"
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log.read_text()}")

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)  # thread stacks into the log
                time.sleep(1.0)
                self.proc.kill()
                self.proc.wait()
        self._f.close()
        return self.proc.returncode

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def client(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "comet_client", "--quiet", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout
    )


def client_popen(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "comet_client", *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT
    )


def client_json(*args: str) -> dict:
    res = client("--json", *args)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


class Forwarder:
    """A TCP forwarder 127.0.0.1:port → target that counts the bytes in each direction."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.up = 0  # client → server
        self.down = 0  # server → client
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            peer = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(conn, peer, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(peer, conn, "down"), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()
