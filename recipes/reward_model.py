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
collected with `python -m rlpost.rlhf.label_server`), which `reward_model`'s `normalize` uses in RL.
`<run_dir>/eval.json` holds the held-out metrics beside the "longer wins" / "shorter wins"
baselines on the same prompts, with 95 % bootstrap intervals.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlpost.cache import apply_cache_env
from rlpost.config import ConfigError, doc, parse_config, section
from rlpost.metrics import LoggingConfig
from rlpost.trainer import DeepSpeedConfig, OptimConfig


@dataclass
class RMData:
    files: list[str] = doc(
        "Rankings files, combined: native rankings JSONL, chosen/rejected pairs, or HH-RLHF transcripts "
        "(the format is detected per file).",
        [],
    )
    held_out: float = doc("Held-out prompts: a fraction if below 1, else a number of prompts.", 0.1)
    max_train_prompts: int = doc("Train on at most this many training prompts (0: all), e.g. for learning curves.", 0)
    max_tokens: int = doc("Tokens of a rendered prompt + response; longer ones keep their last tokens.", 512)
    seed: int = doc("Seed of the split and of the data order.", 0)


@dataclass
class RMLoss:
    type: str = doc(
        "'all_pairs' (mean over each ranking's untied pairs, InstructGPT), 'plackett_luce' (listwise, "
        "ties in random order), or 'best_worst' (one pair per ranking: its best vs its worst response).",
        "all_pairs",
    )
    margin: float = doc("Margin the better response's score must exceed the worse one's by (pairwise losses).", 0.0)
    centering: float = doc("Coefficient of mean(score^2), which keeps scores near 0 (Eisenstein et al. 2023).", 0.0)

    def validate(self):
        from rlpost.algorithms.ranking_loss import RANKING_LOSSES

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
    """Mean ranking loss over the batch (+ centring), `scores` flat in the rankings' response order."""
    from rlpost.algorithms.ranking_loss import RANKING_LOSSES, centering_penalty

    loss_fn = RANKING_LOSSES[cfg.type]
    losses, start = [], 0
    for ranking in rankings:
        k = len(ranking.responses)
        losses.append(loss_fn(scores[start : start + k], ranking.ranks, margin=cfg.margin, generator=generator))
        start += k
    loss = sum(losses) / len(losses)
    return loss + centering_penalty(scores, cfg.centering) if cfg.centering else loss


def prompts(rankings) -> int:
    return len({r.prompt_key for r in rankings})


def held_out_metrics(model, tokenizer, rankings, cfg: RewardModelConfig, pad: int) -> dict:
    from rlpost.rlhf.ranking_metrics import ranking_metrics
    from rlpost.rlhf.reward_model import render, score_all

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
        seed=cfg.data.seed,
        resamples=cfg.bootstrap_resamples,
    )


def train(cfg: RewardModelConfig) -> dict:
    import statistics

    from tqdm import tqdm

    from rlpost.config import check_path, save_config, to_dict
    from rlpost.metrics import MetricsLogger, write_json
    from rlpost.rlhf.rankings import load_rankings, split_by_prompt
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
    from rlpost.trainer import DeepSpeedTrainer, epoch_batches

    check_path("model_path", cfg.model_path)
    for i, path in enumerate(cfg.data.files):
        check_path(f"data.files[{i}]", path)
    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir / "config.yaml")
    dataset = load_rankings(cfg.data.files)  # every line checked before anything trains
    held_out = cfg.data.held_out if cfg.data.held_out < 1 else int(cfg.data.held_out)
    train_set, eval_set = split_by_prompt(dataset, held_out, seed=cfg.data.seed)
    if cfg.data.max_train_prompts:
        keep = list(dict.fromkeys(r.prompt_key for r in train_set))[: cfg.data.max_train_prompts]
        train_set = [r for r in train_set if r.prompt_key in set(keep)]
    if len(train_set) < cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} is more than the {len(train_set)} training rankings"
        )
    print(
        f"rankings: {len(train_set)} training ({prompts(train_set)} prompts), {len(eval_set)} held out "
        f"({prompts(eval_set)} prompts); per labeler: {dataset.per_labeler()}; skipped: {dict(dataset.skipped)}"
    )

    tokenizer = load_tokenizer(cfg.model_path)
    model = reward_model_from_lm(cfg.model_path, tokenizer)
    pad = model.config.pad_token_id
    keep_bottom_layers(model, cfg.train.backbone_layers)
    trainable = freeze_below(model, cfg.train.trainable_layers)
    print(
        f"reward model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, {trainable / 1e6:.1f}M trained"
    )
    rendered = [[render(tokenizer, r.prompt, resp, cfg.data.max_tokens) for resp in r.responses] for r in train_set]
    per_epoch = max(1, len(train_set) // cfg.train.batch_size)
    steps = max(1, math.ceil(cfg.train.epochs * per_epoch))
    trainer = DeepSpeedTrainer(
        cfg.model_path,
        cfg.optim,
        cfg.deepspeed,
        total_steps=steps,
        micro_batch_size=cfg.train.batch_size,
        seed=cfg.data.seed,
        model=model,
    )
    module = trainer.engine.module
    logger = MetricsLogger(run_dir, cfg.logging, "reward_model", config=to_dict(cfg))
    start_step = 0
    if cfg.resume and (state := trainer.load_latest(run_dir)) is not None:
        start_step = state["step"]
        print(f"resumed from step {start_step}")

    lengths = [sum(len(ids) for ids in seqs) for seqs in rendered]
    deadline = time.time() + 60 * cfg.train.max_minutes if cfg.train.max_minutes else math.inf
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="reward model")
    step, batches = start_step, {}
    for step in bar:
        epoch, index = divmod(step, per_epoch)
        if epoch not in batches:  # the order is a pure function of (seed, epoch): resumable
            batches = {epoch: epoch_batches(lengths, cfg.train.batch_size, cfg.data.seed, epoch)}
        batch = batches[epoch][index]
        rankings = [train_set[i] for i in batch]
        trainer.train_mode()
        scores = sequence_scores(module, [ids for i in batch for ids in rendered[i]], pad)
        loss = batch_loss(scores, rankings, cfg.loss, random.Random(f"{cfg.data.seed}/{step}"))
        trainer.backward(loss)
        metrics = {
            "loss": loss.item(),
            "grad_norm": trainer.grad_norm(),
            "lr": trainer.lr(),
            "score_mean": scores.mean().item(),
            "score_std": scores.std().item() if len(scores) > 1 else 0.0,
            "epoch": step / per_epoch,
        }
        step += 1
        out_of_time = time.time() > deadline
        if cfg.train.eval_every and step % cfg.train.eval_every == 0:
            metrics["eval/pair_accuracy"] = held_out_metrics(module, tokenizer, eval_set, cfg, pad)["pair_accuracy"][
                "mean"
            ]
        if step % cfg.train.checkpoint_every == 0 or step == steps or out_of_time:
            trainer.save_checkpoint(run_dir, step, tokenizer, {})
        logger.log(step, metrics)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if out_of_time:
            print(f"stopping after {cfg.train.max_minutes} minutes at step {step}")
            break

    # The card: normalisation over the training responses (the policy's own samples when they
    # came from the ranking page), the rule, the data, and the held-out metrics. Both come from
    # the saved model as RewardScorer reads it (fp32): a module trained in bf16 scores about 1 %
    # differently, which would shift every normalised reward.
    trainer.save_hf(run_dir / "model", tokenizer)
    saved = RewardScorer(run_dir / "model").model
    sample = random.Random(cfg.data.seed).sample(
        [ids for seqs in rendered for ids in seqs], min(cfg.train.normalization_samples, sum(map(len, rendered)))
    )
    norm_scores = score_all(saved, sample, pad, cfg.train.score_batch_size)
    metrics = held_out_metrics(saved, tokenizer, eval_set, cfg, pad)
    card = {
        "score_rule": SCORE_RULE,
        "max_tokens": cfg.data.max_tokens,
        "backbone": cfg.model_path,
        "trained": {
            "files": cfg.data.files,
            "rankings": len(train_set),
            "prompts": prompts(train_set),
            "labelers": sorted({r.labeler or "unknown" for r in train_set}),
            "simulated_labelers": any((r.labeler or "").startswith("simulated:") for r in train_set),
            "loss": to_dict(cfg.loss),
            "steps": step,
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
    write_json(run_dir / "model" / CARD, card)
    write_json(run_dir / "eval.json", card["held_out"])
    logger.log(step, {f"final/{k}": v["mean"] for k, v in metrics.items() if isinstance(v, dict)})
    logger.close()
    print(format_metrics(card["held_out"]))
    return card


def format_metrics(held_out: dict) -> str:
    rows = [f"held-out: {held_out['prompts']} prompts (95 % bootstrap intervals over prompts)"]
    for name, value in held_out.items():
        if isinstance(value, dict) and "mean" in value:
            lo, hi = value["ci95"]
            rows.append(f"  {name:<28} {value['mean']:.3f}  [{lo:.3f}, {hi:.3f}]")
    return "\n".join(rows)


if __name__ == "__main__":
    from rlpost.rlhf.rankings import RankingError

    apply_cache_env()
    try:
        train(parse_config(RewardModelConfig))
    except ConfigError as error:
        raise SystemExit(f"config error: {error}") from None
    except RankingError as error:  # names the file, the line and the problem
        raise SystemExit(f"rankings error: {error}") from None
