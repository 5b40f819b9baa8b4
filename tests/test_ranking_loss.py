"""Ranking losses against brute force: explicit pair loops and Plackett–Luce products in plain floats."""

import itertools
import math
import random

import pytest
import torch

from rlpost.algorithms.ranking_loss import (
    RANKING_LOSSES,
    all_pairs_loss,
    best_worst_ranks,
    centering_penalty,
    plackett_luce_loss,
    tie_broken_order,
    untied_pairs,
)

SCORES = [0.3, -1.2, 0.7, 2.1, -0.4]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def brute_all_pairs(scores: list[float], ranks: list[int], margin: float) -> float:
    losses = []
    for i in range(len(scores)):
        for j in range(len(scores)):
            if ranks[i] < ranks[j]:
                losses.append(-log_sigmoid(scores[i] - scores[j] - margin))
    return sum(losses) / len(losses)


def brute_centering(scores: list[float], ranks: list[int]) -> float:
    sums = [(scores[i] + scores[j]) ** 2 for i in range(len(scores)) for j in range(len(scores)) if ranks[i] < ranks[j]]
    return sum(sums) / len(sums)


def brute_pl_probability(scores: list[float], order: list[int]) -> float:
    probability = 1.0
    for t in range(len(order)):
        probability *= math.exp(scores[order[t]]) / sum(math.exp(scores[u]) for u in order[t:])
    return probability


def ranks_of(order: list[int]) -> list[int]:
    ranks = [0] * len(order)
    for tier, index in enumerate(order):
        ranks[index] = tier
    return ranks


@pytest.mark.parametrize("margin", [0.0, 0.5])
@pytest.mark.parametrize("ranks", [[1, 3, 0, 2, 4], [0, 1, 1, 2, 0], [2, 2, 0, 2, 1]])
def test_all_pairs_equals_double_loop(ranks, margin):
    loss = all_pairs_loss(torch.tensor(SCORES, dtype=torch.float64), ranks, margin=margin)
    assert loss.item() == pytest.approx(brute_all_pairs(SCORES, ranks, margin), abs=1e-12)


def test_all_pairs_hand_computed_pair():
    # one pair, s_better - s_worse = 0: -log sigmoid(0) = ln 2; with margin 1: log(1 + e)
    assert all_pairs_loss(torch.tensor([1.0, 1.0]), [0, 1]).item() == pytest.approx(math.log(2))
    assert all_pairs_loss(torch.tensor([1.0, 1.0]), [0, 1], margin=1.0).item() == pytest.approx(math.log1p(math.e))


def test_plackett_luce_is_normalised_probability_of_strict_ranking():
    scores = SCORES[:4]
    tensor = torch.tensor(scores, dtype=torch.float64)
    total = 0.0
    for order in itertools.permutations(range(4)):
        loss = plackett_luce_loss(tensor, ranks_of(list(order)), random.Random(0))
        probability = brute_pl_probability(scores, list(order))
        assert math.exp(-(4 - 1) * loss.item()) == pytest.approx(probability, rel=1e-10)
        total += probability
    assert total == pytest.approx(1.0, abs=1e-12)


def test_plackett_luce_with_two_responses_is_all_pairs():
    for scores, ranks in [([0.4, -0.9], [0, 1]), ([0.4, -0.9], [1, 0]), ([3.0, 3.0], [0, 1])]:
        tensor = torch.tensor(scores, dtype=torch.float64)
        pl = plackett_luce_loss(tensor, ranks, random.Random(0))
        assert pl.item() == pytest.approx(all_pairs_loss(tensor, ranks, margin=0.0).item(), abs=1e-12)


def test_plackett_luce_ties_average_the_consistent_strict_orders():
    # tiers: {0, 4} best, then 2, then {1, 3}: 2 * 2 = 4 consistent strict orders
    ranks = [0, 2, 1, 2, 0]
    tensor = torch.tensor(SCORES, dtype=torch.float64)
    consistent = [[a, b, 2, c, d] for a, b in itertools.permutations([0, 4]) for c, d in itertools.permutations([1, 3])]
    order_loss = {tuple(o): -math.log(brute_pl_probability(SCORES, o)) / 4 for o in consistent}
    assert len({round(v, 9) for v in order_loss.values()}) == 4  # each draw identifies its order

    generator = random.Random(1234)
    draws = 4000
    seen = {order: 0 for order in order_loss}
    total = 0.0
    for _ in range(draws):
        loss = plackett_luce_loss(tensor, ranks, generator).item()
        order = min(order_loss, key=lambda o: abs(order_loss[o] - loss))
        assert loss == pytest.approx(order_loss[order], abs=1e-10)
        seen[order] += 1
        total += loss
    # Every tie order appears, about equally often (binomial sd of a count is ~27).
    assert all(abs(count - draws / 4) < 150 for count in seen.values()), seen
    expected = sum(order_loss.values()) / 4
    spread = max(order_loss.values()) - min(order_loss.values())
    assert total / draws == pytest.approx(expected, abs=0.05 * spread)


def test_plackett_luce_tie_order_comes_from_the_generator():
    ranks = [0, 0, 0, 1, 1]
    tensor = torch.tensor(SCORES)
    first = [plackett_luce_loss(tensor, ranks, random.Random(7)).item() for _ in range(3)]
    assert first[0] == first[1] == first[2]
    one_generator = random.Random(7)
    losses = {plackett_luce_loss(tensor, ranks, one_generator).item() for _ in range(50)}
    assert len(losses) > 1  # a fresh tie order per call


@pytest.mark.parametrize("name", sorted(RANKING_LOSSES))
def test_all_tied_ranking_has_zero_loss_and_zero_gradient(name):
    scores = torch.tensor(SCORES, requires_grad=True)
    loss = RANKING_LOSSES[name](scores, [3, 3, 3, 3, 3], margin=0.5, generator=random.Random(0), centering=0.3)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros(5))


def test_best_worst_ranks_with_ties_at_both_ends():
    # best tier {1, 3}: first is 1; worst tier {0, 4}: last is 4
    assert best_worst_ranks([2, 0, 1, 0, 2]) == (1, 4)
    assert best_worst_ranks([0, 1]) == (0, 1)
    assert best_worst_ranks([1, 0]) == (1, 0)


def test_best_worst_loss_is_all_pairs_on_the_reduced_pair():
    ranks = [2, 0, 1, 0, 2]
    loss = RANKING_LOSSES["best_worst"](torch.tensor(SCORES), ranks, margin=0.3, generator=random.Random(0))
    expected = -log_sigmoid(SCORES[1] - SCORES[4] - 0.3)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_registry_entries_match_the_functions():
    tensor = torch.tensor(SCORES, dtype=torch.float64)
    ranks = [1, 3, 0, 2, 2]
    via_registry = RANKING_LOSSES["all_pairs"](tensor, ranks, margin=0.2, generator=random.Random(0))
    assert via_registry.item() == pytest.approx(all_pairs_loss(tensor, ranks, margin=0.2).item(), abs=1e-12)
    via_registry = RANKING_LOSSES["plackett_luce"](tensor, ranks, margin=0.2, generator=random.Random(5))
    direct = plackett_luce_loss(tensor, ranks, random.Random(5))
    assert via_registry.item() == pytest.approx(direct.item(), abs=1e-12)


def test_untied_pairs_skip_ties_in_row_major_order():
    better, worse = untied_pairs([1, 0, 1, 2])
    assert list(zip(better.tolist(), worse.tolist())) == [(0, 3), (1, 0), (1, 2), (1, 3), (2, 3)]
    better, worse = untied_pairs([4, 4])
    assert better.numel() == worse.numel() == 0


def test_tie_broken_order_keeps_the_tiers():
    order = tie_broken_order([1, 0, 1, 0, 2], random.Random(3))
    assert sorted(order[:2]) == [1, 3] and sorted(order[2:4]) == [0, 2] and order[4] == 4


def test_centering_penalty_by_hand():
    scores = torch.tensor([1.0, -2.0, 3.0])
    # pairs (0, 1), (0, 2), (1, 2): sums -1, 4, 1 -> squares 1, 16, 1 -> mean 6
    assert centering_penalty(scores, [0, 1, 2], 0.01).item() == pytest.approx(0.06)
    # 0 and 1 tied: pairs (0, 2), (1, 2): sums 4, 1 -> mean of 16 and 1
    assert centering_penalty(scores, [0, 0, 1], 0.01).item() == pytest.approx(0.085)
    # one pair: (s_c + s_r)^2 = (1 - 2)^2 = 1, whatever the order
    assert centering_penalty(scores[:2], [1, 0], 0.5).item() == pytest.approx(0.5)


def test_centering_penalty_of_an_all_tied_ranking_is_a_connected_zero():
    scores = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    penalty = centering_penalty(scores, [2, 2, 2], 1.0)
    assert penalty.item() == 0.0
    penalty.backward()
    assert torch.equal(scores.grad, torch.zeros(3))


def test_centering_moves_the_offset_and_keeps_a_pair_difference():
    # The published penalty's gradient on a pair is 2(s_c + s_r)·(1, 1): the offset moves toward 0
    # and the difference stays. A mean(s^2) penalty would shrink the difference as well.
    scores = torch.tensor([3.0, 1.0], requires_grad=True)
    centering_penalty(scores, [0, 1], 1.0).backward()
    assert scores.grad.tolist() == pytest.approx([8.0, 8.0])  # 2 * (3 + 1)
    stepped = (scores - 0.1 * scores.grad).detach()
    assert (stepped[0] - stepped[1]).item() == pytest.approx(2.0)
    assert abs(stepped.sum().item()) < 4.0
    squares = scores.detach().clone().requires_grad_(True)
    squares.pow(2).mean().backward()
    shrunk = (squares - 0.1 * squares.grad).detach()
    assert (shrunk[0] - shrunk[1]).item() == pytest.approx(1.8)  # (3 - 0.3) - (1 - 0.1)


def test_registry_adds_centering_over_the_pairs_each_loss_trains_on():
    tensor = torch.tensor(SCORES, dtype=torch.float64)
    ranks = [2, 0, 1, 0, 3]
    for name in ("all_pairs", "plackett_luce"):
        plain = RANKING_LOSSES[name](tensor, ranks, margin=0.2, generator=random.Random(5))
        centred = RANKING_LOSSES[name](tensor, ranks, margin=0.2, generator=random.Random(5), centering=0.1)
        expected = 0.1 * brute_centering(SCORES, ranks)
        assert (centred - plain).item() == pytest.approx(expected, abs=1e-12)
    # best_worst sees one pair, (1, 4): its centring is (s_1 + s_4)^2 only
    plain = RANKING_LOSSES["best_worst"](tensor, ranks, margin=0.2, generator=random.Random(0))
    centred = RANKING_LOSSES["best_worst"](tensor, ranks, margin=0.2, generator=random.Random(0), centering=0.1)
    assert (centred - plain).item() == pytest.approx(0.1 * (SCORES[1] + SCORES[4]) ** 2, abs=1e-12)


@pytest.mark.parametrize("name", sorted(RANKING_LOSSES))
def test_one_sgd_step_raises_the_better_score(name):
    ranks = [2, 0, 1, 0, 3]  # 1 and 3 best, 4 worst
    scores = torch.tensor(SCORES, requires_grad=True)
    loss = RANKING_LOSSES[name](scores, ranks, margin=0.0, generator=random.Random(0))
    loss.backward()
    assert scores.grad is not None and bool(scores.grad.abs().sum() > 0)
    with torch.no_grad():
        stepped = scores - 0.1 * scores.grad
    gap_before = (scores[1] - scores[4]).item()
    gap_after = (stepped[1] - stepped[4]).item()
    assert gap_after > gap_before


def test_shape_errors():
    with pytest.raises(ValueError, match="ranks"):
        all_pairs_loss(torch.tensor([1.0, 2.0]), [0, 1, 2])
    with pytest.raises(ValueError, match="1-D"):
        plackett_luce_loss(torch.tensor([[1.0, 2.0]]), [0, 1], random.Random(0))
