"""Recipe mathematics on synthetic one-tensor "models" whose validation score is known in closed form."""

import random

import pytest
import torch

from soupflow.core.average import average
from soupflow.core.evaluate import Scores
from soupflow.core.recipes import RECIPES, Ingredient, Kitchen, cook

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
    best = min(ingredients, key=lambda ing: ing.val.loss)
    return Kitchen(ingredients, score, fresh_init=lambda s: {"w": torch.randn(4, generator=torch.Generator().manual_seed(s))},
                   init=lambda: {"w": torch.zeros(4)}, base=lambda: ([best.name], best.load()), **kwargs)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("recipe", ["greedy", "greedy_random"])
def test_greedy_never_accepts_a_candidate_that_lowers_the_val_score(recipe, seed):
    observed = []
    kitchen = make_kitchen(seed=seed, observe=lambda row, state, names=None: observed.append((row.repeat, state)))
    for soup in cook(recipe, kitchen, {"repeats": 3, "seed": seed}):
        last = [state for repeat, state in observed if repeat == soup.repeat][-1]  # the last accepted state
        assert soup.state().keys() == last.keys() and all(torch.equal(soup.state()[k], last[k]) for k in last)
        accepted = [row.val_score for row in soup.trace if row.accepted]
        assert accepted == sorted(accepted)
        best_so_far = float("-inf")
        for row in soup.trace:  # Algorithm 1: accept exactly when the soup's val score does not drop
            assert row.accepted == (row.val_score >= best_so_far)
            best_so_far = max(best_so_far, row.val_score) if row.accepted else best_so_far
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
        assert soup.trace[0].val_score == pytest.approx(start.accuracy)
        assert len(soup.ingredients) < len(kitchen.ingredients)  # the worst ingredients leave
        assert soup.val == score(soup.total.mean())
        kinds = [row.kind for row in soup.trace]  # what the figure of the passes selects by
        assert kinds[0] == "start" and kinds.count("pass_end") == 3 and set(kinds) == {"start", "candidate", "pass_end"}
        ends = [row for row in soup.trace if row.kind == "pass_end"]
        assert [row.pass_number for row in ends] == [1, 2, 3] and ends[-1].val_score == soup.val.accuracy


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
    def noisy_observe(row, state, names=None):
        row.test_accuracy = random.random()

    for recipe in ("greedy", "pruned", "greedy_random", "wise_ft"):
        plain = cook(recipe, make_kitchen(), {"repeats": 2})
        observed = cook(recipe, make_kitchen(observe=noisy_observe), {"repeats": 2})
        assert [s.ingredients for s in plain] == [s.ingredients for s in observed]


def test_every_recipe_of_the_catalog_has_a_function_and_carries_its_traits():
    from soupflow.plan.catalog import RECIPES as CATALOG

    assert sorted(RECIPES) == sorted(CATALOG)  # every name of the catalog, no other
    assert all(entry.traits is CATALOG[name] and callable(entry.cook) for name, entry in RECIPES.items())


def test_no_ingredients_is_a_clear_error():
    kitchen = Kitchen([], score)
    with pytest.raises(ValueError, match="no usable ingredient"):
        cook("uniform", kitchen, {})


class NoMemo(Kitchen):
    """A kitchen that runs a val pass for every candidate, as before the memo."""

    def score(self, names, state, bar=None):
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
        assert [(r.candidate, r.accepted) for r in soup.trace] == [
            (r.candidate, r.accepted) for r in reference.trace]
    passes = sum(soup.selection_passes for soup in soups)
    assert passes == len(calls) == len(memo.scored)  # every val pass scored a set not scored before
    saved = sum(soup.selection_passes for soup in baseline) - passes
    if recipe == "pruned_random":
        assert saved >= 2  # the uniform start, shared by the 2 later repeats
    assert saved >= 0


def test_greedy_tie_gt_accepts_only_a_strict_improvement():
    """Two identical ingredients: the second leaves the val score unchanged, so ge keeps it and gt does not."""
    weights = {"w": TARGET + 0.5}
    twins = [Ingredient(name, score(weights), lambda: {"w": weights["w"].clone()}) for name in ("a", "b")]
    assert cook("greedy", Kitchen(twins, score), {"tie": "ge"})[0].ingredients == ["a", "b"]
    assert cook("greedy", Kitchen(twins, score), {"tie": "gt"})[0].ingredients == ["a"]
    best_so_far = float("-inf")
    for row in cook("greedy", make_kitchen(seed=2), {"tie": "gt"})[0].trace:
        assert row.accepted == (row.val_score > best_so_far)
        best_so_far = max(best_so_far, row.val_score) if row.accepted else best_so_far


def constructed_stock(cosine_pairs):
    """Two fine-tunes whose task vectors from θ0 = 0 have a chosen cosine, per tensor."""
    ingredients = []
    for index in range(2):
        state = {name: torch.tensor([1.0, 0.0]) if index == 0 else torch.tensor([c, (1 - c * c) ** 0.5]) * 2
                 for name, c in cosine_pairs.items()}
        ingredients.append(Ingredient(f"ft{index}", score_stock(state), lambda s=state: {k: v.clone() for k, v in s.items()}))
    return Kitchen(ingredients, score_stock, init=lambda: {name: torch.zeros(2) for name in cosine_pairs})


def score_stock(state):
    return Scores(loss=float(sum(t.sum() for t in state.values())), accuracy=0.5)


def test_model_stock_moves_each_tensor_toward_the_start_by_its_own_ratio():
    """k = 2, θ0 = 0: t = 2 cos / (1 + cos) per tensor, the soup t · (θ1 + θ2) / 2 (Jang et al., eq. 2)."""
    cosines = {"parallel": 1.0, "half": 0.5, "orthogonal": 0.0}
    soup = cook("model_stock", constructed_stock(cosines), {})[0]
    state = soup.state()
    for name, c in cosines.items():
        t = 2 * c / (1 + c)
        mean = (torch.tensor([1.0, 0.0]) + torch.tensor([c, (1 - c * c) ** 0.5]) * 2) / 2
        assert torch.allclose(state[name], t * mean, atol=1e-6), name
    assert soup.trace[0].ratio_min == pytest.approx(0.0) and soup.trace[0].ratio_max == pytest.approx(1.0)


def test_model_stock_averages_buffers_like_the_uniform_soup():
    kitchen = constructed_stock({"w": 0.0, "bn.running_mean": 0.0})
    kitchen.buffers = frozenset({"bn.running_mean"})
    state = cook("model_stock", kitchen, {})[0].state()
    assert torch.allclose(state["w"], torch.zeros(2))  # orthogonal task vectors: the start
    expected = (torch.tensor([1.0, 0.0]) + torch.tensor([0.0, 2.0])) / 2
    assert torch.allclose(state["bn.running_mean"], expected)


def test_model_stock_of_the_top_k():
    kitchen = make_kitchen()
    soup = cook("model_stock", kitchen, {"k": 3})[0]
    assert soup.ingredients == [i.name for i in kitchen.ranked("accuracy")[:3]]


def test_wise_ft_walks_from_the_start_to_the_base_and_keeps_the_best_val_alpha():
    kitchen = make_kitchen()
    names, base = kitchen.base()
    soup = cook("wise_ft", kitchen, {"alphas": [0.0, 0.5, 0.9, 1.0]})[0]
    alphas = [row.alpha for row in soup.trace]
    assert alphas == [0.0, 0.5, 0.9, 1.0]
    for row in soup.trace:
        assert row.val_score == pytest.approx(score({"w": row.alpha * base["w"]}).accuracy)
    best = max(soup.trace, key=lambda row: (row.val_score, row.alpha))
    assert [row.accepted for row in soup.trace] == [row is best for row in soup.trace]
    assert torch.allclose(soup.state()["w"], best.alpha * base["w"])
    assert soup.ingredients == names and soup.selection_passes == 4


def test_wise_ft_end_points_are_the_start_and_the_base_exactly():
    kitchen = make_kitchen()
    _, base = kitchen.base()
    assert torch.equal(cook("wise_ft", kitchen, {"alphas": [1.0]})[0].state()["w"], base["w"])
    assert torch.equal(cook("wise_ft", kitchen, {"alphas": [0.0]})[0].state()["w"], torch.zeros(4))


def two_basins(a, b):
    """Accuracy high near a or near b, low between them: the landscape of a soup that collapses."""
    def basin_score(state):
        near = max(float(torch.exp(-((state["w"] - c) ** 2).sum())) for c in (a, b))
        return Scores(loss=1 - near, accuracy=0.1 + 0.9 * near)
    return basin_score


def test_soupability_flags_a_collapsing_midpoint_and_passes_a_soupable_pair():
    from soupflow.core.recipes import soupability

    a, b = torch.zeros(4), torch.full((4,), 2.0)
    basin = two_basins(a, b)
    pair = [Ingredient(n, basin({"w": w}), (lambda w=w: {"w": w.clone()})) for n, w in (("a", a), ("b", b))]
    check = soupability(Kitchen(pair, basin), chance=0.1)
    assert check.verdict == "collapsed" and check.midpoint_accuracy < 0.15 and check.worse_accuracy == 1.0
    close = [Ingredient(n, basin({"w": w}), (lambda w=w: {"w": w.clone()})) for n, w in (("a", a), ("c", a + 0.05))]
    assert soupability(Kitchen(close, basin), chance=0.1).verdict == "ok"
    assert soupability(Kitchen(pair[:1], basin), chance=0.1) is None


def test_the_pre_check_scores_both_batchnorm_statistics_and_advises_by_the_re_estimated_one():
    """A midpoint that collapses with averaged statistics but holds re-estimated: both scores reported, the
    advice is to re-estimate; one that collapses both ways is not sent to bn: recompute."""
    from soupflow.core.recipes import soupability

    a, b = torch.zeros(4), torch.full((4,), 2.0)
    basin = two_basins(a, b)
    pair = [Ingredient(n, basin({"w": w}), (lambda w=w: {"w": w.clone()})) for n, w in (("a", a), ("b", b))]
    holds = Kitchen(pair, lambda state: Scores(loss=0.1, accuracy=0.995))  # as if re-estimated statistics fix it
    check = soupability(Kitchen(pair, basin), chance=0.1, recomputed=holds)
    assert check.verdict == "collapsed" and check.midpoint_accuracy < 0.15
    assert check.recomputed_verdict == "ok" and check.recomputed_accuracy == 0.995 and check.soupable
    assert check.advice == "soupable with re-estimated statistics: use bn: recompute"
    hopeless = soupability(Kitchen(pair, basin), chance=0.1, recomputed=Kitchen(pair, basin))
    assert hopeless.recomputed_verdict == "collapsed" and not hopeless.soupable
    assert "even with re-estimated" in hopeless.advice and "use bn: recompute" not in hopeless.advice
    plain = soupability(Kitchen(pair, basin), chance=0.1)  # no BatchNorm: nothing to re-estimate
    assert plain.recomputed_accuracy is None and "bn: recompute" not in plain.advice and not plain.soupable
    close = [Ingredient(n, basin({"w": w}), (lambda w=w: {"w": w.clone()})) for n, w in (("a", a), ("c", a + 0.05))]
    assert soupability(Kitchen(close, basin), chance=0.1, recomputed=Kitchen(close, basin)).advice == ""


def test_the_pre_check_pass_is_greedys_second_step_for_free():
    from soupflow.core.recipes import soupability

    checked, plain = make_kitchen(), make_kitchen()
    soupability(checked, chance=0.1)
    first, second = cook("greedy", checked, {})[0], cook("greedy", plain, {})[0]
    assert first.ingredients == second.ingredients
    assert first.selection_passes == second.selection_passes - 1


def tiny_data(n=600, seed=0):
    """Prepared data of n random 1x4x4 val images in 3 classes, labels from a fixed linear rule (``truth``)."""
    from soupflow.store.data import TensorData

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    truth = torch.randn(16, 3, generator=g)
    labels = ((images.float() / 255 - 0.5).flatten(1) @ truth).argmax(1)
    data = TensorData.in_memory({"val": (images, labels)}, ["a", "b", "c"], [0.5], [1.0])
    data.truth = truth
    return data


def linear_kitchen(n_runs, seed, bounded, hardest_first=False):
    """Noisy copies of the rule that labels tiny_data, scored by a real Evaluator (its select pass), walking
    the images shuffled or hardest first (as soup jobs do, from the ingredients' own logits)."""
    from soupflow.core.evaluate import Evaluator

    data = tiny_data(seed=seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3, bias=False))
    evaluator = Evaluator(model, data, "val", torch.device("cpu"), batch_size=50)
    g = torch.Generator().manual_seed(seed + 100)
    ingredients = []
    for i in range(n_runs):
        weight = data.truth.T + torch.randn(3, 16, generator=g) * (0.5 + 0.4 * i)
        state = {"1.weight": weight}
        ingredients.append(Ingredient(f"run{i}", evaluator.select(state), (lambda s=state: {k: v.clone() for k, v in s.items()})))
    if hardest_first:
        evaluator.order_hardest_first([evaluator.logits(ing.load()) for ing in ingredients])
    evaluator.images_scored = 0
    kitchen = Kitchen(ingredients, evaluator.select, bounded=evaluator.select if bounded else None,
                      init=lambda: {"1.weight": torch.randn(3, 16, generator=torch.Generator().manual_seed(7)) * 2})
    return kitchen, evaluator


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("recipe, options", [("greedy", {}), ("greedy", {"tie": "gt"}), ("greedy", {"metric": "loss"}),
                                             ("pruned", {"passes": 2}), ("pruned", {"metric": "loss"}),
                                             ("greedy_random", {"repeats": 2}), ("pruned_random", {"repeats": 2}),
                                             ("task_arithmetic", {"scales": [0.05, 0.125, 0.3, 1.0, 3.0]}),
                                             ("ties", {}), ("dare", {}), ("breadcrumbs", {})])
@pytest.mark.parametrize("hardest_first", [False, True])
def test_early_rejection_changes_no_decision_and_evaluates_fewer_images(recipe, options, seed, hardest_first):
    """Exact early rejection: the same accepted sets and the same accept/reject trace as full passes; the
    candidates it cut short are exactly rejections; never more images evaluated."""
    early_kitchen, early = linear_kitchen(8, seed, bounded=True, hardest_first=hardest_first)
    full_kitchen, full = linear_kitchen(8, seed, bounded=False, hardest_first=hardest_first)
    with_bar, without = cook(recipe, early_kitchen, dict(options)), cook(recipe, full_kitchen, dict(options))
    for soup, reference in zip(with_bar, without, strict=True):
        assert soup.ingredients == reference.ingredients
        assert [(r.candidate, r.accepted) for r in soup.trace] == [
            (r.candidate, r.accepted) for r in reference.trace]
        assert soup.val == reference.val
        for row, ref in zip(soup.trace, reference.trace):
            if row.stopped_early:
                assert not row.accepted and not ref.accepted
            else:
                assert row.val_score == ref.val_score or row.val_score != row.val_score
    assert early.images_scored <= full.images_scored


def test_early_rejection_stops_a_hopeless_candidate_within_the_first_batches():
    from soupflow.core.evaluate import Bar, Partial

    kitchen, evaluator = linear_kitchen(2, 0, bounded=True)
    perfect = evaluator.select({"1.weight": tiny_data(seed=0).truth.T.clone()})
    assert perfect.accuracy == 1.0
    evaluator.images_scored = 0
    wrong = {"1.weight": -tiny_data(seed=0).truth.T}
    stopped = evaluator.select(wrong, Bar("accuracy", perfect.accuracy))
    assert isinstance(stopped, Partial) and stopped.seen == 50 == evaluator.images_scored  # one batch: out of reach
    assert evaluator.select(wrong, resume=stopped) == evaluator.select(wrong)  # going on = a whole pass


def learned_kitchen(seed=0, n_runs=4):
    """Two-layer models on tiny_data: ingredients are noisy copies of one trained-ish model."""
    from soupflow.core.evaluate import Evaluator
    from soupflow.core.learned import Fit, fit_mixture

    data = tiny_data(seed=seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    evaluator = Evaluator(model, data, "val", torch.device("cpu"), batch_size=100)
    g = torch.Generator().manual_seed(seed)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ingredients = []
    for i in range(n_runs):
        state = {k: v + torch.randn(v.shape, generator=g) * (0.3 + 0.3 * i) for k, v in base.items()}
        ingredients.append(Ingredient(f"run{i}", evaluator.select(state), (lambda s=state: {k: v.clone() for k, v in s.items()})))

    def learn(states, options):
        return fit_mixture(evaluator.model, states, data, "val", torch.device("cpu"),
                           Fit(epochs=20, lr=0.1, batch_size=200))

    return Kitchen(ingredients, evaluator.select, learn=learn)


def test_learned_soup_is_a_convex_mixture_per_module_and_lowers_the_val_loss_of_the_uniform_soup():
    kitchen = learned_kitchen()
    soup = cook("learned", kitchen, {})[0]
    states = [ing.load() for ing in kitchen.ranked("accuracy")]
    for module in ("1", "3"):  # weight and bias of a module share one set of weights on the simplex
        names = [f"{module}.weight", f"{module}.bias"]
        stacked = torch.stack([torch.cat([s[n].flatten() for n in names]) for s in states], dim=1).double()
        mixed = torch.cat([soup.state()[n].flatten() for n in names]).double()
        weights = torch.linalg.lstsq(stacked, mixed[:, None]).solution.flatten()
        assert torch.allclose(stacked @ weights, mixed, atol=1e-5)
        assert weights.min() > -1e-4 and abs(float(weights.sum()) - 1) < 1e-4
    uniform = cook("uniform", kitchen, {})[0]
    assert soup.val.loss < uniform.val.loss
    fits = [row.val_loss for row in soup.trace if row.candidate.startswith("fit epoch")]
    assert len(fits) == 20 and fits[-1] < fits[0]


def test_learned_soup_refuses_more_ingredients_than_its_memory_cap():
    with pytest.raises(ValueError, match=r"max_memory_mb = 0.0001.*lower its k"):
        cook("learned", learned_kitchen(), {"max_memory_mb": 0.0001})


def test_hardest_first_puts_the_images_every_candidate_gets_wrong_first():
    kitchen, evaluator = linear_kitchen(6, 1, bounded=True, hardest_first=True)
    wrong = sum((evaluator.logits(ing.load()).argmax(1) != evaluator.labels).long() for ing in kitchen.ingredients)
    counts = wrong[evaluator._selection_order()[:50]]
    assert counts.tolist() == sorted(counts.tolist(), reverse=True) and counts[0] == wrong.max()


def test_task_arithmetic_is_the_start_plus_the_scaled_sum_of_task_vectors_at_the_best_val_scale():
    """θ0 + λ·Σᵢ(θᵢ − θ0), computed directly; the λ served is the one with the best val score (ties: the
    smaller). Early rejection changes no decision: test_early_rejection_changes_no_decision_…"""
    kitchen = make_kitchen()
    kitchen.init = lambda: {"w": torch.full((4,), 0.5)}
    top = kitchen.ranked("accuracy")[:3]
    scales = [0.1, 1 / 3, 0.5, 1.0]
    soup = cook("task_arithmetic", kitchen, {"k": 3, "scales": scales})[0]
    start = torch.full((4,), 0.5, dtype=torch.float64)
    direct = {scale: (start + scale * sum(i.load()["w"].double() - start for i in top)).float() for scale in scales}
    values = {scale: score({"w": w}).accuracy for scale, w in direct.items()}
    best = min(scales, key=lambda scale: (-values[scale], scale))
    assert torch.allclose(soup.state()["w"], direct[best], atol=1e-6)
    assert [row.alpha for row in soup.trace] == scales and [row.accepted for row in soup.trace] == [
        scale == best for scale in scales]
    assert all(row.val_score == pytest.approx(values[row.alpha]) for row in soup.trace)
    assert soup.ingredients == [i.name for i in top]
    uniform = average(i.load() for i in top)["w"]
    assert torch.allclose(direct[1 / 3], uniform, atol=1e-6)  # λ = 1/k is the uniform soup


def test_task_arithmetic_averages_buffers_instead_of_extrapolating_them():
    kitchen = constructed_stock({"w": 0.0, "bn.running_var": 0.0})
    kitchen.buffers = frozenset({"bn.running_var"})
    state = cook("task_arithmetic", kitchen, {"scales": [1.0]})[0].state()
    ingredients = [i.load() for i in kitchen.ingredients]
    assert torch.allclose(state["bn.running_var"], average(ingredients)["bn.running_var"])
    assert torch.allclose(state["w"], sum(i["w"] for i in ingredients))  # θ0 = 0: the plain sum at λ = 1


# ---------------------------------------------------------------- TIES, DARE, breadcrumbs against a direct computation
def _ranked_positions(values: list[float]) -> list[int]:
    """Positions by decreasing magnitude, ties to the earlier position."""
    return sorted(range(len(values)), key=lambda i: (-abs(values[i]), i))


def _band(values: list[float], density: float, gamma: float = 0.0) -> list[float]:
    order = _ranked_positions(values)
    skip = min(len(values) - 1, round(gamma * len(values)))
    kept = set(order[skip:skip + max(1, round(density * len(values)))])
    return [v if i in kept else 0.0 for i, v in enumerate(values)]


def _direct_ties(vectors: list[list[float]], density: float) -> list[float]:
    trimmed = [_band(v, density) for v in vectors]
    merged = []
    for entries in zip(*trimmed):
        elected = (sum(entries) > 0) - (sum(entries) < 0)
        agreeing = [e for e in entries if e != 0 and ((e > 0) - (e < 0)) == elected]
        merged.append(sum(agreeing) / len(agreeing) if agreeing else 0.0)
    return merged


def _direct_dare(vectors: dict[str, list[float]], shape, drop: float, seed: int) -> list[float]:
    import zlib

    merged = [0.0] * len(next(iter(vectors.values())))
    for name, values in vectors.items():
        keep = torch.rand(shape, generator=torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode())),
                          dtype=torch.float64).flatten() >= drop
        merged = [m + (v / (1 - drop) if k else 0.0) for m, v, k in zip(merged, values, keep.tolist())]
    return merged


@pytest.mark.parametrize("recipe, options", [("ties", {"density": 0.3}), ("ties", {"density": 1.0, "k": 4}),
                                             ("dare", {"drop": 0.4, "seed": 3}), ("dare", {"drop": 0.0, "k": 2}),
                                             ("breadcrumbs", {"density": 0.5, "gamma": 0.1})])
def test_task_vector_merges_equal_a_direct_computation_at_every_scale_and_serve_the_best(recipe, options):
    """Each λ's candidate is θ0 + λ·τ with τ computed here element by element from the paper's definition; the
    trace scores exactly those candidates and the soup is the one with the best val score (ties: smaller λ)."""
    kitchen, _ = linear_kitchen(6, 2, bounded=False)
    options = {"scales": [0.25, 0.5, 1.0, 1.5], **options}
    soup = cook(recipe, kitchen, dict(options))[0]
    start = kitchen.init()["1.weight"].double()
    chosen = kitchen.ranked("accuracy")[:options.get("k")]
    vectors = {i.name: (i.load()["1.weight"].double() - start).flatten().tolist() for i in chosen}
    from soupflow.plan.catalog import RECIPES as TRAITS

    defaults = TRAITS[recipe].defaults | options
    if recipe == "ties":
        merged = _direct_ties(list(vectors.values()), defaults["density"])
    elif recipe == "dare":
        merged = _direct_dare(vectors, start.shape, defaults["drop"], defaults.get("seed", 0))
    else:
        bands = [_band(v, defaults["density"], defaults["gamma"]) for v in vectors.values()]
        merged = [sum(entries) for entries in zip(*bands)]
    tau = torch.tensor(merged, dtype=torch.float64).view(start.shape)
    direct = {scale: (start + scale * tau).float() for scale in options["scales"]}
    values = {scale: kitchen.select({"1.weight": w}).accuracy for scale, w in direct.items()}
    assert [row.alpha for row in soup.trace] == options["scales"]
    assert all(row.val_score == pytest.approx(values[row.alpha]) for row in soup.trace)
    best = min(options["scales"], key=lambda scale: (-values[scale], scale))
    assert torch.allclose(soup.state()["1.weight"], direct[best], atol=1e-6)
    assert [row.accepted for row in soup.trace] == [scale == best for scale in options["scales"]]
    assert soup.ingredients == [i.name for i in chosen]


def test_ties_at_full_density_with_agreeing_signs_is_the_mean_task_vector():
    """Nothing trimmed and every sign agreeing: the disjoint mean is the plain mean, λ = 1 the uniform soup."""
    kitchen = constructed_stock({"w": 0.0})
    for ingredient in kitchen.ingredients:  # all task vectors positive
        weights = {"w": ingredient.load()["w"].abs() + 0.1}
        ingredient.load = lambda w=weights: {k: v.clone() for k, v in w.items()}
    state = cook("ties", kitchen, {"density": 1.0, "scales": [1.0]})[0].state()
    assert torch.allclose(state["w"], average(i.load() for i in kitchen.ingredients)["w"], atol=1e-6)


def test_task_vector_merges_average_buffers_and_dare_is_seeded_by_the_ingredients_name():
    kitchen = constructed_stock({"w": 0.0, "bn.running_var": 0.0})
    kitchen.buffers = frozenset({"bn.running_var"})
    ingredients = [i.load() for i in kitchen.ingredients]
    for recipe in ("ties", "dare", "breadcrumbs"):
        state = cook(recipe, kitchen, {"scales": [1.0]})[0].state()
        assert torch.allclose(state["bn.running_var"], average(ingredients)["bn.running_var"]), recipe
    again = cook("dare", kitchen, {"scales": [1.0], "seed": 1})[0].state()["w"]
    assert torch.equal(again, cook("dare", kitchen, {"scales": [1.0], "seed": 1})[0].state()["w"])
    assert not torch.equal(again, cook("dare", kitchen, {"scales": [1.0], "seed": 2})[0].state()["w"])
    from soupflow.core.task_vectors import dare, dare_generator

    dropped = dare(torch.ones(100_000, dtype=torch.float64), 0.7, dare_generator(0, "run"))
    assert abs(float((dropped == 0).double().mean()) - 0.7) < 0.01 and abs(float(dropped.mean()) - 1) < 0.02
