"""Transport layer: a labelled, metered, tag-checked byte channel between two parties."""

from common.transport.channel import Channel, ChannelClosed, ProtocolMismatch, TransportError
from common.transport.local import LocalChannel, local_pair, run_local
from common.transport.meter import Counts, Label, Meter
from common.transport.null import NullChannel

__all__ = [
    "Channel",
    "ChannelClosed",
    "Counts",
    "Label",
    "LocalChannel",
    "Meter",
    "NullChannel",
    "ProtocolMismatch",
    "TransportError",
    "local_pair",
    "run_local",
]
