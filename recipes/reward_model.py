"""Reward model from rankings: fit a scalar score to K-way human (or simulated) orderings.

    python recipes/reward_model.py --config recipes/configs/reward_model_tiny.yaml [--loss.type plackett_luce]
    ray job submit --working-dir . -- python recipes/reward_model.py --config recipes/configs/reward_model_tiny.yaml \
        --model_path $PWD/runs/sft_tiny/model --run_dir $PWD/runs/reward_model_tiny \
        --data.files "[$PWD/runs/rankings/arithmetic_tiny.jsonl]"

Reads rankings files (the native JSONL of `rlpost/rlhf/rankings.py`, chosen/rejected pairs as TRL and
OpenRLHF take them, or HH-RLHF transcripts), splits them by prompt into training and held-out
prompts, and trains a causal LM backbone with a new scalar head (`rlpost/rlhf/reward_model.py`) on
the DeepSpeed engine. One step takes `batch_size` rankings, scores all their responses in one
forward pass and applies the ranking loss (`loss.type`: all pairs, Plackett–Luce, or only the
best-vs-worst pair) to each ranking. `--resume` continues from the latest checkpoint.

At the end `<run_dir>/model` is an HF folder that `AutoModelForSequenceClassification` loads,
with `reward_card.json`: the scoring rule, the data, the held-out metrics, and the mean/std of
the scores of the responses in the training rankings (the policy's own samples when they were
collected with `python recipes/label.py`), which `reward_model`'s `normalize` uses in RL.
`<run_dir>/eval.json` holds the held-out metrics beside the "longer wins" / "shorter wins"
baselines on the same prompts, with 95 % bootstrap intervals.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from rlpost.algorithms.ranking_loss import RANKING_LOSSES
from rlpost.config import ConfigError, check_path, doc, run_command, save_config, section, to_dict
from rlpost.metrics import LoggingConfig, MetricsLogger, write_json
from rlpost.rl.degeneracy import canary_texts
from rlpost.rlhf.ranking_formats import split_rankings
from rlpost.rlhf.ranking_metrics import ranking_metrics
from rlpost.rlhf.rankings import Ranking, RankingError
from rlpost.rlhf.reward_model import (
    CARD,
    SCORE_RULE,
    RewardScorer,
    freeze_below,
    keep_bottom_layers,
    render,
    reward_model_from_lm,
    score_all,
    sequence_scores,
)
from rlpost.tokenizer import load_tokenizer
from rlpost.trainer import DeepSpeedConfig, DeepSpeedTrainer, OptimConfig, train_loop


@dataclass
class RMData:
    files: list[str] = doc(
        "Rankings files, combined: native rankings JSONL, chosen/rejected pairs, or HH-RLHF transcripts "
        "(the format is detected per file).",
        [],
    )
    held_out: float = doc("Held-out prompts: a fraction if below 1, else a number of prompts.", 0.1)
    split_seed: int = doc(
        "Seed of the train/held-out split; -1: the run's `seed`. The members of an ensemble share one split "
        "and differ in `seed`.",
        -1,
    )
    max_train_prompts: int = doc("Train on at most this many training prompts (0: all), e.g. for learning curves.", 0)
    max_tokens: int = doc("Tokens of a rendered prompt + response; longer ones keep their last tokens.", 512)
    synthetic_negatives: bool = doc(
        "Append to every training ranking, as its worst tier (tied), degenerate answers a policy games a "
        "reward model with: the hacking monitor's canaries (its most frequent word repeated, the empty "
        "answer, the prompt echoed) and its best answer cut in half. Recorded in the reward card as synthetic.",
        False,
    )


@dataclass
class RMLoss:
    type: str = doc(
        "'all_pairs' (mean over each ranking's untied pairs, InstructGPT), 'plackett_luce' (listwise, "
        "ties in random order), or 'best_worst' (one pair per ranking: its best vs its worst response).",
        "all_pairs",
    )
    margin: float = doc("Margin the better response's score must exceed the worse one's by (pairwise losses).", 0.0)
    centering: float = doc(
        "Coefficient of mean((s_better + s_worse)^2) over a ranking's untied pairs, which keeps scores near 0 "
        "without shrinking their differences (Eisenstein et al. 2023).",
        0.0,
    )

    def validate(self):
        if self.type not in RANKING_LOSSES:
            raise ConfigError(f"loss.type: {self.type!r} is not one of {sorted(RANKING_LOSSES)}")


@dataclass
class RMTrain:
    epochs: float = doc("Passes over the training rankings.", 2.0)
    batch_size: int = doc("Rankings per optimizer step.", 16)
    backbone_layers: int = doc("Use only the bottom N transformer layers of the backbone (0: all).", 0)
    trainable_layers: int = doc("Train only the top N transformer layers, the final norm and the head (0: all).", 0)
    checkpoint_every: int = doc("Checkpoint every N steps, and at the end.", 200)
    eval_every: int = doc("Held-out pair accuracy every N steps (0: only the final evaluation).", 0)
    max_minutes: float = doc("Stop (with a checkpoint) after this many minutes (0: no limit).", 0.0)
    score_batch_size: int = doc("Responses per forward pass when scoring without gradients.", 32)
    normalization_samples: int = doc("Training responses scored for the card's mean/std.", 1000)


@dataclass
class RewardModelConfig:
    model_path: str = doc(
        "Backbone: a causal LM HF folder (e.g. the SFT model) or a reward model folder.", "runs/sft_tiny/model"
    )
    run_dir: str = doc("Output folder of this run.", "runs/reward_model_tiny")
    resume: bool = doc("Continue from the latest checkpoint in run_dir.", False)
    seed: int = doc("Seed of the data order, the new score head and (unless data.split_seed) the split.", 0)
    data: RMData = section(RMData)
    loss: RMLoss = section(RMLoss)
    train: RMTrain = section(RMTrain)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=10))
    deepspeed: DeepSpeedConfig = section(DeepSpeedConfig)
    bootstrap_resamples: int = doc("Bootstrap resamples over prompts for the 95 % intervals.", 1000)
    logging: LoggingConfig = section(LoggingConfig)

    def validate(self):
        if not self.data.files:
            raise ConfigError("data.files: give at least one rankings file")
        if self.data.held_out <= 0:
            raise ConfigError(f"data.held_out: must be positive, got {self.data.held_out}")
        if self.train.batch_size < 1 or self.train.epochs <= 0:
            raise ConfigError("train.batch_size and train.epochs must be positive")


def batch_loss(scores, rankings, cfg: RMLoss, generator: random.Random):
    """Mean ranking loss (with its centring) over the batch, `scores` flat in the rankings' response order."""
    loss_fn = RANKING_LOSSES[cfg.type]
    losses, start = [], 0
    for ranking in rankings:
        k = len(ranking.responses)
        ranking_scores = scores[start : start + k]
        losses.append(
            loss_fn(ranking_scores, ranking.ranks, margin=cfg.margin, generator=generator, centering=cfg.centering)
        )
        start += k
    return sum(losses) / len(losses)


SYNTHETIC_KINDS = ("repeat", "empty", "echo", "truncated")


def with_synthetic_negatives(ranking: Ranking) -> Ranking:
    """`ranking` with `SYNTHETIC_KINDS` appended as its worst tier, tied (`data.synthetic_negatives`);
    a synthetic answer equal to one of the ranking's own is left out."""
    prompt = ranking.prompt if isinstance(ranking.prompt, str) else ranking.prompt[-1]["content"]
    best = ranking.responses[ranking.ranks.index(min(ranking.ranks))].split()
    extra = [*canary_texts(prompt, list(ranking.responses)).values(), " ".join(best[: len(best) // 2])]
    extra = [text for text in dict.fromkeys(extra) if text not in ranking.responses]
    worst = max(ranking.ranks) + 1
    return replace(ranking, responses=(*ranking.responses, *extra), ranks=(*ranking.ranks, *[worst] * len(extra)))


def prompts(rankings) -> int:
    return len({r.prompt_key for r in rankings})


def held_out_metrics(model, tokenizer, rankings, cfg: RewardModelConfig, pad: int) -> dict:
    sequences = [render(tokenizer, r.prompt, resp, cfg.data.max_tokens) for r in rankings for resp in r.responses]
    flat = score_all(model, sequences, pad, cfg.train.score_batch_size)
    scores, start = [], 0
    for r in rankings:
        scores.append(flat[start : start + len(r.responses)])
        start += len(r.responses)
    return ranking_metrics(
        scores,
        [list(r.ranks) for r in rankings],
        [list(r.responses) for r in rankings],
        seed=cfg.seed,
        resamples=cfg.bootstrap_resamples,
    )


def build_reward_model(cfg: RewardModelConfig, tokenizer) -> tuple[object, int]:
    """The backbone with a new score head, cut and frozen as `train` asks; and its trainable parameter count."""
    torch.manual_seed(cfg.seed)  # the new score head's initial weights
    model = reward_model_from_lm(cfg.model_path, tokenizer)
    keep_bottom_layers(model, cfg.train.backbone_layers)
    trainable = freeze_below(model, cfg.train.trainable_layers)
    total = sum(p.numel() for p in model.parameters())
    print(f"reward model: {total / 1e6:.1f}M parameters, {trainable / 1e6:.1f}M trained")
    return model, trainable


def ranking_step(
    trainer, rendered: list, train_set: list, cfg: RewardModelConfig, indices: list[int], step: int
) -> dict:
    """One optimizer step of the ranking loss on the training rankings at `indices`, all their
    responses scored in one forward pass (`train_loop`'s step)."""
    module = trainer.engine.module
    trainer.train_mode()
    scores = sequence_scores(module, [ids for i in indices for ids in rendered[i]], module.config.pad_token_id)
    # Ties are ordered by a generator seeded with the step, so a resumed run repeats the draws.
    loss = batch_loss(scores, [train_set[i] for i in indices], cfg.loss, random.Random(f"{cfg.seed}/{step}"))
    trainer.backward(loss)
    return {
        "loss": loss.item(),
        "grad_norm": trainer.grad_norm(),
        "lr": trainer.lr(),
        "score_mean": scores.mean().item(),
        "score_std": scores.std().item() if len(scores) > 1 else 0.0,
    }


def main(cfg: RewardModelConfig) -> dict:
    """Train the reward model, save it to `<run_dir>/model` with its card, and return the card."""
    check_path("model_path", cfg.model_path)
    for i, path in enumerate(cfg.data.files):
        check_path(f"data.files[{i}]", path)
    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir / "config.yaml")
    split_seed = cfg.seed if cfg.data.split_seed < 0 else cfg.data.split_seed
    train_set, eval_set = split_rankings(cfg.data, split_seed, cfg.train.batch_size)
    tokenizer = load_tokenizer(cfg.model_path)
    model, trainable = build_reward_model(cfg, tokenizer)
    pad = model.config.pad_token_id
    # The card's normalisation is over the labelled answers (the policy's own samples), not the synthetic ones.
    labelled = [[render(tokenizer, r.prompt, resp, cfg.data.max_tokens) for resp in r.responses] for r in train_set]
    if cfg.data.synthetic_negatives:
        train_set = [with_synthetic_negatives(r) for r in train_set]
    rendered = [[render(tokenizer, r.prompt, resp, cfg.data.max_tokens) for resp in r.responses] for r in train_set]
    steps = max(1, math.ceil(cfg.train.epochs * max(1, len(train_set) // cfg.train.batch_size)))
    trainer = DeepSpeedTrainer(
        cfg.model_path,
        cfg.optim,
        cfg.deepspeed,
        total_steps=steps,
        micro_batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        model=model,
    )

    def held_out_accuracy(_step: int) -> dict:
        metrics = held_out_metrics(trainer.engine.module, tokenizer, eval_set, cfg, pad)
        return {"eval/pair_accuracy": metrics["pair_accuracy"]["mean"]}

    logger = MetricsLogger(run_dir, cfg.logging, "reward_model", config=to_dict(cfg))
    step = train_loop(
        trainer,
        [sum(len(ids) for ids in seqs) for seqs in rendered],
        functools.partial(ranking_step, trainer, rendered, train_set, cfg),
        steps=steps,
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        run_dir=run_dir,
        tokenizer=tokenizer,
        logger=logger,
        checkpoint_every=cfg.train.checkpoint_every,
        resume=cfg.resume,
        evaluate=held_out_accuracy,
        eval_every=cfg.train.eval_every,
        desc="reward model",
        max_minutes=cfg.train.max_minutes,
    )
    trainer.save_hf(run_dir / "model", tokenizer)
    card = reward_card(
        cfg, run_dir / "model", tokenizer, labelled, train_set, eval_set, steps=step, trainable=trainable
    )
    write_json(run_dir / "model" / CARD, card)
    write_json(run_dir / "eval.json", card["held_out"])
    logger.log(step, {f"final/{k}": v["mean"] for k, v in card["held_out"].items() if isinstance(v, dict)})
    logger.close()
    print(format_metrics(card["held_out"]))
    return card


def reward_card(cfg, folder: Path, tokenizer, rendered, train_set, eval_set, *, steps: int, trainable: int) -> dict:
    """The card of the saved model: the scoring rule, the data, the held-out metrics, and the
    normalisation over the training responses (the policy's own samples when they came from the
    ranking page).

    Both scores come from the saved model as RewardScorer reads it (fp32): a module trained in
    bf16 scores about 1 % differently, which would shift every normalised reward."""
    saved = RewardScorer(folder).model
    pad = saved.config.pad_token_id
    sample = random.Random(cfg.seed).sample(
        [ids for seqs in rendered for ids in seqs], min(cfg.train.normalization_samples, sum(map(len, rendered)))
    )
    norm_scores = score_all(saved, sample, pad, cfg.train.score_batch_size)
    metrics = held_out_metrics(saved, tokenizer, eval_set, cfg, pad)
    return {
        "score_rule": SCORE_RULE,
        "max_tokens": cfg.data.max_tokens,
        "backbone": cfg.model_path,
        "trained": {
            "files": cfg.data.files,
            "rankings": len(train_set),
            "prompts": prompts(train_set),
            "labelers": sorted({r.labeler or "unknown" for r in train_set}),
            "simulated_labelers": any((r.labeler or "").startswith("simulated:") for r in train_set),
            "synthetic_negatives": list(SYNTHETIC_KINDS) if cfg.data.synthetic_negatives else None,
            "loss": to_dict(cfg.loss),
            "steps": steps,
            "backbone_layers": cfg.train.backbone_layers or "all",
            "trainable_layers": cfg.train.trainable_layers or "all",
            "trainable_parameters": trainable,
        },
        "held_out": {"prompts": prompts(eval_set), **metrics},
        "normalization": {
            "mean": statistics.fmean(norm_scores),
            "std": statistics.pstdev(norm_scores),
            "samples": len(norm_scores),
            "source": "responses in the training rankings",
        },
    }


def format_metrics(held_out: dict) -> str:
    rows = [f"held-out: {held_out['prompts']} prompts (95 % bootstrap intervals over prompts)"]
    for name, value in held_out.items():
        if isinstance(value, dict) and "mean" in value:
            lo, hi = value["ci95"]
            rows.append(f"  {name:<28} {value['mean']:.3f}  [{lo:.3f}, {hi:.3f}]")
    return "\n".join(rows)


if __name__ == "__main__":
    run_command(RewardModelConfig, main, {RankingError: "rankings error"})  # names the file, line and problem
