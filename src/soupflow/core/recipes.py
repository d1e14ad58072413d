"""Soup recipes, chosen by name in config: one registry, one function per recipe.

A recipe receives a :class:`Kitchen` (the ranked ingredients, a ``select`` function that scores a state
dict on the *validation* split, and an ``observe`` hook) plus its options, and returns one or more
:class:`Soup` outcomes. Recipes decide on validation scores only; ``observe`` lets the job record extra
(test) figures for accepted states without the recipe ever seeing them.

Recipes (names as in config):
- ``uniform``: mean of all ingredients (Wortsman et al.).
- ``greedy``: ingredients by decreasing val score; add one when the soup's val score does not drop.
- ``greedy_random``: greedy in a random order, ``repeats`` times (pruned-soup paper).
- ``pruned`` / ``pruned_random``: start from the uniform soup; ``passes`` sweeps removing an ingredient
  whenever that does not lower the val score (pruned-soup paper, Algorithm 2).
- ``topk``: uniform soup of the k best by val accuracy or val loss (Gretel's top-2 soups).
- ``best_individual``: the single best ingredient by val (the baseline every soup must beat).
- ``self_soup``: the best ingredient averaged with itself; must equal it exactly (Gretel ablation).
- ``untrained``: two freshly initialised models averaged (Gretel ablation; not expected to help).
- ``model_stock``: the average of the k best, moved per tensor toward the start θ0 by Model Stock's ratio
  (Jang et al. 2024); no selection beyond k.
- ``learned``: per-layer softmax mixing weights over the k best, fitted on val by gradient descent
  (``soupflow.core.learned``); k × the model must fit in ``max_memory_mb``.
- ``task_arithmetic``: θ0 + λ·Σᵢ (θᵢ − θ0) over the k best, λ chosen on val from ``scales`` (Ilharco et al.).
- ``ties``: θ0 + λ·τ, τ the TIES merge of the k best task vectors: trimmed to the top ``density``, signs
  elected, disjoint mean (Yadav et al.); λ from ``scales``.
- ``dare``: θ0 + λ·Σᵢ DARE(θᵢ − θ0): entries dropped with probability ``drop``, rescaled (Yu et al.).
- ``breadcrumbs``: θ0 + λ·Σᵢ band(θᵢ − θ0): the ``gamma`` largest and the smallest entries zeroed, ``density``
  kept (Davari & Belilovsky).
- ``wise_ft``: θ(α) = (1 − α)·θ0 + α·θ_base along a grid of α, the α chosen on val (Wortsman et al.'s WiSE-FT);
  the base is another soup of the config (a soup or the best individual).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

from soupflow.core.average import StateDict, StateSum, UnitDirections, interpolate, model_stock_ratio
from soupflow.core.evaluate import Bar, Partial, Scores
from soupflow.core.learned import state_megabytes
from soupflow.core.task_vectors import SignElection, dare, dare_generator, magnitude_band, moved, task_vector
from soupflow.plan.catalog import RECIPES as CATALOG
from soupflow.plan.catalog import RecipeTraits, soup_options

log = logging.getLogger("soupflow")


@dataclass
class Ingredient:
    """A fine-tuned model that may go into a soup; ``load`` reads its weights (from disk) on demand."""

    name: str
    val: Scores
    load: Callable[[], StateDict]


@dataclass
class Kitchen:
    ingredients: list[Ingredient]  # every usable ingredient, in no particular order
    select: Callable[[StateDict], Scores]  # scores a state dict on the validation split
    fresh_init: Callable[[int], StateDict] | None = None  # an untrained model, seeded
    # adds test figures to a row; ``names``: the ingredients ``state`` is the plain mean of (None: another state)
    observe: Callable[..., None] = lambda row, state, names=None: None
    init: Callable[[], StateDict] | None = None  # θ0, the weights the fine-tunes started from
    base: Callable[[], tuple[list[str], StateDict]] | None = None  # another soup: its ingredients, its weights
    buffers: frozenset[str] = frozenset()  # names of the model's buffers (BatchNorm statistics), not weights
    bounded: Callable[..., Scores | Partial] | None = None  # (state, bar, resume) -> scores, or a stopped pass
    learn: Callable[[list[StateDict], dict[str, Any]], tuple[StateDict, list[dict]]] | None = None  # on val

    scored: dict[tuple[str, ...], Scores] = field(default_factory=dict)  # val scores by ingredient multiset
    missed: dict[tuple[str, ...], tuple[Bar, Partial]] = field(default_factory=dict)  # stopped passes

    def ranked(self, metric: str) -> list[Ingredient]:
        """Ingredients by decreasing validation score (ties broken by name, for determinism)."""
        return sorted(self.ingredients, key=lambda ing: (-ing.val.value(metric), ing.name))

    def score(self, names: list[str], state: StateDict, bar: Bar | None = None) -> tuple[Scores | None, bool]:
        """The val scores of ``state`` (the soup of ``names``), and whether a val pass ran.

        A soup of the same ingredients is scored once per job: a pruned pass that tries a removal on a set it
        already tried, or the uniform start every pruned_random repeat shares, reuses the score. With ``bar``
        and a ``bounded`` scorer, the pass may stop as soon as the soup cannot reach the bar: then the scores
        are None (a certain rejection); the set is not scored again under a bar as high, and under a lower
        bar its pass goes on from where it stopped: no image is scored twice for one set.
        """
        key = tuple(sorted(names))
        if key in self.scored:
            return self.scored[key], False
        if bar is None or self.bounded is None:
            scores = self.select(state)
        else:
            missed, partial = self.missed.get(key, (None, None))
            if missed is not None and bar.implies(missed):
                return None, False  # it already missed a bar no higher than this one
            scores = self.bounded(state, bar, partial)  # a lower bar: go on from where that pass stopped
            if isinstance(scores, Partial):
                self.missed[key] = (bar, scores)
                return None, True
        self.scored[key] = scores
        return scores, True


#: what a trace row is: a soup the recipe returns as it is, a candidate tried (greedy add, pruned removal), the
#: pruned soup's uniform start and the end of each of its passes, a WiSE-FT α, a learned soup's fit epoch
TRACE_KINDS = ("soup", "candidate", "start", "pass_end", "alpha", "fit")


@dataclass
class TraceRow:
    """One candidate a recipe scored (a greedy step, a pruned removal, a WiSE-FT α, a fit epoch): a row of
    ``trace.parquet`` (``tables.TRACE_SCHEMA``). Val figures are NaN for a pass stopped early (``stopped_early``);
    ``Kitchen.observe`` adds the test figures of accepted states (reporting only: recipes never read them)."""

    step: int
    candidate: str
    accepted: bool
    n_ingredients: int
    kind: str = "candidate"  # one of TRACE_KINDS: what the row is, for tables and figures to select by
    val_score: float | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None
    stopped_early: bool | None = None
    repeat: int | None = None
    pass_number: int | None = None  # pruned: 0 = the uniform start
    alpha: float | None = None  # wise_ft
    ratio_min: float | None = None  # model_stock: Model Stock's t over the model's tensors
    ratio_median: float | None = None
    ratio_max: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None

    @classmethod
    def scored(cls, step: int, candidate: str, accepted: bool, n_ingredients: int, scores: Scores | None,
               metric: str, **extra: Any) -> "TraceRow":
        """A row with a candidate's val figures. ``scores`` None: a bounded pass stopped early (NaN figures,
        ``stopped_early``); rows of bounded passes (greedy, pruned) pass ``stopped_early=False`` otherwise."""
        row = cls(step, candidate, accepted, n_ingredients, **extra)
        if scores is None:
            row.val_score = row.val_accuracy = row.val_loss = float("nan")
            row.stopped_early = True
        else:
            row.val_score, row.val_accuracy, row.val_loss = scores.value(metric), scores.accuracy, scores.loss
        return row

    def columns(self) -> dict[str, Any]:
        """The row as ``trace.parquet`` columns (``pass`` is a Python keyword, hence ``pass_number``)."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["pass"] = row.pop("pass_number")
        return row


@dataclass
class Soup:
    ingredients: list[str]
    total: StateSum | None  # the sum of the ingredients' weights; None when ``weights`` is the soup (wise_ft, learned)
    val: Scores
    trace: list[TraceRow] = field(default_factory=list)
    repeat: int = 0
    selection_passes: int = 0
    weights: StateDict | None = None  # the soup when not ``total``'s mean (model_stock, wise_ft; greedy: its last accepted state)

    def state(self) -> StateDict:
        """The soup's weights."""
        return self.weights if self.weights is not None else self.total.mean()


@dataclass(frozen=True)
class Soupability:
    """The pre-check every soup job runs: the midpoint of the two best ingredients (by val accuracy) on val,
    against the worse of the two. ``collapsed``: the midpoint keeps less than half of that model's margin over
    chance (the BatchNorm-model collapse: a MobileNet soup at 2 %); ``barrier``: it loses more than 1 point;
    ``ok`` otherwise. One val pass, shared with greedy's second step and top-2 through the kitchen's memo.

    A BatchNorm model's midpoint is scored twice: with the statistics averaged like the weights
    (``midpoint_accuracy``, ``verdict``) and re-estimated on train images (``recomputed_accuracy``,
    ``recomputed_verdict``; None without BatchNorm). Averaged statistics alone can collapse a midpoint whose
    weights soup; the advice follows the re-estimated verdict where there is one (:func:`soupability_advice`)."""

    pair: tuple[str, str]
    midpoint_accuracy: float
    worse_accuracy: float
    verdict: str
    recomputed_accuracy: float | None = None
    recomputed_verdict: str | None = None

    @property
    def soupable(self) -> bool:
        """Whether the midpoint holds: with re-estimated statistics where they exist, else as averaged."""
        return (self.recomputed_verdict or self.verdict) == "ok"

    @property
    def advice(self) -> str:
        return soupability_advice(self.verdict, self.recomputed_verdict)


def midpoint_verdict(midpoint: float, worse: float, chance: float) -> str:
    """``collapsed``, ``barrier`` or ``ok`` for a midpoint's val accuracy against the worse of its two runs."""
    if midpoint - chance < 0.5 * (worse - chance):
        return "collapsed"
    return "barrier" if midpoint < worse - 0.01 else "ok"


def soupability_advice(verdict: str, recomputed_verdict: str | None) -> str:
    """What to do about the pre-check's verdicts ('' when the midpoint holds), following the re-estimated
    BatchNorm statistics' verdict where there is one (``recomputed_verdict`` None or n/a: no BatchNorm)."""
    if recomputed_verdict in (None, "n/a"):
        return "" if verdict == "ok" else ("lower fine-tune learning rates or share more training; `snakemake --cores "
                                           "N analysis` shows which pairs soup")
    if recomputed_verdict == "ok":
        return "" if verdict == "ok" else "soupable with re-estimated statistics: use bn: recompute"
    return (f"{recomputed_verdict} even with re-estimated BatchNorm statistics: lower fine-tune learning rates or "
            "share more training; `snakemake --cores N analysis` shows which pairs soup")


def soupability(kitchen: Kitchen, chance: float, recomputed: Kitchen | None = None) -> Soupability | None:
    """The pre-check on ``kitchen`` (which scores states as they are: averaged statistics) and, for a BatchNorm
    model, on ``recomputed`` (the same ingredients, each state scored after re-estimating its statistics)."""
    top = kitchen.ranked("accuracy")[:2]
    if len(top) < 2:
        return None
    names = [ing.name for ing in top]
    state = StateSum().add(top[0].load()).add(top[1].load()).mean()
    midpoint, _ = kitchen.score(names, state)
    worse = min(ing.val.accuracy for ing in top)
    fresh = recomputed.score(names, state)[0] if recomputed is not None else None
    return Soupability((top[0].name, top[1].name), midpoint.accuracy, worse,
                       midpoint_verdict(midpoint.accuracy, worse, chance),
                       fresh.accuracy if fresh is not None else None,
                       midpoint_verdict(fresh.accuracy, worse, chance) if fresh is not None else None)


Cook = Callable[[Kitchen, dict[str, Any]], list[Soup]]


@dataclass(frozen=True)
class Recipe:
    """A registry entry: the recipe's traits (``soupflow.plan.catalog.RECIPES``, what the workflow knows of it
    at parse time) and the function that cooks it."""

    traits: RecipeTraits
    cook: Cook


RECIPES: dict[str, Recipe] = {}


def register(name: str) -> Callable[[Cook], Cook]:
    """Register a recipe's function under a name of the catalog (a name the catalog lacks is a bug)."""
    def decorator(function: Cook) -> Cook:
        RECIPES[name] = Recipe(CATALOG[name], function)
        return function
    return decorator


def cook(recipe: str, kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    """The soups of one recipe; ``options`` as a soup entry of the config (absent options at their defaults)."""
    if recipe not in RECIPES:
        raise KeyError(f"unknown soup recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
    if not kitchen.ingredients and recipe != "untrained":
        raise ValueError(f"soup recipe {recipe!r} has no usable ingredient (every run failed or diverged?)")
    return RECIPES[recipe].cook(kitchen, soup_options({**options, "recipe": recipe}))


def _uniform_of(kitchen: Kitchen, chosen: list[Ingredient], metric: str, label: str) -> Soup:
    total = StateSum()
    for ingredient in chosen:
        total.add(ingredient.load())
    state = total.mean()
    scores, evaluated = kitchen.score([i.name for i in chosen], state)  # a set another recipe scored: no pass
    row = TraceRow.scored(len(chosen), label, True, total.count, scores, metric, kind="soup")
    kitchen.observe(row, state, [i.name for i in chosen])
    return Soup([i.name for i in chosen], total, scores, [row], selection_passes=int(evaluated))


@register("uniform")
def uniform(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric = options["metric"]
    return [_uniform_of(kitchen, kitchen.ranked(metric), metric, "all")]


@register("topk")
def topk(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric, k = options["metric"], int(options["k"])
    return [_uniform_of(kitchen, kitchen.ranked(metric)[:k], metric, f"top{k}")]


@register("best_individual")
def best_individual(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric = options["metric"]
    return [_uniform_of(kitchen, kitchen.ranked(metric)[:1], metric, "best")]


@register("self_soup")
def self_soup(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric = options["metric"]
    best = kitchen.ranked(metric)[0]
    return [_uniform_of(kitchen, [best, best], metric, "self")]


@register("untrained")
def untrained(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    if kitchen.fresh_init is None:
        raise ValueError("the untrained ablation needs a model factory")
    metric, seed = options["metric"], int(options["seed"])
    fresh = [Ingredient(f"untrained-seed{s}", Scores(float("nan"), float("nan")),
                        (lambda s=s: kitchen.fresh_init(s))) for s in (seed, seed + 1)]
    return [_uniform_of(kitchen, fresh, metric, "untrained")]


def _shown(scores: Scores | None, metric: str) -> str:
    return "(stopped early: out of reach)" if scores is None else f"{scores.value(metric):.4f}"


def improves(score: float, best: Scores | None, metric: str, tie: str) -> bool:
    """Greedy's acceptance test: ``ge`` keeps a candidate that does not lower the val score (the paper's
    Algorithm 1), ``gt`` only one that raises it (the authors' main.py)."""
    if best is None:
        return True
    return score >= best.value(metric) if tie == "ge" else score > best.value(metric)


def greedy_pass(kitchen: Kitchen, order: list[Ingredient], metric: str, options: dict[str, Any],
                repeat: int = 0) -> Soup:
    """Algorithm 1: try each ingredient in ``order``; keep it when the val score is >= the best so far
    (``tie: gt``: only when it is higher); at most ``max_ingredients``."""
    max_ingredients, tie = options["max_ingredients"], options["tie"]
    total, chosen, trace, best, passes = StateSum(), [], [], None, 0
    served = None  # the last accepted state: what val scored (taking a rejected candidate away again drifts)
    for step, ingredient in enumerate(order, start=1):
        if max_ingredients is not None and total.count >= max_ingredients:
            break
        weights = ingredient.load()
        total.add(weights)
        state = total.mean()
        bar = Bar(metric, best.value(metric), strict=tie == "gt") if best is not None else None
        scores, evaluated = kitchen.score(chosen + [ingredient.name], state, bar)
        passes += evaluated
        accepted = scores is not None and improves(scores.value(metric), best, metric, tie)
        row = TraceRow.scored(step, ingredient.name, accepted, total.count if accepted else total.count - 1, scores,
                              metric, repeat=repeat, stopped_early=False)
        log.info("greedy%s step %d: %s val %s %s -> %s", f" repeat {repeat}" if repeat else "", step,
                 ingredient.name, metric, _shown(scores, metric), "accepted" if accepted else "rejected")
        if accepted:
            best = scores
            chosen.append(ingredient.name)
            served = state
            kitchen.observe(row, state, chosen)
        else:
            total.subtract(weights)
        trace.append(row)
    return Soup(chosen, total, best, trace, repeat, passes, weights=served)


@register("greedy")
def greedy(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric = options["metric"]
    return [greedy_pass(kitchen, kitchen.ranked(metric), metric, options)]


def _shuffled(kitchen: Kitchen, metric: str, seed: int) -> list[Ingredient]:
    order = kitchen.ranked(metric)  # a deterministic starting order, then a seeded shuffle
    random.Random(seed).shuffle(order)
    return order


@register("greedy_random")
def greedy_random(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric, seed = options["metric"], int(options["seed"])
    return [greedy_pass(kitchen, _shuffled(kitchen, metric, seed + r), metric, options, r)
            for r in range(int(options["repeats"]))]


def pruned_passes(kitchen: Kitchen, metric: str, passes: int, max_ingredients: int | None,
                  order_for_pass: Callable[[int, list[Ingredient]], list[Ingredient]], repeat: int = 0) -> Soup:
    """Algorithm 2: start uniform; each pass tries removing every ingredient still in the soup and keeps a
    removal when the val score does not drop. ``max_ingredients`` starts from the top ones by val."""
    pool = kitchen.ranked(metric)[:max_ingredients] if max_ingredients else kitchen.ranked(metric)
    total = StateSum()
    for ingredient in pool:
        total.add(ingredient.load())
    inside = {ing.name: ing for ing in pool}
    state = total.mean()
    best, evaluated = kitchen.score(list(inside), state)
    evaluations = int(evaluated)
    start = TraceRow.scored(0, "uniform start", True, total.count, best, metric, kind="start", repeat=repeat,
                            pass_number=0)
    kitchen.observe(start, state, list(inside))
    trace = [start]
    for pass_number in range(1, passes + 1):
        for ingredient in order_for_pass(pass_number, [inside[n] for n in inside]):
            if total.count <= 1:
                break
            weights = ingredient.load()
            total.subtract(weights)
            scores, evaluated = kitchen.score([n for n in inside if n != ingredient.name], total.mean(),
                                              Bar(metric, best.value(metric)))
            evaluations += evaluated
            removed = scores is not None and scores.value(metric) >= best.value(metric)
            log.info("pruned pass %d: without %s val %s %s -> %s", pass_number, ingredient.name, metric,
                     _shown(scores, metric), "removed" if removed else "kept")
            trace.append(TraceRow.scored(len(trace), ingredient.name, removed,
                                         total.count if removed else total.count + 1, scores, metric,
                                         repeat=repeat, pass_number=pass_number, stopped_early=False))
            if removed:
                best = scores
                del inside[ingredient.name]
            else:
                total.add(weights)
        end = TraceRow.scored(len(trace), f"end of pass {pass_number}", True, total.count, best, metric, kind="pass_end",
                              repeat=repeat, pass_number=pass_number)
        kitchen.observe(end, total.mean(), list(inside))
        trace.append(end)
    return Soup(list(inside), total, best, trace, repeat, evaluations)


@register("pruned")
def pruned(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    """Removal order: from the worst-ranked ingredient up, so weak ingredients leave first."""
    metric = options["metric"]
    worst_first = lambda _pass, members: list(reversed(members))  # noqa: E731  members are ranked best-first
    return [pruned_passes(kitchen, metric, int(options["passes"]), options["max_ingredients"], worst_first)]


@register("pruned_random")
def pruned_random(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric, seed = options["metric"], int(options["seed"])

    def run(repeat: int) -> Soup:
        def order(pass_number: int, members: list[Ingredient]) -> list[Ingredient]:
            members = list(members)
            random.Random(f"{seed + repeat}-{pass_number}").shuffle(members)
            return members
        return pruned_passes(kitchen, metric, int(options["passes"]), options["max_ingredients"], order, repeat)

    return [run(r) for r in range(int(options["repeats"]))]


def _anchor(kitchen: Kitchen, recipe: str) -> StateDict:
    if kitchen.init is None:
        raise ValueError(f"soup recipe {recipe!r} needs the weights the fine-tunes started from")
    return kitchen.init()


@register("model_stock")
def model_stock(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    """Model Stock over the ``k`` best ingredients by val (all by default), one streamed pass.

    Per weight tensor: t = k·cos / (1 + (k − 1)·cos) with cos the mean pairwise cosine of the k task vectors
    θᵢ − θ0 (for k > 2 the mean over all pairs, as mergekit and fusion_bench do), then θ0 + t·(mean − θ0).
    Buffers (BatchNorm running statistics) are not weights and have no task direction: they are averaged as
    in the uniform soup (t = 1); with ``bn: recompute`` they are re-estimated instead.
    """
    metric, k = options["metric"], options["k"]
    start = _anchor(kitchen, "model_stock")
    total, directions = StateSum(), UnitDirections(start)
    for ingredient in kitchen.ranked(metric)[:k]:
        weights = ingredient.load()
        total.add(weights)
        directions.add(weights)
    ratios = {name: model_stock_ratio(total.count, directions.mean_cosine(name))
              for name in directions.start if name not in kitchen.buffers}
    state = interpolate(start, total.mean(), ratios)
    scores = kitchen.select(state)
    values = sorted(ratios.values())
    log.info("model stock of %d: ratio t from %.3f to %.3f (median %.3f) over %d tensors", total.count, values[0],
             values[-1], values[len(values) // 2], len(values))
    row = TraceRow.scored(total.count, "model stock", True, total.count, scores, metric, kind="soup", ratio_min=values[0],
                          ratio_median=values[len(values) // 2], ratio_max=values[-1])
    kitchen.observe(row, state)
    names = [ing.name for ing in kitchen.ranked(metric)[:k]]
    return [Soup(names, total, scores, [row], selection_passes=1, weights=state)]


@register("wise_ft")
def wise_ft(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    """WiSE-FT: θ(α) = (1 − α)·θ0 + α·θ_base for each α of ``alphas`` (0, 0.1, …, 1 by default); the α with
    the best val score wins (ties: the larger α, nearer the base). Every α's val and test scores go to the
    trace: the robustness curve of the paper, here on the configured splits."""
    if kitchen.base is None:
        raise ValueError("soup recipe 'wise_ft' needs a base soup")
    metric = options["metric"]
    start = _anchor(kitchen, "wise_ft")
    names, base = kitchen.base()
    best: tuple[Scores, StateDict, TraceRow] | None = None
    trace = []
    for step, alpha in enumerate(sorted(float(a) for a in options["alphas"])):
        state = interpolate(start, base, alpha)
        scores = kitchen.select(state)
        row = TraceRow.scored(step, f"alpha {alpha:g}", False, len(names), scores, metric, kind="alpha", alpha=alpha)
        log.info("wise_ft alpha %g: val %s %.4f", alpha, metric, scores.value(metric))
        kitchen.observe(row, state)
        trace.append(row)
        if best is None or scores.value(metric) >= best[0].value(metric):
            best = (scores, state, row)
    best[2].accepted = True
    return [Soup(list(names), None, best[0], trace, selection_passes=len(trace), weights=best[1])]


def _scale_search(kitchen: Kitchen, options: dict[str, Any], chosen: list[Ingredient], total: StateSum,
                  candidate: Callable[[float], StateDict], label: str) -> list[Soup]:
    """The task-vector merges' selection: ``candidate(λ)`` for each λ of ``scales``, the best val score wins
    (ties: the smaller λ). With ``early_rejection`` a λ's val pass stops once it cannot beat the best so far.
    Every λ is a trace row (kind ``alpha``, λ in ``alpha``) with its test figures when it was scored."""
    metric, names = options["metric"], [ingredient.name for ingredient in chosen]
    best: tuple[Scores, StateDict, TraceRow] | None = None
    trace, passes = [], 0
    for step, scale in enumerate(sorted(float(s) for s in options["scales"])):
        state = candidate(scale)
        bar = Bar(metric, best[0].value(metric), strict=True) if best and options["early_rejection"] else None
        scores, evaluated = kitchen.score([*names, f"{label} × {scale:g}"], state, bar)
        passes += evaluated
        row = TraceRow.scored(step, f"lambda {scale:g}", False, total.count, scores, metric, kind="alpha",
                              alpha=scale, stopped_early=scores is None)
        log.info("%s lambda %g: val %s %s", label, scale, metric, _shown(scores, metric))
        if scores is not None:
            kitchen.observe(row, state)
            if best is None or scores.value(metric) > best[0].value(metric):
                best = (scores, state, row)
        trace.append(row)
    best[2].accepted = True
    return [Soup(names, total, best[0], trace, selection_passes=passes, weights=best[1])]


def _weight_names(kitchen: Kitchen, state: StateDict) -> list[str]:
    """The tensors of ``state`` that have a task direction: floating weights, not buffers."""
    return [name for name, tensor in state.items() if tensor.is_floating_point() and name not in kitchen.buffers]


@register("task_arithmetic")
def task_arithmetic(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    """Task arithmetic (Ilharco et al. 2023): θ(λ) = θ0 + λ·Σᵢ (θᵢ − θ0) over the ``k`` best ingredients by val
    (all by default), for each λ of ``scales`` (``_scale_search``). Σᵢ (θᵢ − θ0) is k·(mean − θ0), so
    θ(λ) = interpolate(θ0, mean, k·λ): λ = 1/k is the uniform soup, larger λ extrapolate. Buffers (BatchNorm
    statistics) are no task vectors: averaged as in ``uniform`` (extrapolated, a running variance can turn
    negative); ``bn: recompute`` re-estimates them."""
    start = _anchor(kitchen, "task_arithmetic")
    chosen, total = kitchen.ranked(options["metric"])[:options["k"]], StateSum()
    for ingredient in chosen:
        total.add(ingredient.load())
    mean = total.mean()
    return _scale_search(kitchen, options, chosen, total, lambda scale: interpolate(
        start, mean, {name: 1.0 if name in kitchen.buffers else scale * total.count for name in mean}), "task vectors")


def _sparsified_sum(kitchen: Kitchen, chosen: list[Ingredient], start: StateDict,
                    sparsify: Callable[[Ingredient, str, torch.Tensor], torch.Tensor]) -> tuple[StateDict, StateSum]:
    """Σᵢ sparsify(τᵢ) per weight tensor, streamed (one ingredient in memory at a time), and the plain sum of
    the ingredients (whose mean gives the buffers)."""
    merged: StateDict = {}
    total = StateSum()
    for ingredient in chosen:
        weights = ingredient.load()
        total.add(weights)
        for name in _weight_names(kitchen, weights):
            vector = sparsify(ingredient, name, task_vector(weights[name], start[name]))
            merged[name] = merged[name] + vector if name in merged else vector
    return merged, total


@register("dare")
def dare_merge(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    """DARE (Yu et al. 2024) with task arithmetic: each ingredient's task vector has every entry dropped with
    probability ``drop`` and the rest rescaled by 1 / (1 − drop) (seeded by the entry's ``seed`` and the
    ingredient's name), then θ(λ) = θ0 + λ·Σᵢ DARE(τᵢ), λ from ``scales`` chosen on val. Buffers: the mean."""
    start, drop, seed = _anchor(kitchen, "dare"), float(options["drop"]), int(options["seed"])
    chosen = kitchen.ranked(options["metric"])[:options["k"]]
    streams: dict[str, torch.Generator] = {}

    def sparsify(ingredient: Ingredient, name: str, vector: torch.Tensor) -> torch.Tensor:
        stream = streams.setdefault(ingredient.name, dare_generator(seed, ingredient.name))  # tensors in order
        return dare(vector, drop, stream)

    merged, total = _sparsified_sum(kitchen, chosen, start, sparsify)
    mean = total.mean()
    return _scale_search(kitchen, options, chosen, total, lambda scale: moved(start, merged, scale, mean),
                         f"dare p={drop:g} seed {seed}")


@register("breadcrumbs")
def breadcrumbs(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    """Model Breadcrumbs (Davari & Belilovsky 2024) with task arithmetic: per tensor of each task vector, the
    ``gamma`` largest entries by magnitude (outliers) and everything below the next ``density`` of them
    (noise) are zeroed (``magnitude_band``), then θ(λ) = θ0 + λ·Σᵢ band(τᵢ), λ from ``scales`` chosen on val.
    Buffers: the mean."""
    start, density, gamma = _anchor(kitchen, "breadcrumbs"), float(options["density"]), float(options["gamma"])
    chosen = kitchen.ranked(options["metric"])[:options["k"]]
    merged, total = _sparsified_sum(
        kitchen, chosen, start, lambda _, name, vector: vector * magnitude_band(vector, density, gamma))
    mean = total.mean()
    return _scale_search(kitchen, options, chosen, total, lambda scale: moved(start, merged, scale, mean),
                         f"breadcrumbs density {density:g} gamma {gamma:g}")


@register("ties")
def ties(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    """TIES-merging (Yadav et al. 2023): each task vector trimmed to its top ``density`` entries by magnitude
    per tensor, each entry's sign elected by the sum of the trimmed vectors, then the disjoint mean of the
    entries that agree with it (``SignElection``); θ(λ) = θ0 + λ·merged, λ from ``scales`` chosen on val (the
    paper's λ = 1 is among the defaults). Two streamed passes over the ingredients. Buffers: the mean."""
    start, density = _anchor(kitchen, "ties"), float(options["density"])
    chosen, total, election = kitchen.ranked(options["metric"])[:options["k"]], StateSum(), SignElection()

    def trimmed(weights: StateDict) -> StateDict:
        vectors = {name: task_vector(weights[name], start[name]) for name in _weight_names(kitchen, weights)}
        return {name: vector * magnitude_band(vector, density) for name, vector in vectors.items()}

    for ingredient in chosen:
        weights = ingredient.load()
        total.add(weights)
        election.vote(trimmed(weights))
    for ingredient in chosen:
        election.agree(trimmed(ingredient.load()))
    merged, mean = election.merged(), total.mean()
    return _scale_search(kitchen, options, chosen, total, lambda scale: moved(start, merged, scale, mean),
                         f"ties density {density:g}")


@register("learned")
def learned(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    """A learned soup of the ``k`` best ingredients by val (all by default): per-layer mixing weights fitted
    on the val split (the model-soups authors' learned soup). Holds the k ingredients in memory at once, so
    k × the model's size is capped by ``max_memory_mb`` (default 4096) with an error naming both options."""
    if kitchen.learn is None:
        raise ValueError("soup recipe 'learned' needs a model and the val split to fit on")
    metric, k = options["metric"], options["k"]
    chosen = kitchen.ranked(metric)[:k]
    first = chosen[0].load()
    needed, cap = state_megabytes(first) * len(chosen), float(options["max_memory_mb"])
    if needed > cap:
        raise ValueError(f"soup recipe 'learned' would hold {len(chosen)} ingredients x {state_megabytes(first):.1f} MB "
                         f"= {needed:.0f} MB in memory, over its max_memory_mb = {cap:g}; lower its k or raise "
                         "max_memory_mb")
    states = [first] + [ingredient.load() for ingredient in chosen[1:]]
    state, history = kitchen.learn(states, options)
    scores = kitchen.select(state)
    trace = [TraceRow(row["epoch"], f"fit epoch {row['epoch']}", False, len(chosen), "fit", val_loss=row["fit_loss"])
             for row in history]
    for row in history:
        log.info("learned soup: fit epoch %d, mean val-batch loss %.4f", row["epoch"], row["fit_loss"])
    final = TraceRow.scored(len(history) + 1, "learned", True, len(chosen), scores, metric, kind="soup")
    kitchen.observe(final, state)
    return [Soup([ing.name for ing in chosen], None, scores, trace + [final], selection_passes=1, weights=state)]
