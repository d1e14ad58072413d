import pytest
import torch

from soupflow.core.average import StateSum, UnitDirections, average, interpolate, model_stock_ratio


def state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g).half(),
            "bn.num_batches_tracked": torch.tensor(seed + 10)}


def test_uniform_average_is_the_exact_mean_per_tensor():
    states = [state(s) for s in range(7)]
    soup = average(iter(states))  # consumed one at a time
    expected = torch.stack([s["w"].double() for s in states]).mean(0).float()
    assert torch.equal(soup["w"], expected)
    assert soup["b"].dtype == torch.float16
    assert torch.equal(soup["b"], torch.stack([s["b"].double() for s in states]).mean(0).half())


def test_integer_buffers_come_from_the_first_ingredient():
    soup = average([state(3), state(1), state(2)])
    assert soup["bn.num_batches_tracked"].item() == 13


def test_adding_then_removing_an_ingredient_restores_the_soup():
    total = StateSum().add(state(0)).add(state(1))
    before = total.mean()
    total.add(state(2)).subtract(state(2))
    after = total.mean()
    assert total.count == 2
    assert torch.allclose(before["w"], after["w"], atol=0, rtol=1e-12)


def test_a_model_souped_with_itself_is_itself():
    one = state(4)
    soup = average([one, one])
    for name in one:
        assert torch.equal(soup[name], one[name])


def test_ingredients_of_another_architecture_are_refused():
    total = StateSum().add(state(0))
    with pytest.raises(ValueError, match="architecture"):
        total.add({"w": torch.zeros(5, 3)})


def test_cannot_remove_the_last_ingredient():
    with pytest.raises(ValueError):
        StateSum().add(state(0)).subtract(state(0))


def test_interpolation_ends_are_the_two_states_and_the_midpoint_is_their_mean():
    a, b = state(0), state(1)
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    assert torch.allclose(interpolate(a, b, 0.5)["w"], (a["w"] + b["w"]) / 2, atol=1e-7)
    per_tensor = interpolate(a, b, {"w": 0.25})  # names left out move all the way (α = 1)
    assert torch.allclose(per_tensor["w"], 0.75 * a["w"] + 0.25 * b["w"], atol=1e-7)
    assert torch.equal(per_tensor["bn.num_batches_tracked"], b["bn.num_batches_tracked"])


def test_mean_pairwise_cosine_of_task_vectors_from_the_streamed_sum():
    """Three task vectors with known pairwise cosines (0, 0.6, 0.8): the mean 0.4667, computed in one pass."""
    origin = {"w": torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)}
    deltas = [torch.tensor(d, dtype=torch.float64) for d in ([1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.8, 2.4, 0.0])]
    directions = UnitDirections(origin)
    for delta in deltas:
        directions.add({"w": origin["w"] + delta})
    pairwise = [torch.nn.functional.cosine_similarity(deltas[i], deltas[j], dim=0) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert directions.mean_cosine("w") == pytest.approx(float(sum(pairwise) / 3), abs=1e-12)
    assert directions.mean_cosine("w") == pytest.approx((0 + 0.6 + 0.8) / 3, abs=1e-12)


def test_a_tensor_no_fine_tune_moved_has_cosine_one():
    origin = {"w": torch.ones(4)}
    directions = UnitDirections(origin)
    directions.add(origin)
    directions.add(origin)
    assert directions.mean_cosine("w") == 1.0


@pytest.mark.parametrize("k, cosine, expected", [(2, 1.0, 1.0), (2, 0.5, 2 * 0.5 / 1.5), (5, 0.2, 1.0 / 1.8),
                                                 (3, 0.0, 0.0), (3, -0.4, 0.0)])
def test_model_stock_ratio(k, cosine, expected):
    """t = k·cos / (1 + (k − 1)·cos): 1 for parallel task vectors, 0 for orthogonal ones (the start)."""
    assert model_stock_ratio(k, cosine) == pytest.approx(expected)
