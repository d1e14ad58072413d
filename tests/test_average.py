import pytest
import torch

from soupflow.average import StateSum, average, weighted_average


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


def test_weighted_midpoint_matches_half_sum():
    a, b = state(0), state(1)
    mid = weighted_average([a, b], [0.5, 0.5])
    assert torch.allclose(mid["w"], (a["w"] + b["w"]) / 2, atol=1e-7)
