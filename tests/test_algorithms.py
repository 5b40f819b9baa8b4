"""Unit tests for rlpost.algorithms against values worked out by hand."""

import math

import pytest
import torch

from rlpost.algorithms import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    adaptive_kl_coef,
    aggregate_loss,
    cispo_loss,
    drgrpo_advantages,
    explained_variance,
    gae_advantages,
    grpo_advantages,
    gspo_loss,
    kl_penalty,
    loss_count,
    loss_sum,
    masked_mean,
    masked_whiten,
    ppo_clip_loss,
    rloo_advantages,
    token_rewards,
    truncation_mask,
    value_loss,
    zero_variance_groups,
)

NAN = float("nan")
SQRT3 = math.sqrt(3.0)
LN2 = 0.6931471805599453


def close(actual, expected, atol=1e-5):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---------------------------------------------------------------- advantages


def test_grpo_population_std():
    # group 1: mean 0.5, population std 0.5 -> +-1
    # group 2: constant -> 0 (eps keeps it finite)
    # group 3: mean 0.75, deviations (-.75, -.75, -.75, 2.25), var 6.75/4, std 0.75*sqrt(3)
    rewards = torch.tensor([1.0, 0, 0, 1, 2, 2, 2, 2, 0, 0, 0, 3])
    adv = grpo_advantages(rewards, group_size=4)
    close(adv, [1, -1, -1, 1, 0, 0, 0, 0, -1 / SQRT3, -1 / SQRT3, -1 / SQRT3, SQRT3])


def test_grpo_nan_rewards():
    # valid (1, 0): mean .5, std .5; a lone valid member and an all-NaN group give 0
    rewards = torch.tensor([1.0, NAN, 0, NAN, NAN, NAN, NAN, 5, NAN, NAN, NAN, NAN])
    adv = grpo_advantages(rewards, group_size=4)
    close(adv, [1, 0, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0])


def test_drgrpo():
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 3])
    close(drgrpo_advantages(rewards, 4), [0.5, -0.5, -0.5, 0.5, -0.75, -0.75, -0.75, 2.25])


def test_drgrpo_nan_rewards():
    # valid (1, 0, 0): mean 1/3
    rewards = torch.tensor([1.0, NAN, 0, 0])
    close(drgrpo_advantages(rewards, 4), [2 / 3, 0, -1 / 3, -1 / 3])


def test_rloo():
    # (1,0,0,1): sample 0 vs mean(0,0,1)=1/3 -> 2/3; sample 1 vs mean(1,0,1)=2/3 -> -2/3
    # (0,0,0,3): sample 0 vs mean(0,0,3)=1 -> -1; sample 3 vs mean(0,0,0)=0 -> 3
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 3])
    close(rloo_advantages(rewards, 4), [2 / 3, -2 / 3, -2 / 3, 2 / 3, -1, -1, -1, 3])


def test_rloo_nan_rewards():
    # valid (1, 0, 4): 1 - (0+4)/2 = -1; 0 - (1+4)/2 = -2.5; 4 - (1+0)/2 = 3.5
    # a lone valid member has no leave-one-out baseline -> 0
    rewards = torch.tensor([1.0, NAN, 0, 4, NAN, 7, NAN, NAN])
    close(rloo_advantages(rewards, 4), [-1, 0, -2.5, 3.5, 0, 0, 0, 0])


def test_group_layout_checked():
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(6), group_size=4)
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "drgrpo", "rloo"}
    assert ADVANTAGE_ESTIMATORS["rloo"] is rloo_advantages


def test_gae_masked():
    # gamma .9, lam .5 over rewards (0,0,1), values (.2,.4,.6):
    #   t2: delta = 1 - .6 = .4                        A = .4
    #   t1: delta = .9*.6 - .4 = .14,  A = .14 + .45*.4  = .32
    #   t0: delta = .9*.4 - .2 = .16,  A = .16 + .45*.32 = .304
    # returns = A + V = (.504, .72, 1.0). Row 0 has trailing padding with garbage,
    # row 1 is a single token (A = 2 - 1), row 2 is row 0 shifted right by leading padding.
    rewards = torch.tensor([[0.0, 0, 1, 7], [2, 9, 9, 9], [5, 0, 0, 1]])
    values = torch.tensor([[0.2, 0.4, 0.6, 100], [1, 5, 5, 5], [3, 0.2, 0.4, 0.6]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    adv, ret = gae_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    close(adv, [[0.304, 0.32, 0.4, 0], [1, 0, 0, 0], [0, 0.304, 0.32, 0.4]])
    close(ret, [[0.504, 0.72, 1.0, 0], [2, 0, 0, 0], [0, 0.504, 0.72, 1.0]])


def test_gae_monte_carlo_limit():
    # gamma = lam = 1: A_t = (sum of rewards from t on) - V_t
    rewards = torch.tensor([[1.0, 0, 2]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    adv, ret = gae_advantages(rewards, values, torch.ones(1, 3, dtype=torch.bool), 1.0, 1.0)
    close(adv, [[2.5, 1.0, 0.5]])
    close(ret, [[3.0, 2.0, 2.0]])


# ---------------------------------------------------------------- policy loss


def test_ppo_clip_loss_per_sequence_advantage():
    ratios = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]])
    logprobs = ratios.log().requires_grad_()
    old = torch.zeros(2, 3)
    adv = torch.tensor([1.0, -1.0])
    loss, clipped = ppo_clip_loss(logprobs, old, adv)
    # A=+1: min(1.5, 1.2)=1.2 (clipped), min(.5, .8)=.5, min(1.1, 1.1)=1.1
    # A=-1: min(-1.5, -1.2)=-1.5, min(-.5, -.8)=-.8 (clipped), -1.1
    close(loss, [[-1.2, -0.5, -1.1], [1.5, 0.8, 1.1]])
    assert clipped.tolist() == [[True, False, False], [False, True, False]]
    # clipped tokens get no gradient; others d(-ratio*A)/dlogp = -A*ratio
    loss.sum().backward()
    close(logprobs.grad, [[0.0, -0.5, -1.1], [1.5, 0.0, 1.1]])


def test_ppo_clip_higher_and_per_token_advantage():
    ratios = torch.tensor([[1.5, 0.5, 1.5, 0.5]])
    adv = torch.tensor([[1.0, -1.0, 2.0, 0.0]])
    loss, clipped = ppo_clip_loss(ratios.log(), torch.zeros(1, 4), adv, clip_low=0.1, clip_high=0.28)
    # 1.28*1, clamp(.5)=.9 -> -.9 vs -.5 -> -.9, 1.28*2, zero advantage -> 0
    close(loss, [[-1.28, 0.9, -2.56, 0.0]])
    assert clipped.tolist() == [[True, True, True, False]]


def test_policy_loss_registry():
    assert POLICY_LOSSES == {"ppo_clip": ppo_clip_loss, "gspo": gspo_loss, "cispo": cispo_loss}


def test_ppo_clip_loss_through_the_registry_signature():
    # the learner's call: (logprobs, old, advantages, clip_low, clip_high, mask=...); the rows of
    # test_ppo_clip_loss_per_sequence_advantage, the mask changing nothing
    ratios = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    loss, clipped = POLICY_LOSSES["ppo_clip"](
        ratios.log(), torch.zeros(2, 3), torch.tensor([1.0, -1.0]), 0.2, 0.2, mask=mask
    )
    close(loss, [[-1.2, -0.5, -1.1], [1.5, 0.8, 1.1]])
    assert clipped.tolist() == [[True, False, False], [False, True, False]]


def test_gspo_clips_the_sequence_ratio_and_gives_every_token_its_gradient():
    # Log-ratios per row (old logprobs -1, the masked column of row 0 holds garbage):
    #   row 0: (ln 2, 0 | masked)   -> s = exp(ln 2 / 2) = sqrt 2, above 1 + .2: A = +1 takes 1.2
    #   row 1: (ln 1.1, 0, -ln 1.1) -> s = 1, unclipped; A = -2: loss 2 on each token and the
    #          gradient -A * s = 2 on each (PPO's token ratios would give 2.2, 2, 1.82)
    #   row 2: (ln .5, 0, 0)        -> s = .5^(1/3) = .7937, below 1 - .1; per-token A (-1, +1, -1):
    #          A = -1 takes the clipped -.9 (loss .9, no gradient), A = +1 the unclipped s
    log_ratios = torch.tensor([[LN2, 0.0, 0.0], [math.log(1.1), 0.0, -math.log(1.1)], [-LN2, 0.0, 0.0]])
    logprobs = (log_ratios - 1.0).requires_grad_()
    old = torch.full((3, 3), -1.0)
    old[0, 2] = 50.0
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0], [-1.0, 1.0, -1.0]])
    s2 = 0.5 ** (1 / 3)
    loss, clipped = gspo_loss(logprobs, old, adv, clip_low=0.1, clip_high=0.2, mask=mask)
    close(loss, [[-1.2, -1.2, -1.2], [2.0, 2.0, 2.0], [0.9, -s2, 0.9]])
    assert clipped.tolist() == [[True, True, True], [False, False, False], [True, False, True]]
    loss.sum().backward()
    close(logprobs.grad, [[0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [0.0, -s2, 0.0]])
    # Without the mask the garbage column enters row 0's mean, (ln 2 + 0 - 51) / 3: s is far below
    # 1 - .1, and with A = +1 the unclipped -s is the smaller objective.
    unmasked, _ = gspo_loss(logprobs.detach(), old, adv, clip_low=0.1, clip_high=0.2)
    close(unmasked[0], [-math.exp((LN2 - 51) / 3)] * 3, atol=1e-12)


def test_gspo_with_one_advantage_per_sequence_is_sequence_level_gspo():
    # The sequence objective -min(s A, clip(s) A) has gradient -A * s * mean_t grad log pi_t: the
    # per-token loss averaged over the sequence's tokens gives exactly that.
    log_ratios = torch.tensor([[0.02, -0.01, 0.05]])
    logprobs = (log_ratios - 2.0).detach().requires_grad_()
    loss, clipped = gspo_loss(
        logprobs, torch.full((1, 3), -2.0), torch.tensor([3.0]), 1.0, 1.0, mask=torch.ones(1, 3, dtype=torch.bool)
    )
    s = math.exp((0.02 - 0.01 + 0.05) / 3)
    close(loss, [[-3 * s] * 3])
    assert not clipped.any()
    loss.mean().backward()
    close(logprobs.grad, [[-3 * s / 3] * 3])


def test_cispo_clips_the_weight_and_keeps_every_gradient():
    # ratios 1.5, .5, 1.1 (pi = .6, .2, .44 against pi_old .4); weights clamped to [.8, 1.2]:
    # 1.2, .8, 1.1. loss = -w * A * log pi; gradient -w * A, also on the clipped tokens.
    old = torch.full((2, 3), math.log(0.4))
    probs = torch.tensor([[0.6, 0.2, 0.44], [0.6, 0.2, 0.44]])
    logprobs = probs.log().requires_grad_()
    loss, clipped = cispo_loss(logprobs, old, torch.tensor([1.0, -1.0]), 0.2, 0.2)
    row = [-1.2 * math.log(0.6), -0.8 * math.log(0.2), -1.1 * math.log(0.44)]
    close(loss, [row, [-v for v in row]])
    assert clipped.tolist() == [[True, True, False], [True, True, False]]
    loss.sum().backward()
    close(logprobs.grad, [[-1.2, -0.8, -1.1], [1.2, 0.8, 1.1]])
    # clip_low 1: no lower bound, as in MiniMax-M1; the ratio .5 is its own weight
    loss, clipped = cispo_loss(probs.log()[:1], old[:1], torch.tensor([1.0]), 1.0, 0.2)
    close(loss, [[-1.2 * math.log(0.6), -0.5 * math.log(0.2), -1.1 * math.log(0.44)]])
    assert clipped.tolist() == [[True, False, False]]


def test_value_loss():
    values = torch.tensor([[1.0, 0.5, 0.0, 2.0]])
    old = torch.full((1, 4), 0.5)
    returns = torch.tensor([[2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    # t0: clipped value .7 -> max(1, 1.69)/2 = .845; t1: .25/2 = .125
    # t2: unclipped error 0, clipped value .3 -> .09/2 = .045; t3 masked
    close(value_loss(values, old, returns, mask, clip=0.2), [[0.845, 0.125, 0.045, 0.0]])


# ---------------------------------------------------------------- KL


def test_kl_estimators():
    # policy prob .5 vs reference .25, and the reverse; log ratio = +-ln 2
    lp = torch.tensor([math.log(0.5), math.log(0.25), -1.0])
    ref = torch.tensor([math.log(0.25), math.log(0.5), -1.0])
    close(kl_penalty(lp, ref, "k1"), [LN2, -LN2, 0])
    close(kl_penalty(lp, ref, "k2"), [0.5 * LN2 * LN2, 0.5 * LN2 * LN2, 0])
    # k3 = r - 1 - log r with r = pi_ref/pi: (.5 - 1 + ln2), (2 - 1 - ln2)
    close(kl_penalty(lp, ref, "k3"), [LN2 - 0.5, 1 - LN2, 0])
    assert KL_ESTIMATORS == ("k1", "k2", "k3")


def test_kl_unknown_kind():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


# ---------------------------------------------------------------- aggregation


def test_aggregate_loss_modes():
    # row 0: tokens 1,2,3; row 1: token 4; row 2: empty (NaN garbage must not leak)
    loss = torch.tensor([[1.0, 2, 3], [4, NAN, 0], [NAN, 9, 9]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    close(aggregate_loss(loss, mask, "token-mean"), 10 / 4)
    close(aggregate_loss(loss, mask, "seq-mean-token-mean"), (2 + 4) / 2)
    close(aggregate_loss(loss, mask, "seq-mean-token-sum-norm", max_len=4), 10 / (3 * 4))
    assert LOSS_AGG_MODES == ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def test_loss_sum_over_loss_count_is_aggregate_loss():
    # the rows of test_aggregate_loss_modes: token-mean 10 / 4 tokens; seq-mean-token-mean
    # (6/3 + 4/1) / 2 sequences with a token; seq-mean-token-sum-norm 10 / (3 rows * 4)
    loss = torch.tensor([[1.0, 2, 3], [4, NAN, 0], [NAN, 9, 9]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    expected = {"token-mean": (10, 4), "seq-mean-token-mean": (6, 2), "seq-mean-token-sum-norm": (10, 12)}
    for mode, (total, count) in expected.items():
        close(loss_sum(loss, mask, mode), total)
        close(loss_count(mask, mode, max_len=4), count)
        close(loss_sum(loss, mask, mode) / loss_count(mask, mode, max_len=4), aggregate_loss(loss, mask, mode, 4))


def test_sums_and_counts_of_a_split_batch_give_the_whole_batch_aggregate():
    # What the learner relies on: micro-batches and ranks add up their sums and counts.
    torch.manual_seed(0)
    loss = torch.randn(7, 6)
    mask = torch.rand(7, 6) > 0.4
    mask[3] = False  # a sequence the caller excluded
    for mode in LOSS_AGG_MODES:
        parts = [slice(0, 1), slice(1, 4), slice(4, 7)]
        total = sum(loss_sum(loss[p], mask[p], mode) for p in parts)
        count = sum(loss_count(mask[p], mode, max_len=6) for p in parts)
        close(total / count, aggregate_loss(loss, mask, mode, max_len=6))


def test_aggregate_loss_all_masked_is_zero():
    loss = torch.ones(2, 3, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    for mode in LOSS_AGG_MODES:
        out = aggregate_loss(loss, mask, mode, max_len=3)
        assert out.item() == 0.0
        out.backward()
        assert torch.equal(loss.grad, torch.zeros(2, 3))


def test_aggregate_loss_errors():
    loss, mask = torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="max_len"):
        aggregate_loss(loss, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(loss, mask, "mean")


def test_masked_mean_dim():
    x = torch.tensor([[1.0, 3, NAN], [NAN, NAN, NAN]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    close(masked_mean(x, mask, dim=1), [2.0, 0.0])


# ---------------------------------------------------------------- filtering


def test_zero_variance_groups():
    rewards = torch.tensor([1.0, 1, 1, 0, 1, 0, NAN, 2, 2, NAN, NAN, NAN, NAN, 1, 0])
    assert zero_variance_groups(rewards, 3).tolist() == [True, False, True, True, False]


def test_truncation_mask():
    assert truncation_mask(["stop", "length", "abort", "length"]).tolist() == [False, True, False, True]
    empty = truncation_mask([])
    assert empty.dtype == torch.bool and empty.shape == (0,)


# ---------------------------------------------------------------- PPO with a critic


def test_token_rewards_kl_on_every_token_score_on_the_last():
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, 9.0, -0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 0]], dtype=torch.bool)  # row 1: a tool token at column 1
    rewards = token_rewards(kl, torch.tensor([1.0, -2.0]), mask, kl_coef=0.5)
    close(rewards, [[-0.05, -0.1, -0.15 + 1.0, 0.0], [-0.25, 0.0, 0.2 - 2.0, 0.0]])
    with pytest.raises(ValueError, match="at least one masked token"):
        token_rewards(kl, torch.zeros(2), torch.zeros(2, 4, dtype=torch.bool), 0.1)


def test_token_rewards_through_gae_by_hand():
    # One 2-token completion, beta .1, k1 KL (.2, -.1), score 1, values (.5, .3), gamma 1, lam .95:
    #   rewards (-.02, .01 + 1 = 1.01)
    #   t1: delta = 1.01 - .3 = .71                      A1 = .71
    #   t0: delta = -.02 + .3 - .5 = -.22,  A0 = -.22 + .95 * .71 = .4545
    # returns = A + V = (.9545, 1.01)
    rewards = token_rewards(torch.tensor([[0.2, -0.1]]), torch.tensor([1.0]), torch.ones(1, 2, dtype=torch.bool), 0.1)
    adv, ret = gae_advantages(rewards, torch.tensor([[0.5, 0.3]]), torch.ones(1, 2, dtype=torch.bool), 1.0, 0.95)
    close(adv, [[0.4545, 0.71]])
    close(ret, [[0.9545, 1.01]])


def test_masked_whiten():
    x = torch.tensor([[1.0, 3.0, 100.0], [5.0, 7.0, -100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    # masked entries 1, 3, 5, 7: mean 4, population std sqrt(5)
    s5 = math.sqrt(5.0)
    close(masked_whiten(x, mask), [[-3 / s5, -1 / s5, 0], [1 / s5, 3 / s5, 0]])
    close(masked_whiten(x, mask, shift_mean=False), [[4 - 3 / s5, 4 - 1 / s5, 0], [4 + 1 / s5, 4 + 3 / s5, 0]])


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.0), returns, mask) == pytest.approx(0.0)
    # var(returns) = 2/3; values 0 leave residuals (1, 2, 3): var 2/3 -> 0; values (3, 2, 1) leave
    # residuals (-2, 0, 2): var 8/3 -> 1 - 4 = -3
    assert explained_variance(torch.zeros(1, 4), returns, mask) == pytest.approx(0.0)
    assert explained_variance(torch.tensor([[3.0, 2.0, 1.0, 0]]), returns, mask) == pytest.approx(1 - (8 / 3) / (2 / 3))
    assert math.isnan(explained_variance(returns, torch.ones(1, 4), mask))


def test_adaptive_kl_coef():
    # KL 12 vs target 6: error clipped to .2; 256 samples over a 10,000 horizon
    assert adaptive_kl_coef(0.1, 12.0, 6.0, 10000, 256) == pytest.approx(0.1 * (1 + 0.2 * 0.0256))
    assert adaptive_kl_coef(0.1, 5.4, 6.0, 10000, 256) == pytest.approx(0.1 * (1 - 0.1 * 0.0256))
    assert adaptive_kl_coef(0.1, 4.5, 6.0, 10000, 256) == pytest.approx(0.1 * (1 - 0.2 * 0.0256))  # -.25 clipped
    assert adaptive_kl_coef(0.1, 0.0, 6.0, 100, 100) == pytest.approx(0.1 * 0.8)
