"""`comet-adapt`: a checkpoint's Comet form, or the bundled default model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from comet_server.adapt.train import Recipe

_R = Recipe()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option(
    "--default",
    "build_default",
    is_flag=True,
    help="Build the bundled default model (MiniLM on the tweets task) into the cache.",
)
@click.option("--force", is_flag=True, help="With --default: rebuild even if cached.")
@click.option(
    "--data",
    default="tweets",
    show_default=True,
    help="'tweets' (bundled positive/negative task) or a CSV with columns text,label.",
)
@click.option(
    "--finetune-steps", type=click.IntRange(1), default=_R.finetune_steps, show_default=True
)
@click.option("--distil-steps", type=click.IntRange(1), default=_R.distil_steps, show_default=True)
@click.option("--batch", type=click.IntRange(1), default=_R.batch, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=_R.lr, show_default=True)
@click.option("--seed", type=int, default=_R.seed, show_default=True)
@click.option(
    "--train-embeddings",
    is_flag=True,
    help="Also train the word embeddings (then the served table is private: an HE "
    "lookup per inference). Default: frozen, served as public when the base is a known "
    "public checkpoint.",
)
@click.option(
    "--site-budget/--no-site-budget",
    default=True,
    show_default=True,
    help="Choose each approximation site's accuracy target end to end (fewer products "
    "where the model allows; about a minute). Off: every site at the default target.",
)
@click.option(
    "--range-bound",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Distil with a penalty on SMU inputs and attention scores beyond ±this bound "
    "(narrower rsqrt ranges, fewer Newton steps). Off by default: on the default model it "
    "cost accuracy without narrowing the widest sites (docs/ACCURACY.md).",
)
@click.option(
    "--range-weight",
    type=click.FloatRange(0),
    default=_R.range_weight,
    show_default=True,
    help="Weight of the --range-bound penalty.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(
    model_dir: Path | None,
    out: Path | None,
    build_default: bool,
    force: bool,
    data: str,
    finetune_steps: int,
    distil_steps: int,
    batch: int,
    lr: float,
    seed: int,
    train_embeddings: bool,
    site_budget: bool,
    range_bound: float | None,
    range_weight: float,
    quiet: bool,
) -> None:
    """Turn MODEL_DIR (a BERT/RoBERTa checkpoint) into its Comet form.

    Writes OUT/original (the classifier fine-tuned on the data, or MODEL_DIR itself when
    it already is one) and OUT/comet (its Comet form: SMU for GeLU, ReLU-softmax,
    algebraic tanh; distilled from the original), each a standard transformers
    checkpoint; OUT/comet/comet.json holds the Comet constants.
    """
    recipe = Recipe(
        finetune_steps=finetune_steps,
        distil_steps=distil_steps,
        batch=batch,
        lr=lr,
        seed=seed,
        freeze_embeddings=not train_embeddings,
        range_bound=range_bound,
        range_weight=range_weight,
    )

    def say(m: str) -> None:
        click.echo(m, err=True)

    try:
        if build_default:
            if model_dir is not None or out is not None:
                raise click.UsageError("--default takes no MODEL_DIR or --out")
            from comet_server.adapt.default import BUILD_JSON
            from comet_server.adapt.default import build_default as build

            root = build(
                recipe, force=force, say=say, show_progress=not quiet, site_budget=site_budget
            )
            report = json.loads((root / BUILD_JSON).read_text())
        else:
            if model_dir is None or out is None:
                raise click.UsageError("give MODEL_DIR and --out, or --default")
            from comet_server.adapt.pipeline import adapt

            report = adapt(
                model_dir,
                out,
                recipe,
                data=data,
                say=say,
                show_progress=not quiet,
                site_budget=site_budget,
            )
            root = out
            (out / "adapt.json").write_text(json.dumps(report, indent=2) + "\n")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        click.echo(f"comet-adapt: error: {e}", err=True)
        sys.exit(2)
    click.echo(f"original:   {root / 'original'}")
    click.echo(f"Comet form: {root / 'comet'}")
    v = report.get("val", {})
    if v:
        click.echo(
            f"validation accuracy: original {v['original_accuracy']:.4f}, "
            f"Comet form {v['comet_accuracy']:.4f}; agreement {v['agreement']:.4f}"
        )
