"""Recipe mathematics on synthetic one-tensor "models" whose validation score is known in closed form."""

import random

import pytest
import torch

from soupflow.average import average
from soupflow.evaluate import Scores
from soupflow.recipes import RECIPES, Ingredient, Kitchen, cook

TARGET = torch.tensor([1.0, -2.0, 0.5, 3.0])


def score(state) -> Scores:
    """Higher accuracy the closer the weights are to TARGET; loss is the squared distance."""
    distance = float(((state["w"] - TARGET) ** 2).sum())
    return Scores(loss=distance, accuracy=1.0 / (1.0 + distance))


def make_kitchen(n=8, seed=0, observe=None):
    g = torch.Generator().manual_seed(seed)
    ingredients = []
    for i in range(n):
        noise = torch.randn(4, generator=g) * (0.3 + i * 0.4)  # later ones are worse
        weights = {"w": TARGET + noise}
        ingredients.append(Ingredient(f"run{i}", score(weights), (lambda w=weights: {"w": w["w"].clone()})))
    random.Random(seed).shuffle(ingredients)
    kwargs = {} if observe is None else {"observe": observe}
    return Kitchen(ingredients, score, fresh_init=lambda s: {"w": torch.randn(4, generator=torch.Generator().manual_seed(s))}, **kwargs)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("recipe", ["greedy", "greedy_random"])
def test_greedy_never_accepts_a_candidate_that_lowers_the_val_score(recipe, seed):
    kitchen = make_kitchen(seed=seed)
    for soup in cook(recipe, kitchen, {"repeats": 3, "seed": seed}):
        accepted = [row["val_score"] for row in soup.trace if row["accepted"]]
        assert accepted == sorted(accepted)
        best_so_far = float("-inf")
        for row in soup.trace:  # Algorithm 1: accept exactly when the soup's val score does not drop
            assert row["accepted"] == (row["val_score"] >= best_so_far)
            best_so_far = max(best_so_far, row["val_score"]) if row["accepted"] else best_so_far
        assert soup.val == score(soup.total.mean())
        assert soup.val.accuracy == pytest.approx(accepted[-1])


def test_sorted_greedy_starts_from_the_best_individual_and_beats_it_on_val():
    kitchen = make_kitchen()
    best = kitchen.ranked("accuracy")[0]
    soup = cook("greedy", kitchen, {})[0]
    assert soup.ingredients[0] == best.name
    assert soup.val.accuracy >= best.val.accuracy
    assert len(soup.ingredients) > 1  # noisy copies of one target: averaging helps here


def test_greedy_soup_weights_are_the_mean_of_its_ingredients():
    kitchen = make_kitchen()
    soup = cook("greedy", kitchen, {})[0]
    by_name = {i.name: i for i in kitchen.ingredients}
    expected = average(by_name[n].load() for n in soup.ingredients)
    assert torch.allclose(soup.total.mean()["w"], expected["w"], atol=1e-7)


def test_max_ingredients_caps_greedy():
    soup = cook("greedy", make_kitchen(n=10), {"max_ingredients": 2})[0]
    assert len(soup.ingredients) <= 2


@pytest.mark.parametrize("recipe", ["pruned", "pruned_random"])
@pytest.mark.parametrize("seed", range(4))
def test_pruned_never_ends_below_its_uniform_start(recipe, seed):
    kitchen = make_kitchen(seed=seed)
    start = score(average(i.load() for i in kitchen.ingredients))
    for soup in cook(recipe, kitchen, {"passes": 3, "repeats": 2, "seed": seed}):
        assert soup.val.accuracy >= start.accuracy
        assert soup.trace[0]["val_score"] == pytest.approx(start.accuracy)
        assert len(soup.ingredients) < len(kitchen.ingredients)  # the worst ingredients leave
        assert soup.val == score(soup.total.mean())


def test_topk_by_loss_takes_the_lowest_val_losses():
    kitchen = make_kitchen()
    soup = cook("topk", kitchen, {"k": 2, "metric": "loss"})[0]
    lowest = sorted(kitchen.ingredients, key=lambda i: i.val.loss)[:2]
    assert sorted(soup.ingredients) == sorted(i.name for i in lowest)


def test_self_soup_equals_the_best_model_exactly():
    kitchen = make_kitchen()
    soup = cook("self_soup", kitchen, {})[0]
    best = kitchen.ranked("accuracy")[0]
    assert torch.equal(soup.total.mean()["w"], best.load()["w"])


def test_untrained_soup_averages_two_fresh_models():
    kitchen = make_kitchen()
    soup = cook("untrained", kitchen, {"seed": 3})[0]
    expected = (kitchen.fresh_init(3)["w"] + kitchen.fresh_init(4)["w"]) / 2
    assert torch.allclose(soup.total.mean()["w"], expected)


def test_random_orders_are_seeded():
    first = [s.ingredients for s in cook("greedy_random", make_kitchen(), {"repeats": 3, "seed": 1})]
    again = [s.ingredients for s in cook("greedy_random", make_kitchen(), {"repeats": 3, "seed": 1})]
    assert first == again


def test_recipes_decide_without_what_observe_records():
    """Selection is blind to the test figures the job records through observe."""
    def noisy_observe(row, state):
        row["test_accuracy"] = random.random()

    for recipe in ("greedy", "pruned", "greedy_random"):
        plain = cook(recipe, make_kitchen(), {"repeats": 2})
        observed = cook(recipe, make_kitchen(observe=noisy_observe), {"repeats": 2})
        assert [s.ingredients for s in plain] == [s.ingredients for s in observed]


def test_every_recipe_in_the_schema_is_registered():
    from soupflow.config import load_schema

    names = load_schema()["properties"]["soups"]["items"]["properties"]["recipe"]["enum"]
    assert sorted(names) == sorted(RECIPES)


def test_no_ingredients_is_a_clear_error():
    kitchen = Kitchen([], score)
    with pytest.raises(ValueError, match="no usable ingredient"):
        cook("uniform", kitchen, {})


class NoMemo(Kitchen):
    """A kitchen that runs a val pass for every candidate, as before the memo."""

    def score(self, names, state):
        return self.select(state), True


@pytest.mark.parametrize("recipe", ["pruned_random", "greedy_random", "pruned", "greedy"])
def test_a_set_of_ingredients_is_scored_once_per_job_and_selection_is_unchanged(recipe):
    """The memo of scored ingredient sets saves val passes and changes no decision."""
    memo, calls = make_kitchen(), []
    memo.select = lambda state: calls.append(1) or score(state)
    plain = make_kitchen()
    plain.__class__ = NoMemo
    options = {"repeats": 3, "seed": 1, "passes": 3}
    soups, baseline = cook(recipe, memo, options), cook(recipe, plain, options)
    for soup, reference in zip(soups, baseline, strict=True):
        assert soup.ingredients == reference.ingredients
        assert [(r["candidate"], r["accepted"]) for r in soup.trace] == [
            (r["candidate"], r["accepted"]) for r in reference.trace]
    passes = sum(soup.selection_passes for soup in soups)
    assert passes == len(calls) == len(memo.scored)  # every val pass scored a set not scored before
    saved = sum(soup.selection_passes for soup in baseline) - passes
    if recipe == "pruned_random":
        assert saved >= 2  # the uniform start, shared by the 2 later repeats
    assert saved >= 0
