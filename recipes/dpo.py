"""DPO from rankings: train the policy straight on K-way human (or simulated) orderings, no reward model.

    python recipes/dpo.py --config recipes/configs/dpo_tiny.yaml [--loss.type ipo --loss.beta 0.5]
    ray job submit --working-dir . -- python recipes/dpo.py --config recipes/configs/dpo_tiny.yaml \
        --model_path $PWD/runs/sft_tiny/model --run_dir $PWD/runs/dpo_tiny \
        --data.files "[$PWD/runs/rankings/arithmetic_tiny.jsonl]"

Reads the rankings files the reward-model recipe reads (rlpost/rlhf/rankings.py: native K-way
JSONL, chosen/rejected pairs, HH-RLHF transcripts), split by prompt. Each response is the
assistant turn after its prompt, rendered with the policy's chat template; its log-probability is
the sum over its tokens. The reference (the starting policy) scores every response once, before
the first step, and those log-probs are cached in `<run_dir>/reference_logps.pt` (a resumed run
reads them back). One step takes `train.batch_size` rankings and applies, per ranking:
- `loss.form: pairs`: the pair loss (`loss.type`: `sigmoid` = DPO, Rafailov et al. 2023; `ipo`,
  Azar et al. 2023, on per-token mean log-probs as TRL does) averaged over its untied pairs;
- `loss.form: plackett_luce`: the listwise likelihood of its whole order (the DPO paper's
  appendix A.3), ties in a random order drawn per step; with K = 2 it is DPO.
Metrics under TRL's names (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
logps/chosen, logps/rejected; chosen = the better response of each untied pair) go to
`<run_dir>/metrics.jsonl` and wandb; checkpoints every `train.checkpoint_every` steps, `--resume`
continues; the policy is an HF folder in `<run_dir>/model`, and `<run_dir>/eval.json` holds the
held-out pairs' preference accuracy of the implicit reward β·(π − π_ref).
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlpost.algorithms import DPO_LOSSES, dpo_metrics, plackett_luce_dpo_loss, ranking_dpo_loss
from rlpost.algorithms.ranking_loss import tie_broken_order
from rlpost.batching import collate
from rlpost.chat import prompt_ids, prompt_messages, template_ids
from rlpost.config import ConfigError, check_path, doc, run_command, save_config, section, to_dict
from rlpost.metrics import LoggingConfig, MetricsLogger, write_json
from rlpost.rlhf.ranking_formats import split_rankings
from rlpost.rlhf.rankings import RankingError
from rlpost.tokenizer import load_tokenizer
from rlpost.trainer import DeepSpeedConfig, DeepSpeedTrainer, OptimConfig, token_logprobs, train_loop

FORMS = ("pairs", "plackett_luce")


@dataclass
class DPOData:
    files: list[str] = doc("Rankings files, combined (the formats the reward-model recipe reads).", [])
    held_out: float = doc("Held-out prompts: a fraction if below 1, else a number of prompts.", 0.1)
    max_train_prompts: int = doc("Train on at most this many training prompts (0: all).", 0)
    max_tokens: int = doc("Tokens of a rendered prompt + response; longer ones keep their last tokens.", 512)


@dataclass
class DPOLoss:
    type: str = doc("'sigmoid' (DPO, Rafailov et al. 2023) or 'ipo' (Azar et al. 2023).", "sigmoid")
    form: str = doc(
        "'pairs': the pair loss over every untied pair of a ranking; 'plackett_luce': the listwise "
        "likelihood of the whole order (DPO paper, appendix A.3; sigmoid only).",
        "pairs",
    )
    beta: float = doc("β: how far the policy may move from the reference (DPO's KL weight; IPO's τ).", 0.1)

    def validate(self):
        if self.type not in DPO_LOSSES:
            raise ConfigError(f"loss.type: {self.type!r} is not one of {sorted(DPO_LOSSES)}")
        if self.form not in FORMS:
            raise ConfigError(f"loss.form: {self.form!r} is not one of {list(FORMS)}")
        if self.form == "plackett_luce" and self.type != "sigmoid":
            raise ConfigError(
                "loss.form: 'plackett_luce' is the listwise form of the sigmoid loss; use loss.type sigmoid"
            )
        if self.beta <= 0:
            raise ConfigError(f"loss.beta: must be above 0, got {self.beta}")


@dataclass
class DPOTrain:
    steps: int = doc("Optimizer steps (0: `epochs` passes over the training rankings).", 0)
    epochs: float = doc("Passes over the training rankings when `steps` is 0.", 1.0)
    batch_size: int = doc("Rankings per optimizer step.", 8)
    micro_batch_size: int = doc("Rankings per forward/backward (gradient accumulation within a step).", 8)
    checkpoint_every: int = doc("Checkpoint every N steps, and at the end.", 100)
    eval_every: int = doc("Held-out preference accuracy every N steps (0: only at the end).", 0)
    max_minutes: float = doc("Stop (with a checkpoint) after this many minutes (0: no limit).", 0.0)


@dataclass
class DPOConfig:
    model_path: str = doc("Policy to start from, also the frozen reference: an HF folder (e.g. the SFT model).",
                          "runs/sft_tiny/model")  # fmt: skip
    run_dir: str = doc("Output folder of this run.", "runs/dpo_tiny")
    resume: bool = doc("Continue from the latest checkpoint in run_dir.", False)
    seed: int = doc("Seed of the split, the data order and the tie draws.", 0)
    data: DPOData = section(DPOData)
    loss: DPOLoss = section(DPOLoss)
    train: DPOTrain = section(DPOTrain)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, warmup_steps=10))
    deepspeed: DeepSpeedConfig = section(DeepSpeedConfig)
    logging: LoggingConfig = section(LoggingConfig)

    def validate(self):
        if not self.data.files:
            raise ConfigError("data.files: give at least one rankings file")
        if self.train.batch_size < 1 or self.train.micro_batch_size < 1:
            raise ConfigError("train.batch_size and train.micro_batch_size: must be at least 1")


def render(tokenizer, ranking, max_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(ids, mask) of each response as the assistant turn after the ranking's prompt, rendered with
    the policy's own chat template; mask 1 on the turn (its end included). Longer ones keep their
    last `max_tokens` tokens."""
    prompt = prompt_ids(tokenizer, ranking.prompt)
    out = []
    for response in ranking.responses:
        ids = template_ids(tokenizer, [*prompt_messages(ranking.prompt), {"role": "assistant", "content": response}])
        if ids[: len(prompt)] != prompt:
            raise ValueError("the chat template renders a prompt differently once an answer follows it")
        mask = [0] * len(prompt) + [1] * (len(ids) - len(prompt))
        out.append((ids[-max_tokens:], mask[-max_tokens:]))
    return out


def sequence_logps(forward, examples: list[tuple[list[int], list[int]]], pad_id: int, mean: bool) -> torch.Tensor:
    """Log-probability of each example's masked tokens under `forward` (ids → logits): their sum,
    or with `mean` their mean per token (IPO's, as TRL computes it)."""
    input_ids, mask = collate(examples, pad_id)
    logps = token_logprobs(forward(input_ids), input_ids)  # column t: the log-prob of token t + 1
    mask = mask[:, 1:].to(logps.dtype)
    total = (logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if mean else total


def ranking_losses(policy, reference, rankings, loss: DPOLoss, rng: random.Random) -> tuple[torch.Tensor, list]:
    """Each ranking's loss (policy/reference: flat log-probs in the rankings' response order), and
    the (better, worse) index pairs into the flat lists for the metrics."""
    losses, pairs, start = [], [], 0
    for ranking in rankings:
        k = len(ranking.responses)
        p, r, ranks = policy[start : start + k], reference[start : start + k], ranking.ranks
        if loss.form == "plackett_luce":
            losses.append(plackett_luce_dpo_loss(p, r, tie_broken_order(ranks, rng), beta=loss.beta))
        else:
            losses.append(ranking_dpo_loss(p, r, ranks, beta=loss.beta, loss_type=loss.type))
        pairs += [(start + i, start + j) for i in range(k) for j in range(k) if ranks[i] < ranks[j]]
        start += k
    return torch.stack(losses), pairs


def pair_metrics(policy, reference, pairs: list, beta: float) -> dict:
    if not pairs:
        return {}
    better, worse = torch.tensor([b for b, _ in pairs]), torch.tensor([w for _, w in pairs])
    return dpo_metrics(policy[better], policy[worse], reference[better], reference[worse], beta=beta)


def dpo_step(trainer, rendered, reference, train_set, cfg: DPOConfig, indices: list[int], step: int) -> dict:
    """One optimizer step on the rankings at `indices`, in micro-batches of rankings (`train_loop`'s step)."""
    trainer.train_mode()
    pad, mean = trainer.model_config.pad_token_id, cfg.loss.type == "ipo"
    rng = random.Random(f"{cfg.seed}/{step}")  # tie draws repeat on resume
    parts = [indices[i : i + cfg.train.micro_batch_size] for i in range(0, len(indices), cfg.train.micro_batch_size)]
    total, policy_all, reference_all, pairs_all = 0.0, [], [], []
    for j, part in enumerate(parts):
        examples = [ex for i in part for ex in rendered[i]]
        policy = sequence_logps(trainer.logits, examples, pad, mean)
        ref = torch.cat([reference[i] for i in part])
        losses, pairs = ranking_losses(policy, ref, [train_set[i] for i in part], cfg.loss, rng)
        trainer.backward(losses.sum() / len(indices), last_micro_batch=j == len(parts) - 1)
        total += losses.sum().item()
        offset = sum(len(x) for x in policy_all)
        policy_all.append(policy.detach())
        reference_all.append(ref)
        pairs_all += [(b + offset, w + offset) for b, w in pairs]
    metrics = {"loss": total / len(indices), "grad_norm": trainer.grad_norm(), "lr": trainer.lr()}
    return metrics | pair_metrics(torch.cat(policy_all), torch.cat(reference_all), pairs_all, cfg.loss.beta)


@torch.no_grad()
def score_all(forward, rendered: list, pad_id: int, mean: bool, micro_batch: int) -> list[torch.Tensor]:
    """Log-probs of every response of every ranking, one tensor per ranking, without gradients."""
    out = []
    for start in range(0, len(rendered), micro_batch):
        chunk = rendered[start : start + micro_batch]
        flat = sequence_logps(forward, [ex for r in chunk for ex in r], pad_id, mean).float().cpu()
        out += list(torch.split(flat, [len(r) for r in chunk]))
    return out


def reference_logps(trainer, rendered: list, cfg: DPOConfig, name: str) -> list[torch.Tensor]:
    """The starting policy's log-probs of `rendered`, computed once and cached in the run folder
    (a resumed run's model has moved: it must read them back, not recompute them). A fresh run
    recomputes them: a file left by an earlier run may hold other data's log-probs."""
    path = Path(cfg.run_dir) / f"reference_logps_{name}.pt"
    if cfg.resume and path.exists():
        return torch.load(path)
    trainer.train_mode(False)
    pad = trainer.model_config.pad_token_id
    logps = score_all(trainer.logits, rendered, pad, cfg.loss.type == "ipo", cfg.train.micro_batch_size)
    torch.save(logps, path)
    return logps


def held_out(trainer, rendered, reference, eval_set, cfg: DPOConfig) -> dict:
    """The implicit reward's preference accuracy and margin on the held-out rankings' untied pairs."""
    trainer.train_mode(False)
    pad, mean = trainer.model_config.pad_token_id, cfg.loss.type == "ipo"
    policy = torch.cat(score_all(trainer.logits, rendered, pad, mean, cfg.train.micro_batch_size))
    _, pairs = ranking_losses(policy, torch.cat(reference), eval_set, cfg.loss, random.Random(0))
    metrics = pair_metrics(policy, torch.cat(reference), pairs, cfg.loss.beta)
    return {"eval/rewards/accuracies": metrics.get("rewards/accuracies", math.nan),
            "eval/rewards/margins": metrics.get("rewards/margins", math.nan), "eval/pairs": len(pairs)}  # fmt: skip


def main(cfg: DPOConfig) -> dict:
    """Train the policy with DPO, save it to `<run_dir>/model`, and return the held-out metrics."""
    check_path("model_path", cfg.model_path)
    for i, path in enumerate(cfg.data.files):
        check_path(f"data.files[{i}]", path)
    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir / "config.yaml")
    train_set, eval_set = split_rankings(cfg.data, cfg.seed, cfg.train.batch_size)
    tokenizer = load_tokenizer(cfg.model_path)
    rendered = [render(tokenizer, r, cfg.data.max_tokens) for r in train_set]
    rendered_eval = [render(tokenizer, r, cfg.data.max_tokens) for r in eval_set]
    per_epoch = max(1, len(train_set) // cfg.train.batch_size)
    steps = cfg.train.steps or max(1, math.ceil(cfg.train.epochs * per_epoch))
    trainer = DeepSpeedTrainer(cfg.model_path, cfg.optim, cfg.deepspeed, total_steps=steps,
                               micro_batch_size=cfg.train.micro_batch_size, seed=cfg.seed)  # fmt: skip
    reference = reference_logps(trainer, rendered, cfg, "train")
    reference_eval = reference_logps(trainer, rendered_eval, cfg, "held_out")
    logger = MetricsLogger(run_dir, cfg.logging, "dpo", config=to_dict(cfg))
    step = train_loop(
        trainer,
        [sum(len(ids) for ids, _ in r) for r in rendered],
        functools.partial(dpo_step, trainer, rendered, reference, train_set, cfg),
        steps=steps,
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        run_dir=run_dir,
        tokenizer=tokenizer,
        logger=logger,
        checkpoint_every=cfg.train.checkpoint_every,
        resume=cfg.resume,
        evaluate=lambda _step: held_out(trainer, rendered_eval, reference_eval, eval_set, cfg),
        eval_every=cfg.train.eval_every,
        desc="dpo",
        max_minutes=cfg.train.max_minutes,
    )
    trainer.save_hf(run_dir / "model", tokenizer)
    final = held_out(trainer, rendered_eval, reference_eval, eval_set, cfg)
    write_json(run_dir / "eval.json", final)
    logger.log(step, {f"final/{k}": v for k, v in final.items()})
    logger.close()
    print(f"held-out pairs: {final['eval/pairs']}, implicit-reward accuracy {final['eval/rewards/accuracies']:.3f}")
    return {"steps": step, **final}


if __name__ == "__main__":
    run_command(DPOConfig, main, {RankingError: "rankings error"})
