"""The driver's pure step pieces: prompt order, and turning samples + rewards into trajectories."""

import math

import pytest

from rlpost.config import load_config
from rlpost.driver import RLConfig, build_trajectories, problems_at
from rlpost.rollout import Sample


def _cfg(*overrides):
    return load_config(RLConfig, ["--rollout.n", "2", "--rollout.max_new_tokens", "4", *overrides])


def _groups():
    # Two prompts × two samples; the second sample of group 0 hit the length limit.
    return [
        [Sample([5, 6], [-0.1, -0.2], "stop"), Sample([5, 6, 7, 8], [-0.1] * 4, "length")],
        [Sample([9], [-0.3], "stop"), Sample([9, 9], [-0.3, -0.4], "stop")],
    ]


def test_group_advantages_and_zero_variance_drop():
    trajs, stats = build_trajectories([[1, 2], [3]], _groups(), [1.0, 0.0, 0.5, 0.5], _cfg())
    # Group 0: rewards 1, 0 → GRPO advantages +1, -1 (population std 0.5); group 1 has no spread.
    assert [t.advantage for t in trajs] == pytest.approx([1.0, -1.0], abs=1e-4)
    assert [t.prompt_ids for t in trajs] == [[1, 2], [1, 2]]
    assert trajs[1].completion_ids == [5, 6, 7, 8] and trajs[1].completion_mask == [1, 1, 1, 1]
    assert stats["groups_dropped_frac"] == 0.5 and stats["samples_kept"] == 2
    assert stats["truncated_frac"] == 0.25 and stats["response_len/max"] == 4


def test_keep_zero_variance_groups_when_disabled():
    trajs, _ = build_trajectories(
        [[1, 2], [3]], _groups(), [1.0, 0.0, 0.5, 0.5], _cfg("--algo.drop_zero_variance_groups", "false")
    )
    assert [t.advantage for t in trajs][2:] == [0.0, 0.0]


def test_overlong_mask_and_missing_rewards():
    trajs, stats = build_trajectories(
        [[1, 2], [3]], _groups(), [1.0, 0.0, math.nan, 0.5], _cfg("--algo.overlong", "mask")
    )
    # The truncated sample is masked out; the unrewarded sample is excluded; group 1 has one
    # valid reward left, so it carries no signal and is dropped too.
    assert len(trajs) == 1 and trajs[0].completion_ids == [5, 6]


def test_problems_at_is_a_pure_function_of_the_cursor():
    pool = list(range(10))
    first = problems_at(pool, 0, 10, seed=1)
    assert sorted(first) == pool  # one epoch is a permutation
    assert problems_at(pool, 4, 8, seed=1) == (first + problems_at(pool, 10, 10, seed=1))[4:12]


def test_tool_output_stays_masked_in_the_trajectory():
    tool_sample = Sample([5, 6, 7, 8], [-0.1, 0.0, 0.0, -0.2], "stop", loss_mask=[1, 0, 0, 1], tool_calls=1)
    groups = [[tool_sample, Sample([5], [-0.1], "stop")]]
    trajs, stats = build_trajectories([[1, 2]], groups, [1.0, 0.0], _cfg())
    assert trajs[0].completion_mask == [1, 0, 0, 1] and trajs[1].completion_mask == [1]
    assert stats["tool/calls_per_sample"] == 0.5 and stats["tool/samples_with_call_frac"] == 0.5


def test_packed_batch_cut_at_its_last_completion_token_keeps_every_logprob():
    # The learner cuts each micro-batch to its longest sample; with right padding and causal
    # attention the logprobs of the tokens it keeps must not change.
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlpost.learner import Trajectory, pack, packed_logprobs
    from rlpost.trainer import token_logprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).eval()
    short = Trajectory([1, 2, 3], [4, 5], [-0.1, -0.2], [1, 1], 1.0)
    long = Trajectory([1, 2], [6, 7, 8, 9, 10, 11], [-0.1] * 6, [1] * 6, -1.0)
    batch = pack([short, long], pad_id=0)
    assert batch["last"].tolist() == [3, 6]  # logprob columns of tokens 5 and 11
    with torch.no_grad():
        full = token_logprobs(model(batch["input_ids"]).logits, batch["input_ids"])
        width = int(batch["last"][0]) + 1
        cut = token_logprobs(model(batch["input_ids"][:1, : width + 1]).logits, batch["input_ids"][:1, : width + 1])
    assert batch["mask"][0, width:].sum() == 0
    torch.testing.assert_close(cut[0], full[0, :width])
    # The no-grad passes (old policy, reference) cut the same way, whatever the micro-batch size.
    for size in (1, 2):
        lp = packed_logprobs(lambda ids: model(ids).logits, batch, size, temperature=1.0)
        torch.testing.assert_close(lp[batch["mask"]], full[batch["mask"]])
