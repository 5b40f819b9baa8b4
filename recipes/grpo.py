"""Stage 3: GRPO on answer-only practice problems, distributed over Ray actors.

    python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml [--rollout.n 16 --optim.lr 5e-5]
    ray job submit --working-dir . -- python recipes/grpo.py --config recipes/configs/grpo_tiny.yaml

vLLM rollout workers sample `rollout.n` answers per prompt, reward workers check them
(math-verify by default; add your own with `rewards.functions`), the DeepSpeed learner takes a
PPO-clip step on group-normalised advantages, and the new weights are synced into the engines.
Metrics go to `<run_dir>/metrics.jsonl` (and wandb, offline by default); `--resume` continues
from the latest checkpoint; the final policy is an HF folder in `<run_dir>/model`.
"""

from rlpost.cache import apply_cache_env
from rlpost.config import parse_config
from rlpost.driver import RLConfig, train

if __name__ == "__main__":
    apply_cache_env()
    result = train(parse_config(RLConfig))
    print(f"RL finished after {result['steps']} steps; held-out accuracy: {result['eval']}")
