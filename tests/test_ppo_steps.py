"""PPO's step pieces (rlpost/rl/ppo_steps.py) and the learner's sharding, against hand-computed values."""

import math

import pytest
import torch

from rlpost.config import ConfigError, load_config
from rlpost.rl.ppo_steps import PPOAlgoConfig, next_kl_coef, ppo_scores, ppo_targets
from rlpost.rl.trajectory import Trajectory, pack, shard, unshard


def test_scores_are_clipped_then_truncation_is_penalised():
    cfg = PPOAlgoConfig(score_clip=5.0, truncated_penalty=1.0)
    assert ppo_scores([3.0, -7.0, 0.5], [False, True, False], cfg).tolist() == [3.0, -6.0, 0.5]
    assert ppo_scores([9.0], [True], PPOAlgoConfig()).tolist() == [9.0]


def test_targets_by_hand_with_a_tool_token_skipped():
    # Sample A (2 tokens): k1 KL (.2, -.1), score 1, values (.5, .3), β .1, γ 1, λ .95:
    #   rewards (-.02, 1.01); A = (.4545, .71); returns (.9545, 1.01)  [tests/test_algorithms.py]
    # Sample B (3 tokens, the middle one tool output): KL 0, score -1, values (.2, -, -.4):
    #   t2: δ = -1 + .4 = -.6, A = -.6;  t0: δ = 0 - .4 - .2 = -.6, A = -.6 + .95·(-.6) = -1.17
    #   returns (-.97, 0, -1.0)
    cfg = PPOAlgoConfig(gamma=1.0, lam=0.95, whiten_advantages=False)
    policy = [[-1.0, -2.0], [-0.5, 9.0, -0.5]]
    reference = [[-1.2, -1.9], [-0.5, 0.0, -0.5]]
    values = [[0.5, 0.3], [0.2, 99.0, -0.4]]
    masks = [[1, 1], [1, 0, 1]]
    adv, ret, m = ppo_targets(policy, reference, values, masks, torch.tensor([1.0, -1.0]), cfg, kl_coef=0.1)
    assert adv[0] == pytest.approx([0.4545, 0.71]) and adv[1] == pytest.approx([-1.17, 0.0, -0.6])
    assert ret[0] == pytest.approx([0.9545, 1.01]) and ret[1] == pytest.approx([-0.97, 0.0, -1.0])
    assert m["objective/kl"] == pytest.approx(0.05)  # per sequence: (.1 + 0) / 2
    assert m["objective/non_score_reward"] == pytest.approx(-0.005)
    assert m["kl"] == pytest.approx(0.025)  # per sampled token, k1: (.2 - .1 + 0 + 0) / 4
    assert m["critic/values_mean"] == pytest.approx(0.15)
    assert m["critic/returns_mean"] == pytest.approx((0.9545 + 1.01 - 0.97 - 1.0) / 4, abs=1e-6)
    assert m["objective/scores"] == 0.0 and m["objective/kl_coef"] == 0.1

    whitened, *_ = ppo_targets(policy, reference, values, masks, torch.tensor([1.0, -1.0]), PPOAlgoConfig(), 0.1)
    sampled = torch.tensor([*whitened[0], whitened[1][0], whitened[1][2]], dtype=torch.float64)
    assert float(sampled.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(sampled.std(correction=0)) == pytest.approx(1.0, abs=1e-4)
    assert whitened[1][1] == 0.0  # the tool token has no advantage


def test_kl_coefficient_fixed_or_adaptive():
    assert next_kl_coef(0.1, 50.0, 256, PPOAlgoConfig()) == 0.1
    adaptive = PPOAlgoConfig(adaptive_kl=True, kl_target=6.0, kl_horizon=10000)
    assert next_kl_coef(0.1, 12.0, 256, adaptive) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    assert next_kl_coef(0.1, math.nan, 256, adaptive) == 0.1


def test_bad_ppo_settings_name_their_key():
    from rlpost.rl.critic import CriticConfig

    with pytest.raises(ConfigError, match="algo.kl_reward_estimator"):
        load_config(PPOAlgoConfig, ["--kl_reward_estimator", "k9"])
    with pytest.raises(ConfigError, match="algo.gamma"):
        load_config(PPOAlgoConfig, ["--lam", "1.5"])
    with pytest.raises(ConfigError, match="critic.path"):
        load_config(CriticConfig, ["--init", "reward_model"])
    with pytest.raises(ConfigError, match="critic.init"):
        load_config(CriticConfig, ["--init", "random"])


def test_shard_and_unshard_are_inverse():
    items = list(range(7))
    parts = [shard(items, rank, 3) for rank in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert unshard(parts) == items


def test_pack_lays_out_the_optional_per_token_fields_only_when_every_sample_has_them():
    a = Trajectory([7, 8], [1, 2], [-0.1, -0.2], [1, 1], [0.5, 0.5], values=[0.3, 0.4], returns=[1.0, 2.0])
    b = Trajectory([7], [3], [-0.3], [1], [1.0], values=[0.9], returns=[3.0])
    batch = pack([a, b], pad_id=0)
    # completion token j of a sample sits in column len(prompt) - 1 + j
    torch.testing.assert_close(batch["values"], torch.tensor([[0.0, 0.3, 0.4], [0.9, 0.0, 0.0]]))
    assert batch["returns"].tolist() == [[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]
    assert "old_logprobs" not in batch
    b.values = None
    assert "values" not in pack([a, b], pad_id=0)
    with pytest.raises(ValueError, match="differ in length"):
        pack([Trajectory([1], [2, 3], [0.0, 0.0], [1, 1], [0.0, 0.0], returns=[1.0])], pad_id=0)


def test_a_critic_from_a_reward_model_is_on_the_normalised_reward_scale():
    from rlpost.rl.critic import value_scale

    card = {"normalization": {"mean": 2.0, "std": 4.0}}
    assert value_scale(card, "reward_model", normalize=True) == (2.0, 4.0)  # raw 6 → (6 - 2) / 4 = 1
    assert value_scale(card, "reward_model", normalize=False) == (0.0, 1.0)
    assert value_scale(card, "policy", normalize=True) == (0.0, 1.0)  # a new zero head has no scale to match
    assert value_scale({}, "reward_model", normalize=True) == (0.0, 1.0)  # a card without statistics
    assert value_scale({"normalization": {"mean": 1.0, "std": 0.0}}, "reward_model", True) == (1.0, 1.0)
