"""One adaptation run: checkpoint + labelled data → original classifier + Comet form."""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from comet_server.adapt.patch import save_comet_model
from comet_server.adapt.train import Recipe, accuracy, distil, finetune, predict
from common.protocol.public_tables import source_of, write_marker

ORIGINAL, COMET = "original", "comet"


def load_dataset(data: str) -> tuple[list[str], list[int], list[str], list[int], list[str]]:
    """(train texts, train labels, val texts, val labels, label names).

    `data` is `tweets` (the bundled positive/negative task) or a CSV file with columns
    `text` and `label`; a CSV is split 90/10 (fixed seed) into train and validation.
    """
    if data == "tweets":
        from comet_server.adapt.data import LABELS, load_tweets

        t, y = load_tweets("train")
        vt, vy = load_tweets("val")
        return t, y, vt, vy, list(LABELS)
    path = Path(data)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {data!r}: neither 'tweets' nor a CSV file")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: a CSV with columns 'text' and 'label' is required")
        rows = [(r["text"].strip(), r["label"].strip()) for r in reader if r["text"].strip()]
    names = sorted({label for _, label in rows})
    if len(names) < 2:
        raise ValueError(f"{path}: needs at least two distinct labels, found {names}")
    if len(rows) < 20:
        raise ValueError(f"{path}: {len(rows)} labelled texts are too few to train on")
    order = np.random.default_rng(0).permutation(len(rows))
    n_val = max(len(rows) // 10, 2)
    val, train = order[:n_val], order[n_val:]
    texts = [r[0] for r in rows]
    labels = [names.index(r[1]) for r in rows]
    return (
        [texts[i] for i in train],
        [labels[i] for i in train],
        [texts[i] for i in val],
        [labels[i] for i in val],
        names,
    )


def _bar(total: int, desc: str, show: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not show, leave=True)


def adapt(
    base: Path,
    out: Path,
    recipe: Recipe,
    data: str = "tweets",
    say: Callable[[str], None] | None = None,
    show_progress: bool = True,
    site_budget: bool = True,
) -> dict[str, Any]:
    """Fine-tune `base` into `out/original` (skipped when it already is a classifier for
    these labels) and distil its Comet form into `out/comet`; with `site_budget`, then
    choose the per-site accuracy targets of both (`common.protocol.site_budget`): the
    Comet set's for `out/comet`, the reference set's for `out/original`.
    Returns a report (recipe, sizes, validation accuracy/agreement, seconds per
    stage, the site budget's result)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    transformers.logging.set_verbosity_error()
    say = say or (lambda m: None)
    base, out = Path(base), Path(out)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{base} is not a model directory (no config.json)")
    t, y, vt, vy, names = load_dataset(data)
    # Freezing the word table pays only when it is a known public one (then it is served
    # as public); an unknown base trains all its weights.
    source = source_of(base) if recipe.freeze_embeddings else None
    recipe = dataclasses.replace(recipe, freeze_embeddings=source is not None)
    say(f"data: {len(t)} training and {len(vt)} validation texts, labels {names}")
    tok = AutoTokenizer.from_pretrained(base, local_files_only=True)
    config = AutoConfig.from_pretrained(base, local_files_only=True)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    report: dict[str, Any] = {
        "base": str(base),
        "data": data,
        "labels": names,
        "train_texts": len(t),
        "val_texts": len(vt),
        "recipe": asdict(recipe),
    }
    if is_classifier and config.num_labels == len(names):
        say("base is already a classifier for these labels: no fine-tuning stage")
        model = AutoModelForSequenceClassification.from_pretrained(base, local_files_only=True)
        report["finetune_seconds"] = 0.0
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            base,
            local_files_only=True,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )
        t0 = time.perf_counter()
        with _bar(recipe.finetune_steps, "fine-tune original", show_progress) as bar:
            model = finetune(model, tok, t, y, recipe, _tick(bar))
        report["finetune_seconds"] = time.perf_counter() - t0
    model.eval()
    (out / ORIGINAL).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / ORIGINAL)
    tok.save_pretrained(out / ORIGINAL)

    t0 = time.perf_counter()
    with _bar(recipe.distil_steps, "distil Comet form", show_progress) as bar:
        student, params = distil(model, tok, t, y, recipe, _tick(bar))
    report["distil_seconds"] = time.perf_counter() - t0
    save_comet_model(student, tok, params, out / COMET)
    report["comet"] = params.to_json()

    lo = predict(model, tok, vt, recipe.max_length)
    lc = predict(student, tok, vt, recipe.max_length)
    report["public_embeddings"] = source
    if source is not None:
        # The table is the public checkpoint's, bit for bit (checked): serve it as public.
        for sub_dir, m in ((ORIGINAL, model), (COMET, student)):
            write_marker(out / sub_dir, source, m.get_input_embeddings().weight.detach().numpy())
        say(f"word embeddings kept as {source}'s: served as public (no private lookup)")
    report["val"] = {
        "original_accuracy": accuracy(lo, vy),
        "comet_accuracy": accuracy(lc, vy),
        "agreement": float(np.mean(lo.argmax(-1) == lc.argmax(-1))),
    }
    if site_budget:
        from common.protocol.site_budget import write_site_targets

        say("choosing per-site accuracy targets (end-to-end error budget) …")
        report["site_budget"] = {}
        # The original's for the reference set too, so that the two sets compare fairly.
        for sub_dir, kind in ((COMET, "comet"), (ORIGINAL, "reference")):
            t0 = time.perf_counter()
            sb = write_site_targets(out / sub_dir, kind)
            report["site_budget"][kind] = sb.to_json() | {"seconds": time.perf_counter() - t0}
            say(
                f"{kind} set: {len(sb.targets)} sites loosened, rsqrt openings on the "
                f"calibration sample {sb.bytes_default / 1e6:.0f} → "
                f"{sb.bytes_chosen / 1e6:.0f} MB, error {sb.error:.2g} within {sb.budget:.2g}"
            )
    v = report["val"]
    say(
        f"validation: original {v['original_accuracy']:.3f}, Comet form "
        f"{v['comet_accuracy']:.3f}, label agreement {v['agreement']:.3f}"
    )
    return report


def _tick(bar) -> Callable[[int, float], None]:
    def f(step: int, loss: float) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    return f
