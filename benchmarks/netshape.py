"""Two network namespaces joined by a veth pair, bandwidth shaped with `tc tbf`.

The server runs in one namespace, the client in the other; each end of the veth pair
gets a token-bucket filter at the profile's rate (so each direction has that
bandwidth). Latency is not added here (this kernel has no `netem`): the delay forwarder
(`benchmarks.delay_forwarder`) in the client's namespace adds RTT/2 per direction.

`ShapedLink` is a context manager that removes the namespaces (hence the veth pair and
its qdiscs) and kills every process it started on every exit path, including errors
and Ctrl-C; `NetUnavailable` says in words why shaping cannot run here (not root, no
`ip`/`tc`, no namespace support).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field


class NetUnavailable(RuntimeError):
    """Shaped networking cannot run on this machine (the message says why)."""


@dataclass(frozen=True)
class Profile:
    name: str
    rate_mbit: float | None  # None: unshaped
    rtt_ms: float  # added round-trip time (forwarder: rtt/2 each way)

    @property
    def shaped(self) -> bool:
        return self.rate_mbit is not None

    @property
    def one_way_ms(self) -> float:
        return self.rtt_ms / 2


# BOLT / Iron-style settings.
PROFILES = {
    "none": Profile("none", None, 0.0),  # loopback, no shaping
    "lan": Profile("lan", 3000.0, 0.8),
    "wan": Profile("wan", 200.0, 40.0),
}

SERVER_IP = "10.77.0.1"
CLIENT_IP = "10.77.0.2"


def tbf_burst_bytes(rate_mbit: float) -> int:
    """Bucket size: 10 ms at the rate, at least 256 KiB (several GSO super-packets)."""
    return max(int(rate_mbit * 1e6 / 8 * 0.010), 256 << 10)


def tbf_command(dev: str, profile: Profile, netns: str | None = None) -> list[str]:
    """The `tc` command line that shapes `dev` (egress) to the profile's rate."""
    if not profile.shaped:
        raise ValueError(f"profile {profile.name!r} is not shaped")
    assert profile.rate_mbit is not None
    ns = ["-n", netns] if netns else []
    return ["tc", *ns, "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", f"{profile.rate_mbit:g}mbit", "burst", str(tbf_burst_bytes(profile.rate_mbit)),
            "latency", "50ms"]  # fmt: skip


def check_available() -> None:
    """Raise `NetUnavailable` unless namespaces and tc can be used here."""
    if os.name != "posix" or not os.path.exists("/proc/self/ns/net"):
        raise NetUnavailable("network namespaces need Linux")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetUnavailable(
                f"`{tool}` not found: install iproute2 (Debian: apt install iproute2)"
            )
    if os.geteuid() != 0:
        raise NetUnavailable(
            "shaped profiles create network namespaces and need root; run as root, "
            "or use --profile none (loopback, unshaped)"
        )


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise NetUnavailable(f"`{' '.join(cmd)}` failed: {res.stderr.strip() or res.returncode}")


@dataclass
class ShapedLink:
    """Server and client namespaces for `profile`; use as a context manager."""

    profile: Profile
    tag: str = field(default_factory=lambda: str(os.getpid()))
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def server_ns(self) -> str:
        return f"comet-s-{self.tag}"

    @property
    def client_ns(self) -> str:
        return f"comet-c-{self.tag}"

    @property
    def devs(self) -> tuple[str, str]:
        return f"cs{self.tag}"[:15], f"cc{self.tag}"[:15]

    def commands(self) -> list[list[str]]:
        """Every command `__enter__` runs, in order (what the shaping is, inspectable)."""
        s, c = self.server_ns, self.client_ns
        ds, dc = self.devs
        cmds = [
            ["ip", "netns", "add", s],
            ["ip", "netns", "add", c],
            ["ip", "link", "add", ds, "type", "veth", "peer", "name", dc],
            ["ip", "link", "set", ds, "netns", s],
            ["ip", "link", "set", dc, "netns", c],
            ["ip", "-n", s, "addr", "add", f"{SERVER_IP}/24", "dev", ds],
            ["ip", "-n", c, "addr", "add", f"{CLIENT_IP}/24", "dev", dc],
        ]
        for ns, dev in ((s, ds), (c, dc)):
            cmds += [["ip", "-n", ns, "link", "set", "lo", "up"],
                     ["ip", "-n", ns, "link", "set", dev, "up"]]  # fmt: skip
        if self.profile.shaped:
            cmds += [tbf_command(ds, self.profile, s), tbf_command(dc, self.profile, c)]
        return cmds

    def __enter__(self) -> ShapedLink:
        check_available()
        try:
            for cmd in self.commands():
                _run(cmd)
        except BaseException:
            self.close()
            raise
        return self

    def spawn(self, ns: str, cmd: list[str], **kw) -> subprocess.Popen:
        """Start `cmd` inside namespace `ns`; it is killed when the testbed closes."""
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        for ns in (self.server_ns, self.client_ns):  # removes the veth pair with them
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __exit__(self, *exc) -> None:
        self.close()
