"""Stage 3 with a critic: PPO (Schulman et al. 2017) as in RLHF (Ziegler et al. 2019, InstructGPT),
against a verifiable reward or a learned reward model, distributed over Ray actors.

    python recipes/ppo.py --config recipes/configs/ppo_tiny.yaml     # the math reward
    python recipes/ppo.py --config recipes/configs/rlhf_tiny.yaml    # a reward model (RLHF)
    ray job submit --working-dir . -- python recipes/ppo.py --config recipes/configs/ppo_tiny.yaml \
        --model_path $PWD/runs/sft_tiny/model --run_dir $PWD/runs/ppo_tiny

One step (the loop of rlpost/rl/loop.py, shared with GRPO; PPO's own part is `PPO.update`):
    prompts ──▶ RolloutWorker × R (vLLM) ──▶ RewardWorker × W (scores)
        ──▶ Learner ranks: logprobs of the policy and the frozen reference  ┐ side by side
            Critic ranks: a value per completion token                      ┘
        ──▶ per-token reward -β·KL + score on the last token ──▶ GAE ──▶ whitened advantages
        ──▶ Critic ranks (clipped value loss) ∥ Learner ranks (PPO-clip), each DeepSpeed
        ──▶ weight sync to every engine ──▶ β for the next step (fixed or adaptive) ──▶ metrics
The first `critic.warmup_steps` steps train only the critic. Checkpoints hold the policy, the
critic, both optimizers and β (`--resume` continues from the latest one); the final policy is
an HF folder in `<run_dir>/model`, the critic in `<run_dir>/critic_model`. Every GRPO section
(rollout, loss, rewards, monitor, eval, ...) means the same here; `algo` is PPO's own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlpost.config import ConfigError, check_path, section
from rlpost.distributed.cluster import mean_over_ranks
from rlpost.rl.config import RLConfig
from rlpost.rl.critic import CriticConfig, check_critic_tokenizer
from rlpost.rl.loop import rl_command, run
from rlpost.rl.ppo_steps import PPOAlgoConfig, next_kl_coef, ppo_scores, ppo_targets
from rlpost.rl.trajectory import Trajectory, unshard


@dataclass
class PPOConfig(RLConfig):
    algo: PPOAlgoConfig = section(PPOAlgoConfig)
    critic: CriticConfig = section(CriticConfig)

    def validate(self):
        super().validate()
        if self.loss.kl_coef:
            # One KL for PPO, in the reward (InstructGPT): a second one in the policy loss would
            # pull towards the reference twice under two coefficients.
            raise ConfigError(
                f"loss.kl_coef: {self.loss.kl_coef} adds a KL term to the policy loss; PPO puts its KL in the "
                "reward instead: set algo.kl_reward_coef (and leave loss.kl_coef at 0)"
            )


class PPO:
    """PPO's update: KL-shaped per-token rewards, the critic's values, GAE, then the critic's and
    the learner's steps. β is the state a checkpoint keeps."""

    name = "ppo"
    refill_rounds = 0  # the critic is the baseline: every sample trains, no group is refilled

    def __init__(self, cfg: PPOConfig):
        self.cfg = cfg
        self.critic = cfg.critic
        self.kl_coef = cfg.algo.kl_reward_coef

    def update(self, actors, step_samples, step: int) -> tuple[dict, bool]:
        import ray

        cfg, n = self.cfg, self.cfg.rollout.n
        rewards = step_samples.total_rewards
        keep = [i for i, r in enumerate(rewards) if r == r]  # samples no reward function scored: NaN
        samples = [step_samples.samples[i] for i in keep]
        trajectories = [  # advantages are filled in below, once the critic has spoken
            Trajectory(
                step_samples.prompt_ids[i // n],
                s.token_ids,
                s.logprobs,
                s.loss_mask or [1] * len(s.token_ids),
                [0.0] * len(s.token_ids),
            )
            for i, s in zip(keep, samples)
        ]
        metrics = {"samples_trained": len(trajectories)}
        if not trajectories:
            print(f"step {step + 1}: no sample has a reward; skipping the update")
            return metrics, False
        # The learner's logprobs (policy, reference) and the critic's values side by side, and
        # later the two updates: on a cluster they sit on other devices; on one box each world
        # runs on its own core (deepspeed.threads 1), which beats two threads taking turns.
        t0 = time.perf_counter()
        logprob_refs = actors.learners.submit("logprobs", trajectories, cfg.rollout.temperature)
        values = unshard(ray.get(actors.critics.submit("values", trajectories)))
        per_rank = ray.get(logprob_refs)
        policy_lp, reference_lp = unshard([p for p, _ in per_rank]), unshard([r for _, r in per_rank])
        metrics["time/logprobs_values"] = time.perf_counter() - t0
        scores = ppo_scores([rewards[i] for i in keep], [s.finish_reason == "length" for s in samples], cfg.algo)
        advantages, returns, targets = ppo_targets(
            policy_lp, reference_lp, values, [t.completion_mask for t in trajectories], scores, cfg.algo, self.kl_coef
        )
        metrics.update(targets)
        for t, adv, ret, val, old in zip(trajectories, advantages, returns, values, policy_lp):
            t.advantages, t.returns, t.values, t.old_logprobs = adv, ret, val, old
        t0 = time.perf_counter()
        critic_refs = actors.critics.submit("train", trajectories)
        moves = step >= cfg.critic.warmup_steps
        if moves:
            metrics.update(mean_over_ranks(actors.learners.call("train", trajectories, cfg.rollout.temperature)))
        metrics.update(mean_over_ranks(ray.get(critic_refs)))
        metrics["time/update"] = time.perf_counter() - t0
        self.kl_coef = next_kl_coef(self.kl_coef, metrics["objective/kl"], len(trajectories), cfg.algo)
        return metrics, moves

    def state(self) -> dict:
        return {"kl_coef": self.kl_coef}

    def load_state(self, state: dict) -> None:
        self.kl_coef = state["kl_coef"]


def main(cfg: PPOConfig) -> dict:
    if cfg.critic.init == "reward_model":
        check_path("critic.path", cfg.critic.path)
        check_critic_tokenizer(cfg.critic.path, cfg.model_path)
    return run(cfg, PPO(cfg))


if __name__ == "__main__":
    rl_command(PPOConfig, main, "PPO")
