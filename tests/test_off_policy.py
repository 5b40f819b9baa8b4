"""Unit tests for the off-policy corrections of rlpost.algorithms against values worked out by hand."""

import math

import torch

from rlpost.algorithms import (
    OFF_POLICY_CORRECTIONS,
    no_correction,
    sequence_mask_weights,
    token_mask_weights,
    truncated_importance_weights,
)

LN2 = 0.6931471805599453


def close(actual, expected, atol=1e-5):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def test_off_policy_correction_registry():
    assert OFF_POLICY_CORRECTIONS == {
        "none": no_correction,
        "tis": truncated_importance_weights,
        "token_mask": token_mask_weights,
        "sequence_mask": sequence_mask_weights,
    }


def test_no_correction():
    weights, corrected = no_correction(torch.tensor([[-1.0, 5.0]]), torch.tensor([[-50.0, 0.0]]), None, 2.0, [0.5, 2.0])
    close(weights, [[1.0, 1.0]])
    assert corrected.tolist() == [[False, False]]


def test_truncated_importance_weights():
    # pi_old / pi_sampler = 0.5, 3, 1 and e^100 (overflow-safe), capped at 2
    old = torch.tensor([[math.log(0.5), math.log(3.0) - 1.0, -2.0, 0.0]], requires_grad=True)
    sampling = torch.tensor([[0.0, -1.0, -2.0, -100.0]])
    weights, capped = truncated_importance_weights(old, sampling, None, cap=2.0, band=[0.5, 2.0])
    close(weights, [[0.5, 2.0, 1.0, 2.0]])
    assert capped.tolist() == [[False, True, False, True]]
    assert not weights.requires_grad  # a constant factor of the loss, not a path for gradients


def test_token_mask_drops_tokens_outside_the_band():
    # pi_old / pi_sampler = .4, .5 (edge, kept), 1, 2 (edge, kept), 2.5 and e^100 (overflow-safe)
    old = torch.tensor([[math.log(0.4), math.log(0.5), -3.0, math.log(2.0), math.log(2.5), 0.0]], requires_grad=True)
    sampling = torch.tensor([[0.0, 0.0, -3.0, 0.0, 0.0, -100.0]])
    weights, dropped = token_mask_weights(old, sampling, None, 0.0, [0.5, 2.0])
    close(weights, [[0.0, 1.0, 1.0, 1.0, 0.0, 0.0]])
    assert dropped.tolist() == [[True, False, False, False, True, True]]
    assert not weights.requires_grad


def test_sequence_mask_drops_whole_sequences_by_their_geometric_mean_ratio():
    # Log-ratios per row and the geometric-mean ratio of the masked tokens, band [.5, 2]:
    #   row 0: (ln 3, -ln 3)            -> 1: kept, though token_mask would drop both tokens
    #   row 1: (ln 2, ln 2 | garbage)   -> 2: on the edge, kept
    #   row 2: (ln 9, 0)                -> 3: dropped, both tokens
    #   row 3: nothing masked           -> 1: kept
    ln3 = math.log(3.0)
    log_ratios = torch.tensor([[ln3, -ln3, 0.0], [LN2, LN2, 100.0], [math.log(9.0), 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    sampling = torch.full((4, 3), -2.0)
    weights, dropped = sequence_mask_weights(sampling + log_ratios, sampling, mask, 0.0, [0.5, 2.0])
    close(weights, [[1.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3])
    assert dropped.tolist() == [[False] * 3, [False] * 3, [True] * 3, [False] * 3]
    token_weights, _ = token_mask_weights(sampling + log_ratios, sampling, mask, 0.0, [0.5, 2.0])
    close(token_weights[0, :2], [0.0, 0.0])
