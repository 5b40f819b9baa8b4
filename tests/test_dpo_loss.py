"""DPO losses against hand-computed values: the pairwise sigmoid and IPO losses, a ranking as its
untied pairs, the listwise Plackett–Luce form and the TRL-named metrics."""

import itertools
import math
import random

import pytest
import torch

from rlpost.algorithms import (
    DPO_LOSSES,
    dpo_metrics,
    dpo_sigmoid_loss,
    ipo_loss,
    plackett_luce_dpo_loss,
    ranking_dpo_loss,
)
from rlpost.algorithms.ranking_loss import tie_broken_order

# chosen: policy -1, reference -2 (log-ratio +1); rejected: policy -3, reference -2 (log-ratio -1): h = 2
PAIR = [torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])]


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_sigmoid_loss_by_hand():
    # -log sigmoid(0.5 * 2) = log(1 + e^-1)
    assert dpo_sigmoid_loss(*PAIR, beta=0.5).item() == pytest.approx(math.log1p(math.exp(-1)))
    # equal log-ratios: h = 0, loss log 2 whatever β
    assert dpo_sigmoid_loss(t(-5.0), t(-7.0), t(-4.0), t(-6.0), beta=3.0).item() == pytest.approx(math.log(2))
    # the rejected response preferred by the policy: h = -2, -log sigmoid(-1) = log(1 + e)
    assert dpo_sigmoid_loss(PAIR[1], PAIR[0], PAIR[2], PAIR[3], beta=0.5).item() == pytest.approx(math.log1p(math.e))


def test_ipo_loss_by_hand():
    assert ipo_loss(*PAIR, beta=0.5).item() == pytest.approx(1.0)  # (2 - 1)^2
    assert ipo_loss(*PAIR, beta=0.25).item() == pytest.approx(0.0)  # h on its target 1/(2β) = 2
    assert ipo_loss(*PAIR, beta=1.0).item() == pytest.approx(2.25)  # (2 - 0.5)^2
    # h = 0: (1/(2β))^2
    assert ipo_loss(t(-1.0), t(-1.0), t(-1.0), t(-1.0), beta=0.1).item() == pytest.approx(25.0)


def test_ipo_pushes_h_toward_its_target_from_both_sides():
    for start, direction in [(3.0, -1.0), (1.0, 1.0)]:  # target 1/(2·0.25) = 2
        chosen = torch.tensor([start], requires_grad=True)
        zero = torch.zeros(1)
        ipo_loss(chosen, zero, zero, zero, beta=0.25).sum().backward()
        assert math.copysign(1.0, -chosen.grad.item()) == direction


def test_pair_losses_are_per_pair_and_raise_the_chosen():
    policy_chosen = torch.tensor([-1.0, -4.0, -2.0], requires_grad=True)
    policy_rejected = torch.tensor([-3.0, -1.0, -2.0], requires_grad=True)
    reference = torch.tensor([-2.0, -2.0, -2.0])
    losses = dpo_sigmoid_loss(policy_chosen, policy_rejected, reference, reference, beta=1.0)
    assert losses.shape == (3,)
    # h per pair: 2, -3, 0
    expected = [math.log1p(math.exp(-2)), math.log1p(math.exp(3)), math.log(2)]
    assert losses.tolist() == pytest.approx(expected)
    losses.sum().backward()
    assert bool((policy_chosen.grad < 0).all()) and bool((policy_rejected.grad > 0).all())


def test_registry_and_shape_errors():
    assert DPO_LOSSES == {"sigmoid": dpo_sigmoid_loss, "ipo": ipo_loss}
    with pytest.raises(ValueError, match="one shape"):
        dpo_sigmoid_loss(t(1.0, 2.0), t(1.0), t(1.0), t(1.0), beta=0.1)


def test_ranking_loss_is_the_mean_over_untied_pairs():
    # u = π - r = [1, -1, 1, 0]; ranks: 0 and 2 tied best, then 3, then 1
    policy, reference = t(-1.0, -3.0, 0.0, -2.0), t(-2.0, -2.0, -1.0, -2.0)
    ranks = [0, 2, 0, 1]
    # untied pairs (0,1) (0,3) (2,1) (2,3) (3,1): h = 2, 1, 2, 1, 1 with β = 1
    sigmoid = [math.log1p(math.exp(-h)) for h in (2, 1, 2, 1, 1)]
    loss = ranking_dpo_loss(policy, reference, ranks, beta=1.0)
    assert loss.item() == pytest.approx(sum(sigmoid) / 5)
    # IPO with β = 0.5: target 1, so (h - 1)^2 = 1, 0, 1, 0, 0
    assert ranking_dpo_loss(policy, reference, ranks, beta=0.5, loss_type="ipo").item() == pytest.approx(2 / 5)


def test_ranking_loss_of_an_all_tied_ranking_is_a_connected_zero():
    policy = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    loss = ranking_dpo_loss(policy, torch.zeros(3), [1, 1, 1], beta=0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(policy.grad, torch.zeros(3))


def test_ranking_loss_errors():
    with pytest.raises(ValueError, match="unknown DPO loss 'hinge'"):
        ranking_dpo_loss(t(1.0, 2.0), t(1.0, 2.0), [0, 1], beta=0.1, loss_type="hinge")
    with pytest.raises(ValueError, match="ranking of 3"):
        ranking_dpo_loss(t(1.0, 2.0), t(1.0, 2.0), [0, 1, 2], beta=0.1)
    with pytest.raises(ValueError, match="reference"):
        ranking_dpo_loss(t(1.0, 2.0), t(1.0, 2.0, 3.0), [0, 1], beta=0.1)


def test_plackett_luce_by_hand():
    # β·u = [1, 0, -1] in the order given: log(e^1 + e^0 + e^-1) - 1 + log(e^0 + e^-1) - 0
    policy, reference = t(1.0, 0.0, -1.0), t(0.0, 0.0, 0.0)
    expected = math.log(math.e + 1 + math.exp(-1)) - 1 + math.log(1 + math.exp(-1))
    assert plackett_luce_dpo_loss(policy, reference, [0, 1, 2], beta=1.0).item() == pytest.approx(expected)
    # the order is read from `order`, not from the positions: the reverse order
    reverse = math.log(math.exp(-1) + 1 + math.e) + 1 + math.log(1 + math.e)
    assert plackett_luce_dpo_loss(policy, reference, [2, 1, 0], beta=1.0).item() == pytest.approx(reverse)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_plackett_luce_with_two_responses_is_the_pairwise_sigmoid_loss(beta):
    policy, reference = t(-4.0, -6.5), t(-5.0, -5.5)
    for chosen, rejected in [(0, 1), (1, 0)]:
        listwise = plackett_luce_dpo_loss(policy, reference, [chosen, rejected], beta=beta)
        pairwise = dpo_sigmoid_loss(policy[chosen], policy[rejected], reference[chosen], reference[rejected], beta=beta)
        assert listwise.item() == pytest.approx(pairwise.item(), abs=1e-12)


def test_plackett_luce_orders_are_a_probability_distribution():
    policy, reference = t(-3.0, -1.0, -2.5, -4.0), t(-2.0, -2.0, -3.0, -3.5)
    total = sum(
        math.exp(-plackett_luce_dpo_loss(policy, reference, list(order), beta=0.7).item())
        for order in itertools.permutations(range(4))
    )
    assert total == pytest.approx(1.0, abs=1e-12)


def test_plackett_luce_with_ties_takes_a_tie_broken_order():
    # u = [-1, 1, 0.5]; ranks [1, 0, 1]: response 1 first, then 0 and 2 in either order
    policy, reference = t(-3.0, -1.0, -2.5), t(-2.0, -2.0, -3.0)
    by_order = {
        (1, 0, 2): math.log(math.e + math.exp(-1) + math.exp(0.5)) - 1 + math.log(math.exp(-1) + math.exp(0.5)) + 1,
        (1, 2, 0): math.log(math.e + math.exp(0.5) + math.exp(-1)) - 1 + math.log(math.exp(0.5) + math.exp(-1)) - 0.5,
    }
    generator = random.Random(0)
    seen = set()
    for _ in range(20):
        order = tuple(tie_broken_order([1, 0, 1], generator))
        seen.add(order)
        assert plackett_luce_dpo_loss(policy, reference, order, beta=1.0).item() == pytest.approx(by_order[order])
    assert seen == set(by_order)
    with pytest.raises(ValueError, match="each of 0..2 once"):
        plackett_luce_dpo_loss(policy, reference, [1, 1, 0], beta=1.0)


def test_metrics_by_hand():
    # pair 1: chosen log-ratio +1, rejected -1; pair 2: chosen -0.5, rejected +0.5 (a miss)
    metrics = dpo_metrics(t(-1.0, -3.0), t(-3.0, -1.5), t(-2.0, -2.5), t(-2.0, -2.0), beta=0.5)
    assert metrics == pytest.approx(
        {
            "rewards/chosen": (0.5 - 0.25) / 2,
            "rewards/rejected": (-0.5 + 0.25) / 2,
            "rewards/accuracies": 0.5,
            "rewards/margins": (1.0 - 0.5) / 2,
            "logps/chosen": -2.0,
            "logps/rejected": -2.25,
        }
    )
