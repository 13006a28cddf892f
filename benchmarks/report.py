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


def load_jsonl(paths: list[Path], ratios: bool = False) -> list[dict[str, Any]]:
    """Rows of `comet-bench net --out` files (ratio rows dropped unless `ratios`)."""
    rows = []
    for p in paths:
        for n, line in enumerate(Path(p).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{n}: not JSON ({e})") from None
            if "ratio" in r:
                if ratios:
                    rows.append(r)
                continue
            if not {"model", "profile", "offline", "online"} <= set(r):
                raise ValueError(f"{p}:{n}: not a `comet-bench net` row")
            rows.append(r)
    return rows


NET_HEADER = (
    "| model | set | profile (measured RTT, Mbit/s) | tokens | offline MB | offline rounds "
    "| offline s (bound / estimate) | online MB | online rounds | online s (bound / estimate) "
    "| client sent MB online | max abs err | cosine | labels |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def net_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of docs/BENCHMARKS.md from `comet-bench net` JSON lines
    (including their ratio rows, in file order). MB = 10^6 bytes, both directions."""
    out = [NET_HEADER]
    for r in rows:
        if "ratio" in r:
            off, on = r["offline"], r["online"]
            out.append(
                f"| {r['model']} | {r['ratio']} | {r['profile']} | | ×{off['bytes']} "
                f"| ×{off['rounds']} | ×{off['seconds']} | ×{on['bytes']} | ×{on['rounds']} "
                f"| ×{on['seconds']} | | | | |"
            )
            continue
        m, off, on, acc = r["measured"], r["offline"], r["online"], r["accuracy"]
        prof = f"{r['profile']} ({m['rtt_ms']:g} ms, {m['throughput_mbit']:.0f})"
        if r["provider"] == "insecure_dealer":
            offl = "dealer (not measured) | | "
        else:
            offl = (
                f"{off['bytes'] / 1e6:,.0f} | {off['rounds']} | {off['seconds']:.2f} "
                f"({off['lower_bound_s']:.2f} / {off.get('estimate_s', float('nan')):.2f})"
            )
        out.append(
            f"| {r['model']} | {r['approx']} | {prof} | {r['seq_len']}×{r['batch']} | {offl} "
            f"| {on['bytes'] / 1e6:,.1f} | {on['rounds']} | {on['seconds']:.2f} "
            f"({on['lower_bound_s']:.2f} / {on.get('estimate_s', float('nan')):.2f}) "
            f"| {on.get('bytes_sent', 0) / 1e6:,.1f} | {acc['max_abs_err']:.1e} "
            f"| {acc['cosine']:.6f} | {acc.get('label_agreement', float('nan'))} |"
        )
    return "\n".join(out)


def plot_net(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """PNG charts of network benchmark rows; returns the files written.

    - net-phases.png: offline and online seconds (bars) with the lower bound (marks),
      per model / set / profile;
    - net-layers-<profile>.png: online bytes and seconds per layer, one series per
      model and set;
    - net-scaling.png: online seconds and bytes against sequence length and batch
      (rows of one model, set and profile that differ only there), when present.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not rows:
        raise ValueError("no rows to plot")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def label(r: dict[str, Any]) -> str:
        dealer = " (dealer)" if r.get("provider") != "he" else ""
        return f"{r['model']}/{r['approx']}/{r['profile']}\n{r['seq_len']}×{r['batch']}{dealer}"

    base = [r for r in rows if r["batch"] == 1]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.1 * len(base) + 3), 5))
    x = np.arange(len(base))
    for ax, phase in zip(axes, PHASES, strict=True):
        secs = [r[phase]["seconds"] for r in base]
        bound = [r[phase]["lower_bound_s"] for r in base]
        ax.bar(x, secs, 0.6, label="measured")
        ax.scatter(x, bound, color="black", marker="_", s=300,
                   label="lower bound: max(bytes/bw, rounds·RTT/2)")  # fmt: skip
        ax.set_yscale("log")
        ax.set_title(f"{phase} seconds")
        ax.set_xticks(x, [label(r) for r in base], rotation=60, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out_dir / "net-phases.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    for profile in sorted({r["profile"] for r in base}):
        sel = [r for r in base if r["profile"] == profile and r["seq_len"] <= 64]
        if not sel:
            continue
        fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=False)
        for r in sel:
            layers = r["layers"]["online"]
            names = [ly["name"] for ly in layers]
            mb = [(ly["bytes_sent"] + ly["bytes_received"]) / 1e6 for ly in layers]
            axes[0].plot(names, mb, marker="o", label=label(r).replace("\n", " "))
            axes[1].plot(names, [ly["seconds"] for ly in layers], marker="o")
        axes[0].set_ylabel("online MB")
        axes[1].set_ylabel("online s")
        axes[0].set_title(f"per layer, profile {profile}")
        axes[0].legend(fontsize=7)
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        fig.tight_layout()
        written.append(out_dir / f"net-layers-{profile}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["approx"], r["profile"], r["provider"]), []).append(r)
    series = {k: v for k, v in groups.items() if len({(r["seq_len"], r["batch"]) for r in v}) > 1}
    if series:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        for (model, approx, profile, _), rs in series.items():
            for batch in sorted({r["batch"] for r in rs}):
                pts = sorted(((r["seq_len"], r) for r in rs if r["batch"] == batch),
                             key=lambda p: p[0])  # fmt: skip
                lens = [p[0] for p in pts]
                name = f"{model}/{approx}/{profile}, batch {batch}"
                axes[0].plot(lens, [p[1]["online"]["seconds"] for p in pts], marker="o",
                             label=name)  # fmt: skip
                axes[1].plot(lens, [p[1]["online"]["bytes"] / 1e6 for p in pts], marker="o",
                             label=name)  # fmt: skip
        axes[0].set_ylabel("online seconds")
        axes[1].set_ylabel("online MB")
        for ax in axes:
            ax.set_xlabel("tokens")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "net-scaling.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
