"""The tmpfs scratch file of `SealIO` leaves nothing behind, whatever ends the process."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.e2e.harness import ROOT

CHILD = """
import os, signal
from common.he.crt_bfv import CrtBfvClient, CrtBfvParams
c = CrtBfvClient(CrtBfvParams())
c.public_keys()  # a save through the scratch file
print(c.io._scratch.name, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_scratch_file_is_gone_even_after_sigkill() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert p.returncode == -9, p.stderr
    name = p.stdout.strip()
    assert name.startswith(("/dev/shm/", "/tmp/")) and "comet-seal-" in name
    assert not os.path.exists(name)
