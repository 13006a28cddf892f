"""Per-layer bar charts (PNG) of a cost report: bytes and seconds, offline and online.

Reads either a `comet-client --save-report` / `--json` object (`cost.offline.layers`
rows with `name`, `bytes_sent`, `bytes_received`, `seconds`) or a `comet-bench model
--json` object (`layers` rows with `layer`, `offline_bytes`, `online_bytes`, `offline_s`,
`online_s`). Both are normalised to the same rows first, so one plot code serves both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHASES = ("offline", "online")


@dataclass
class LayerCost:
    name: str
    bytes: dict[str, float]  # phase → bytes moved (both directions)
    seconds: dict[str, float]  # phase → seconds


def load_rows(report: dict[str, Any]) -> tuple[str, list[LayerCost]]:
    """Normalise a report to per-layer rows; raises ValueError for an unknown format."""
    if "cost" in report:  # comet-client
        by_name: dict[str, LayerCost] = {}
        for phase in PHASES:
            for r in report["cost"].get(phase, {}).get("layers", []):
                row = by_name.setdefault(r["name"], LayerCost(r["name"], {}, {}))
                row.bytes[phase] = r["bytes_sent"] + r["bytes_received"]
                row.seconds[phase] = r["seconds"]
        title = f"comet-client: model {report.get('model', '?')}"
        return title, list(by_name.values())
    if "layers" in report and "meta" in report:  # comet-bench model
        rows = [
            LayerCost(
                r["layer"],
                {p: float(r.get(f"{p}_bytes", 0)) for p in PHASES},
                {p: float(r.get(f"{p}_s", 0.0)) for p in PHASES},
            )
            for r in report["layers"]
        ]
        m = report["meta"]
        title = f"comet-bench model: {Path(str(m.get('model', '?'))).name}, " \
                f"{m.get('seq_len')} tokens, {m.get('approx')}"  # fmt: skip
        return title, rows
    raise ValueError(
        "not a cost report: expected the JSON of `comet-client --save-report` "
        "(key 'cost') or of `comet-bench model --json` (keys 'meta', 'layers')"
    )


def plot(report: dict[str, Any], out: Path) -> Path:
    """Draw bytes (MB) and seconds per layer, offline and online side by side, to `out`."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt
    import numpy as np

    title, rows = load_rows(report)
    if not rows:
        raise ValueError("the report has no per-layer rows")
    names = [r.name for r in rows]
    x = np.arange(len(rows))
    w = 0.4
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.6 * len(rows) + 2), 6.5), sharex=True)
    for ax, key, unit, scale in ((axes[0], "bytes", "MB", 1e-6), (axes[1], "seconds", "s", 1.0)):
        for i, phase in enumerate(PHASES):
            vals = [getattr(r, key).get(phase, 0.0) * scale for r in rows]
            ax.bar(x + (i - 0.5) * w, vals, w, label=phase)
        ax.set_ylabel(f"{key} ({unit})")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    axes[0].set_title(title)
    axes[1].set_xticks(x, names, rotation=45, ha="right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_file(path: Path, out: Path | None = None) -> Path:
    """`plot` for a JSON file; the PNG goes beside it unless `out` is given."""
    try:
        report = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    return plot(report, out or Path(path).with_suffix(".png"))
