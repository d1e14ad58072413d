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
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from soupflow.average import StateDict, StateSum
from soupflow.evaluate import Scores

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
    observe: Callable[[dict[str, Any], StateDict], None] = lambda row, state: None

    scored: dict[tuple[str, ...], Scores] = field(default_factory=dict)  # val scores by ingredient multiset

    def ranked(self, metric: str) -> list[Ingredient]:
        """Ingredients by decreasing validation score (ties broken by name, for determinism)."""
        return sorted(self.ingredients, key=lambda ing: (-ing.val.value(metric), ing.name))

    def score(self, names: list[str], state: StateDict) -> tuple[Scores, bool]:
        """The val scores of ``state`` (the soup of ``names``), and whether a val pass ran.

        A soup of the same ingredients is scored once per job: a pruned pass that tries a removal on a set it
        already tried, or the uniform start every pruned_random repeat shares, reuses the score.
        """
        key = tuple(sorted(names))
        if key in self.scored:
            return self.scored[key], False
        self.scored[key] = self.select(state)
        return self.scored[key], True


@dataclass
class Soup:
    ingredients: list[str]
    total: StateSum
    val: Scores
    trace: list[dict[str, Any]] = field(default_factory=list)
    repeat: int = 0
    selection_passes: int = 0


Recipe = Callable[[Kitchen, dict[str, Any]], list[Soup]]
RECIPES: dict[str, Recipe] = {}


def register(name: str) -> Callable[[Recipe], Recipe]:
    def decorator(function: Recipe) -> Recipe:
        RECIPES[name] = function
        return function
    return decorator


def cook(recipe: str, kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    if recipe not in RECIPES:
        raise KeyError(f"unknown soup recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
    if not kitchen.ingredients and recipe != "untrained":
        raise ValueError(f"soup recipe {recipe!r} has no usable ingredient (every run failed or diverged?)")
    return RECIPES[recipe](kitchen, options)


def _uniform_of(kitchen: Kitchen, chosen: list[Ingredient], metric: str, label: str) -> Soup:
    total = StateSum()
    for ingredient in chosen:
        total.add(ingredient.load())
    state = total.mean()
    scores = kitchen.select(state)
    row = {"step": len(chosen), "candidate": label, "accepted": True, "n_ingredients": total.count,
           "val_score": scores.value(metric), "val_accuracy": scores.accuracy, "val_loss": scores.loss}
    kitchen.observe(row, state)
    return Soup([i.name for i in chosen], total, scores, [row], selection_passes=1)


@register("uniform")
def uniform(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric = options.get("metric", "accuracy")
    return [_uniform_of(kitchen, kitchen.ranked(metric), metric, "all")]


@register("topk")
def topk(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric, k = options.get("metric", "accuracy"), int(options.get("k", 2))
    return [_uniform_of(kitchen, kitchen.ranked(metric)[:k], metric, f"top{k}")]


@register("best_individual")
def best_individual(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric = options.get("metric", "accuracy")
    return [_uniform_of(kitchen, kitchen.ranked(metric)[:1], metric, "best")]


@register("self_soup")
def self_soup(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric = options.get("metric", "accuracy")
    best = kitchen.ranked(metric)[0]
    return [_uniform_of(kitchen, [best, best], metric, "self")]


@register("untrained")
def untrained(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    if kitchen.fresh_init is None:
        raise ValueError("the untrained ablation needs a model factory")
    metric, seed = options.get("metric", "accuracy"), int(options.get("seed", 0))
    fresh = [Ingredient(f"untrained-seed{s}", Scores(float("nan"), float("nan")),
                        (lambda s=s: kitchen.fresh_init(s))) for s in (seed, seed + 1)]
    return [_uniform_of(kitchen, fresh, metric, "untrained")]


def greedy_pass(kitchen: Kitchen, order: list[Ingredient], metric: str, max_ingredients: int | None,
                repeat: int = 0) -> Soup:
    """Algorithm 1: try each ingredient in ``order``; keep it when the val score is >= the best so far."""
    total, chosen, trace, best, passes = StateSum(), [], [], None, 0
    for step, ingredient in enumerate(order, start=1):
        if max_ingredients is not None and total.count >= max_ingredients:
            break
        weights = ingredient.load()
        total.add(weights)
        state = total.mean()
        scores, evaluated = kitchen.score(chosen + [ingredient.name], state)
        passes += evaluated
        accepted = best is None or scores.value(metric) >= best.value(metric)
        row = {"repeat": repeat, "step": step, "candidate": ingredient.name, "accepted": accepted,
               "n_ingredients": total.count if accepted else total.count - 1,
               "val_score": scores.value(metric), "val_accuracy": scores.accuracy, "val_loss": scores.loss}
        log.info("greedy%s step %d: %s val %s %.4f -> %s", f" repeat {repeat}" if repeat else "", step,
                 ingredient.name, metric, scores.value(metric), "accepted" if accepted else "rejected")
        if accepted:
            best = scores
            chosen.append(ingredient.name)
            kitchen.observe(row, state)
        else:
            total.subtract(weights)
        trace.append(row)
    return Soup(chosen, total, best, trace, repeat, passes)


@register("greedy")
def greedy(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric = options.get("metric", "accuracy")
    return [greedy_pass(kitchen, kitchen.ranked(metric), metric, options.get("max_ingredients"))]


def _shuffled(kitchen: Kitchen, metric: str, seed: int) -> list[Ingredient]:
    order = kitchen.ranked(metric)  # a deterministic starting order, then a seeded shuffle
    random.Random(seed).shuffle(order)
    return order


@register("greedy_random")
def greedy_random(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric, seed = options.get("metric", "accuracy"), int(options.get("seed", 0))
    return [greedy_pass(kitchen, _shuffled(kitchen, metric, seed + r), metric, options.get("max_ingredients"), r)
            for r in range(int(options.get("repeats", 5)))]


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
    start = {"repeat": repeat, "pass": 0, "step": 0, "candidate": "uniform start", "accepted": True,
             "n_ingredients": total.count, "val_score": best.value(metric), "val_accuracy": best.accuracy,
             "val_loss": best.loss}
    kitchen.observe(start, state)
    trace = [start]
    for pass_number in range(1, passes + 1):
        for ingredient in order_for_pass(pass_number, [inside[n] for n in inside]):
            if total.count <= 1:
                break
            weights = ingredient.load()
            total.subtract(weights)
            scores, evaluated = kitchen.score([n for n in inside if n != ingredient.name], total.mean())
            evaluations += evaluated
            removed = scores.value(metric) >= best.value(metric)
            log.info("pruned pass %d: without %s val %s %.4f -> %s", pass_number, ingredient.name, metric,
                     scores.value(metric), "removed" if removed else "kept")
            trace.append({"repeat": repeat, "pass": pass_number, "step": len(trace), "candidate": ingredient.name,
                          "accepted": removed, "n_ingredients": total.count if removed else total.count + 1,
                          "val_score": scores.value(metric), "val_accuracy": scores.accuracy, "val_loss": scores.loss})
            if removed:
                best = scores
                del inside[ingredient.name]
            else:
                total.add(weights)
        end = {"repeat": repeat, "pass": pass_number, "step": len(trace), "candidate": f"end of pass {pass_number}",
               "accepted": True, "n_ingredients": total.count, "val_score": best.value(metric),
               "val_accuracy": best.accuracy, "val_loss": best.loss}
        kitchen.observe(end, total.mean())
        trace.append(end)
    return Soup(list(inside), total, best, trace, repeat, evaluations)


@register("pruned")
def pruned(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    """Removal order: from the worst-ranked ingredient up, so weak ingredients leave first."""
    metric = options.get("metric", "accuracy")
    worst_first = lambda _pass, members: list(reversed(members))  # noqa: E731  members are ranked best-first
    return [pruned_passes(kitchen, metric, int(options.get("passes", 3)), options.get("max_ingredients"), worst_first)]


@register("pruned_random")
def pruned_random(kitchen: Kitchen, options: dict[str, Any]) -> list[Soup]:
    metric, seed = options.get("metric", "accuracy"), int(options.get("seed", 0))

    def run(repeat: int) -> Soup:
        def order(pass_number: int, members: list[Ingredient]) -> list[Ingredient]:
            members = list(members)
            random.Random(f"{seed + repeat}-{pass_number}").shuffle(members)
            return members
        return pruned_passes(kitchen, metric, int(options.get("passes", 3)), options.get("max_ingredients"), order, repeat)

    return [run(r) for r in range(int(options.get("repeats", 5)))]
