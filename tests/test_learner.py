"""The learner: packing trajectories, and real DeepSpeed learner ranks as Ray actors giving the
same update however the batch is split over micro-batches and ranks."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rlpost.model import random_llama
from rlpost.rl.trajectory import Trajectory, pack, packed_logprobs
from rlpost.trainer import token_logprobs


def test_pack_places_each_token_advantage_at_its_logprob_column():
    # Column t holds the logprob of token t + 1, so completion token j of a prompt of length p
    # sits at column p - 1 + j.
    first = Trajectory([1, 2, 3], [4, 5], [-0.1, -0.2], [1, 1], [0.5, -1.0])
    second = Trajectory([1, 2], [6, 7, 8], [-0.3, 0.0, -0.4], [1, 0, 1], [2.0, 3.0, 4.0])
    batch = pack([first, second], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 6, 7, 8]]
    assert batch["advantages"].tolist() == [[0, 0, 0.5, -1.0], [0, 2.0, 3.0, 4.0]]
    assert batch["mask"].tolist() == [[False, False, True, True], [False, True, False, True]]
    torch.testing.assert_close(batch["sampling_logprobs"], torch.tensor([[0, 0, -0.1, -0.2], [0, -0.3, 0.0, -0.4]]))
    assert batch["last"].tolist() == [3, 3]
    with pytest.raises(ValueError, match="trajectory 0"):
        pack([Trajectory([1], [4, 5], [-0.1, -0.2], [1, 1], [0.5])], pad_id=0)


def test_packed_batch_cut_at_its_last_completion_token_keeps_every_logprob():
    # The learner cuts each micro-batch to its longest sample; with right padding and causal
    # attention the logprobs of the tokens it keeps must not change.
    model = random_llama(vocab_size=32).eval()
    short = Trajectory([1, 2, 3], [4, 5], [-0.1, -0.2], [1, 1], [1.0, 1.0])
    long = Trajectory([1, 2], [6, 7, 8, 9, 10, 11], [-0.1] * 6, [1] * 6, [-1.0] * 6)
    batch = pack([short, long], pad_id=0)
    assert batch["last"].tolist() == [3, 6]  # logprob columns of tokens 5 and 11
    with torch.no_grad():
        full = token_logprobs(model(batch["input_ids"]).logits, batch["input_ids"])
        width = int(batch["last"][0]) + 1
        cut = token_logprobs(model(batch["input_ids"][:1, : width + 1]).logits, batch["input_ids"][:1, : width + 1])
    assert batch["mask"][0, width:].sum() == 0
    torch.testing.assert_close(cut[0], full[0, :width])
    # The no-grad passes (old policy, reference) cut the same way, whatever the micro-batch size,
    # and with extra passes (ranks in lockstep) too.
    for size, passes in ((1, 0), (2, 0), (2, 3)):
        lp = packed_logprobs(lambda ids: model(ids).logits, batch, size, temperature=1.0, passes=passes)
        torch.testing.assert_close(lp[batch["mask"]], full[batch["mask"]])


# ---------------------------------------------------------------- the loss config


def test_loss_config_defaults_keep_todays_loss_and_resolve_the_correction_from_tis_cap():
    from rlpost.rl.learner import PolicyLossConfig

    default = PolicyLossConfig()
    default.validate()
    assert (default.policy_loss, default.clip_range(), default.resolved_correction()) == (
        "ppo_clip",
        (0.2, 0.2),
        "none",
    )
    assert PolicyLossConfig(tis_cap=2.0).resolved_correction() == "tis"
    assert PolicyLossConfig(correction="token_mask").resolved_correction() == "token_mask"
    # GSPO clips the sequence ratio with its own, far smaller range; CISPO reuses clip_low/high
    assert PolicyLossConfig(policy_loss="gspo", clip_low=0.1).clip_range() == (3e-4, 4e-4)
    assert PolicyLossConfig(policy_loss="cispo", clip_low=1.0, clip_high=0.3).clip_range() == (1.0, 0.3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"policy_loss": "grpo"}, r"loss.policy_loss: 'grpo' is not one of \['ppo_clip', 'gspo', 'cispo'\]"),
        ({"gspo_clip_high": -1e-4}, r"loss.gspo_clip_high: -0.0001 must be >= 0"),
        (
            {"correction": "is"},
            r"loss.correction: 'is' is not one of \['none', 'tis', 'token_mask', 'sequence_mask'\]",
        ),
        ({"correction": "tis"}, r"loss.correction: 'tis' needs loss.tis_cap > 0"),
        ({"correction": "token_mask", "tis_cap": 2.0}, r"loss.tis_cap: 2.0 caps the 'tis' correction only"),
        ({"correction": "none", "tis_cap": 2.0}, r"loss.tis_cap: 2.0 caps the 'tis' correction only"),
        ({"correction_band": [0.5]}, r"loss.correction_band: \[0.5\] must be \[low, high\]"),
        ({"correction_band": [1.2, 2.0]}, r"loss.correction_band: .* 0 < low <= 1 <= high"),
        ({"correction_band": [0.0, 2.0]}, r"loss.correction_band: .* 0 < low <= 1 <= high"),
    ],
)
def test_loss_config_errors_name_the_key(options, message):
    from rlpost.config import ConfigError
    from rlpost.rl.learner import PolicyLossConfig

    with pytest.raises(ConfigError, match=message):
        PolicyLossConfig(**options).validate()


def test_loss_config_from_flags():
    from rlpost.config import ConfigError, build
    from rlpost.rl.learner import PolicyLossConfig

    cfg = build(
        PolicyLossConfig, {"policy_loss": "gspo", "correction": "sequence_mask", "correction_band": "[0.25, 4]"}
    )
    assert (cfg.policy_loss, cfg.resolved_correction(), cfg.correction_band) == ("gspo", "sequence_mask", [0.25, 4.0])
    assert build(PolicyLossConfig, {"correction": "null", "tis_cap": 2.0}).resolved_correction() == "tis"
    with pytest.raises(ConfigError, match="loss.correction: 'token-mask' is not one of"):
        build(PolicyLossConfig, {"correction": "token-mask"})


# ---------------------------------------------------------------- real learner ranks

# A few trajectories of different lengths with per-token advantages; one has tool output (mask
# 0). Even samples claim vLLM sampled them with probability e^-50, so their truncated importance
# weight is the cap; odd ones with probability 1, so theirs is the learner's probability (< cap).
TIS_CAP = 2.0
# AdamW's first step is lr * g / (|g| + eps), nearly lr * sign(g) for gradients far above its eps
# (1e-8). Advantages of order 1e-9 keep the gradients below eps, where the step is lr * g / eps:
# then the updated weights show the gradient itself, not just its signs. A large lr makes those
# steps large next to the float resolution of the weights.
ADVANTAGE_SCALE = 1e-9
LR = 0.1


def _trajectories(n: int, seed: int = 0) -> list[Trajectory]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(2, 24)
        completion = [rng.randrange(20, 500) for _ in range(length)]
        mask = [1] * length
        if i == 1:
            mask[1:3] = [0, 0]
        sampling = [-50.0 if i % 2 == 0 else 0.0] * length
        advantages = [ADVANTAGE_SCALE * rng.uniform(-1, 1) for _ in range(length)]
        prompt = [1] + [rng.randrange(20, 500) for _ in range(rng.randint(1, 6))]
        out.append(Trajectory(prompt, completion, sampling, mask, advantages))
    return out


def _start_learners(model_path, world_size: int = 1, **loss_options) -> list:
    """Learner ranks forming one DeepSpeed world: fp32 (DeepSpeed's fp32 path reports the grad
    norm), a clip far above any norm, so the gradient reaches the optimizer unchanged."""
    import ray

    from rlpost.cache import cache_env
    from rlpost.distributed.weight_sync import free_port
    from rlpost.rl.learner import Learner, PolicyLossConfig
    from rlpost.trainer import DeepSpeedConfig, OptimConfig

    port = free_port()
    # Half a CPU each: a world of two and its one-rank twin fit the two-core test box at once.
    actor = ray.remote(Learner).options(num_cpus=0.5, runtime_env={"env_vars": cache_env()})
    return [
        actor.remote(
            str(model_path),
            OptimConfig(lr=LR, grad_clip=1e9),
            DeepSpeedConfig(bf16=False, world_size=world_size),
            PolicyLossConfig(**loss_options),
            rank=rank,
            master_addr="127.0.0.1",
            master_port=port,
            total_steps=2,
            max_new_tokens=32,
        )
        for rank in range(world_size)
    ]


def _train_each(worlds, trajectories):
    """Each world's rank-0 metrics and updated weights; the worlds train at the same time."""
    import ray

    metrics = ray.get(
        [world[0].train.remote(trajectories) for world in worlds]
        + [lr.train.remote(trajectories) for world in worlds for lr in world[1:]]
    )
    states = ray.get(
        [world[0].state_dict.remote() for world in worlds]
        + [lr.state_dict.remote() for world in worlds for lr in world[1:]]
    )
    return list(zip(metrics[: len(worlds)], states[: len(worlds)]))


MISMATCH_METRICS = ("mismatch/kl", "mismatch/ratio_max", "mismatch/masked_frac")


def _assert_same_update(a, b):
    (metrics_a, state_a), (metrics_b, state_b) = a, b
    for key in ("loss", "grad_norm"):  # of order ADVANTAGE_SCALE: relative tolerances only
        assert metrics_a[key] == pytest.approx(metrics_b[key], rel=1e-5, abs=0), key
    for key in MISMATCH_METRICS:
        assert metrics_a[key] == pytest.approx(metrics_b[key], rel=1e-5), key
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        torch.testing.assert_close(state_a[name], state_b[name], rtol=1e-6, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"loss_agg": "token-mean", "tis_cap": TIS_CAP},
        {"loss_agg": "seq-mean-token-mean", "tis_cap": TIS_CAP},
        {"loss_agg": "seq-mean-token-sum-norm", "tis_cap": TIS_CAP},
        # GSPO's sequence ratio and the sequence test both read each sequence's mask. The band drops
        # every even sample (ratio above e^30) and keeps the odd ones: their geometric-mean ratio is
        # that of the learner's probabilities, far above e^-69 for a 1024-token vocabulary.
        {"loss_agg": "token-mean", "policy_loss": "gspo", "correction": "sequence_mask", "correction_band": [1e-30, 2]},
    ],
    ids=["tis-token-mean", "tis-seq-mean-token-mean", "tis-seq-mean-token-sum-norm", "gspo-sequence_mask"],
)
def test_one_or_four_micro_batches_give_the_same_update(options, sft_run, ray_cluster):
    import ray

    trajectories = _trajectories(7)
    whole = _start_learners(sft_run / "model", micro_batch_size=8, **options)
    split = _start_learners(sft_run / "model", micro_batch_size=2, **options)  # 4 micro-batches: 2, 2, 2, 1
    try:
        results = _train_each([whole, split], trajectories)
    finally:
        for actor in whole + split:
            ray.kill(actor)
    _assert_same_update(*results)
    metrics = results[0][0]
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    # Even samples' tokens are capped (or dropped with their sequence), odd ones' ratios are
    # probabilities of a 1024-token vocabulary, far below the cap.
    tokens = [sum(t.completion_mask) for t in trajectories]
    capped = sum(tokens[::2]) / sum(tokens)
    assert metrics["mismatch/masked_frac"] == pytest.approx(capped)
    if "tis_cap" in options:
        assert metrics["tis/capped_frac"] == pytest.approx(capped)
        assert TIS_CAP * capped < metrics["tis/weight_mean"] < TIS_CAP * capped + (1 - capped)
        assert results[1][0]["tis/weight_mean"] == pytest.approx(metrics["tis/weight_mean"], rel=1e-5)
    else:
        assert "tis/weight_mean" not in metrics
    # The largest ratio is an even sample's, π_old · e^50 <= e^50; the token mean of k3 = r - 1 - log r
    # (>= 0 on every token) is at least that token's term over all tokens.
    ratio_max = metrics["mismatch/ratio_max"]
    assert math.exp(30) < ratio_max <= math.exp(50)
    assert metrics["mismatch/kl"] >= (ratio_max - 1 - math.log(ratio_max)) / sum(tokens) * (1 - 1e-5)


@pytest.mark.slow
def test_two_learner_ranks_give_the_same_update_as_one(sft_run, ray_cluster):
    """Rank 0 gets samples 0, 2, 4 (many tokens), rank 1 samples 1, 3 (few): a mean of per-rank
    token means would weigh rank 1's tokens more. Two epochs: the second takes a step with
    precomputed old logprobs, and one micro-batch per sample makes rank 1 fill a third pass."""
    import ray

    trajectories = _trajectories(5, seed=3)
    tokens = [sum(t.completion_mask) for t in trajectories]
    assert sum(tokens[::2]) > 2 * sum(tokens[1::2])
    # The largest ratio π_old / π_sampler (~e^80 against the even samples' ~e^50) is on rank 1:
    # rank 0 reports it only through the maximum over ranks.
    trajectories[3].sampling_logprobs = [-80.0] * len(trajectories[3].completion_ids)
    options = {"loss_agg": "token-mean", "ppo_epochs": 2, "micro_batch_size": 1}
    pair = _start_learners(sft_run / "model", world_size=2, **options)
    single = _start_learners(sft_run / "model", **options)
    try:
        results = _train_each([pair, single], trajectories)
    finally:
        for actor in pair + single:
            ray.kill(actor)
    _assert_same_update(*results)
    assert results[0][0]["mismatch/ratio_max"] > math.exp(60)
    assert results[0][0]["mismatch/masked_frac"] == 0.0  # no correction


def test_broadcast_refuses_weights_that_do_not_match_the_receivers_specs():
    from rlpost.distributed.weight_sync import WeightGroup, broadcast_weights

    sender = WeightGroup(0, 2, "gloo", torch.device("cpu"), comm=None, store=None)
    with pytest.raises(ValueError, match="do not match"):
        broadcast_weights(sender, {"w": torch.zeros(2)}, [("w", (3,), "float32")])


@pytest.mark.slow
def test_weight_specs_come_once_and_each_sync_sends_the_current_weights(sft_run, ray_cluster):
    """Broadcast and object store both send the learner's current weights, in the specs planned
    once at init_weight_sync; the tied output embedding travels once, as the input embedding."""
    import ray

    from rlpost.distributed.weight_sync import create_weight_group, fetch_buckets, free_port, receive_broadcast

    (learner,) = _start_learners(sft_run / "model")
    try:
        specs = ray.get(learner.init_weight_sync.remote("float32"))
        port = free_port()
        joined = learner.init_weight_group.remote("127.0.0.1", port, 2, "gloo")
        group = create_weight_group("127.0.0.1", port, 1, 2, "gloo")  # this process receives
        ray.get(joined)
        received = []
        for _ in range(2):  # before and after an update, with the same specs
            sent = learner.broadcast_weights.remote()
            weights = {name: tensor.clone() for name, tensor in receive_broadcast(group, specs)}
            ray.get(sent)
            stored = {name: tensor.clone() for name, tensor in fetch_buckets(ray.get(learner.put_weights.remote()))}
            received.append((weights, stored, ray.get(learner.state_dict.remote())))
            ray.get(learner.train.remote(_trajectories(3)))
    finally:
        ray.kill(learner)
    state_names = list(received[0][2])
    assert "lm_head.weight" in state_names
    assert [name for name, _, _ in specs] == [name for name in state_names if name != "lm_head.weight"]
    for weights, stored, state in received:
        assert list(weights) == list(stored) == [name for name, _, _ in specs]
        for name in weights:
            assert torch.equal(weights[name], state[name]), name
            assert torch.equal(stored[name], state[name]), name
    assert any(not torch.equal(received[0][0][k], received[1][0][k]) for k in received[0][0])
