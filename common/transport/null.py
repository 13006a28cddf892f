"""A channel to nowhere, for planning runs: sends vanish, receives yield zeros."""

from __future__ import annotations

from common.transport.channel import Channel, Frame


class NullChannel(Channel):
    """Lets a two-party program run alone to discover its shapes and requests."""

    def _put(self, frame: Frame) -> None:
        pass

    def _get(
        self, timeout: float, limit: int | None = None
    ) -> Frame:  # pragma: no cover - recv is overridden
        raise RuntimeError("NullChannel has no peer")

    def recv_frame(self, tag: str, nbytes: int | None = None) -> Frame:
        if nbytes is None:
            raise RuntimeError(f"planning run cannot receive {tag!r} of unknown size")
        return Frame(0, tag, 0, bytes(nbytes))  # untyped: recv_array checks only the size
