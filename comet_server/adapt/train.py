"""Fine-tuning and Comet distillation (the `comet-adapt` recipe).

Two stages, both full fine-tuning with AdamW on CPU:
1. `finetune`: the original checkpoint plus a fresh 2-way head, cross-entropy on the
   labels. This is the *original* model (reference set).
2. `distil`: a copy of it patched into its Comet form (`patch.comet_form`), trained to
   match the original's logits (temperature-T KL) and the labels (cross-entropy); the
   SMU constants (α, μ) train with their own, larger learning rate.
Batches are bucketed by length (tweets are short; padding is most of the cost).
Cost on this 2-core machine: about 1.3 s per step of 32 tweets (see docs/ACCURACY.md).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from comet_server.adapt.patch import CometParams, comet_form
from common.approx.exact import smu


@dataclass
class Recipe:
    """Hyper-parameters of the two stages (defaults: the bundled default model)."""

    finetune_steps: int = 120
    distil_steps: int = 200
    batch: int = 32
    max_length: int = 64
    lr: float = 5e-5
    lr_smu: float = 1e-2
    temperature: float = 2.0
    ce_weight: float = 0.5
    seed: int = 0
    threads: int = 2
    # Keep the word embeddings as the base checkpoint's: the served table is then public
    # (the client looks rows up itself) and the private lookup, the model's largest HE
    # product, disappears (docs/SECURITY.md, "Public embeddings"). `adapt` applies it
    # only to a known public base.
    freeze_embeddings: bool = True
    # Range-bounded distillation: a penalty on every rsqrt site's input beyond this bound
    # (|SMU input|, |attention score|), so the calibrated ranges — and with them the Newton
    # steps each GeLU and ReLU-softmax element pays for — shrink (`range_penalty`).
    # None: no penalty.
    range_bound: float | None = None
    range_weight: float = 1.0


Progress = Callable[[int, float], None]  # (steps done, running loss)


# SMU's rsqrt input is ((1−α)x)² + μ² ≥ μ²: a floor on μ bounds the site's range ratio
# (and so its Newton steps). Least squares alone would drive μ to 0 (ReLU-like).
MU_MIN = 0.5


def gelu_fit_smu(lo: float = -6.0, hi: float = 6.0) -> tuple[float, float]:
    """(α, μ ≥ MU_MIN) making SMU closest to GeLU (least squares, N(0, 2²) weight).

    The distillation starts there, so the Comet form starts near the original.
    """
    x = torch.linspace(lo, hi, 2001, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / 2.0) ** 2)
    target = nn.functional.gelu(x)
    a = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    raw = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([a, raw], max_iter=200, line_search_fn="strong_wolfe")

    def mu_of(r: torch.Tensor) -> torch.Tensor:
        return MU_MIN + nn.functional.softplus(r)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.sum(w * (smu(x, a, mu_of(raw)) - target) ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    return float(a.detach()), float(mu_of(raw.detach()))


def batches(
    tokenizer, texts: Sequence[str], labels: Sequence[int], recipe: Recipe, steps: int, seed: int
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """`steps` training batches: shuffled, bucketed by length, cycling over epochs."""
    rng = np.random.default_rng(seed)
    lengths = np.array([len(t) for t in texts])
    y = np.asarray(labels)
    done = 0
    while True:
        order = rng.permutation(len(texts))
        chunk = recipe.batch * 16
        groups = []
        for s in range(0, len(order), chunk):
            part = order[s : s + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            groups += [part[i : i + recipe.batch] for i in range(0, len(part), recipe.batch)]
        for g in rng.permutation(len(groups)):
            idx = groups[g]
            enc = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=recipe.max_length,
                return_tensors="pt",
            )
            yield dict(enc), torch.tensor(y[idx])
            done += 1
            if done == steps:
                return


def _schedule(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, steps // 10)

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def freeze_word_embeddings(model: nn.Module, recipe: Recipe) -> None:
    """Exclude the word-embedding table from training when the recipe asks for it."""
    if recipe.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def finetune(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[int],
    recipe: Recipe,
    progress: Progress | None = None,
) -> nn.Module:
    """Stage 1: cross-entropy fine-tuning of the whole classifier. Returns it (eval)."""
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    model.train()
    freeze_word_embeddings(model, recipe)
    opt = torch.optim.AdamW(_trainable(model), lr=recipe.lr, weight_decay=0.01)
    sched = _schedule(opt, recipe.finetune_steps)
    run = None
    it = batches(tokenizer, texts, labels, recipe, recipe.finetune_steps, recipe.seed)
    for step, (enc, y) in enumerate(it, 1):
        loss = nn.functional.cross_entropy(model(**enc).logits, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        run = loss.detach().item() if run is None else 0.9 * run + 0.1 * loss.detach().item()
        if progress:
            progress(step, run)
    return model.eval()


def distil(
    teacher: nn.Module,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[int],
    recipe: Recipe,
    progress: Progress | None = None,
) -> tuple[nn.Module, CometParams]:
    """Stage 2: the Comet form of `teacher`, distilled from it. Returns (student, params)."""
    torch.manual_seed(recipe.seed + 1)
    torch.set_num_threads(recipe.threads)
    alpha, mu = gelu_fit_smu()
    params = CometParams(alpha, mu)
    student = comet_form(copy.deepcopy(teacher), params).train()
    freeze_word_embeddings(student, recipe)
    teacher.eval()
    opt = torch.optim.AdamW(
        [
            {"params": _trainable(student), "lr": recipe.lr, "weight_decay": 0.01},
            {"params": list(params.parameters()), "lr": recipe.lr_smu, "weight_decay": 0.0},
        ]
    )
    sched = _schedule(opt, recipe.distil_steps)
    T = recipe.temperature
    run = None
    it = batches(tokenizer, texts, labels, recipe, recipe.distil_steps, recipe.seed + 1)
    bound = recipe.range_bound
    for step, (enc, y) in enumerate(it, 1):
        with torch.no_grad():
            t_logits = teacher(**enc).logits
        params.taps = [] if bound is not None else None
        s_logits = student(**enc).logits
        kl = nn.functional.kl_div(
            nn.functional.log_softmax(s_logits / T, -1),
            nn.functional.log_softmax(t_logits / T, -1),
            log_target=True,
            reduction="batchmean",
        )
        loss = (1 - recipe.ce_weight) * T * T * kl + recipe.ce_weight * (
            nn.functional.cross_entropy(s_logits, y)
        )
        if bound is not None:
            loss = loss + recipe.range_weight * range_penalty(params.taps or [], bound)
            params.taps = None
        loss.backward()
        nn.utils.clip_grad_norm_(list(student.parameters()) + list(params.parameters()), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        with torch.no_grad():
            params.mu.clamp_(min=MU_MIN)
        run = loss.detach().item() if run is None else 0.9 * run + 0.1 * loss.detach().item()
        if progress:
            progress(step, run)
    return student.eval(), params


def range_penalty(
    taps: Sequence[tuple[torch.Tensor, torch.Tensor | None]], bound: float
) -> torch.Tensor:
    """Σ over sites of mean(relu(|x| − bound)²), padded keys excluded: zero when every
    site input is within ±bound, so it moves only the outliers that set a site's range
    (and its Newton steps, `common.approx.rsqrt_fit`)."""
    total = torch.zeros(())
    for x, keep in taps:
        excess = nn.functional.relu(x.abs() - bound)
        if keep is not None:
            excess = excess * keep
        total = total + excess.square().mean()
    return total


def predict(
    model: nn.Module, tokenizer, texts: Sequence[str], max_length: int = 64, batch: int = 64
) -> np.ndarray:
    """Logits (n, labels) of `texts`, in order."""
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tokenizer(
                list(texts[i : i + batch]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            out.append(model(**enc).logits.double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2))


def accuracy(logits: np.ndarray, labels: Sequence[int]) -> float:
    return float(np.mean(logits.argmax(-1) == np.asarray(labels)))
