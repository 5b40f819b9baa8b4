"""The measurements of bench/rlhf_tiny.py: reward models on held-out rankings, and policies on
held-out problems (accuracy, win rate under the SIMULATED labeler's hidden preference, length, KL
to the SFT model, the monitor's alarms), and the verdict drawn from them.
"""

from __future__ import annotations

import statistics
from types import SimpleNamespace

import torch

from rewards.reward_model import reward_model_reward
from rlpost.compare.stats import mean_ci95
from rlpost.config import load_recipe
from rlpost.distributed.cluster import init_ray
from rlpost.evaluate import EvalConfig, evaluate_models
from rlpost.rlhf.ranking_metrics import ranking_metrics
from rlpost.rlhf.simulated_labeler import hidden_score, hidden_win_rate
from rlpost.tasks import Problem
from rlpost.tokenizer import load_tokenizer

PENALTY = 1.0  # λ of the ensemble reward mean − λ·std
MIN_WIN_RATE = 0.65
VERDICT_RULE = (
    f"passes when its win rate against SFT under the hidden preference is at least {MIN_WIN_RATE} AND the upper "
    "end of its accuracy's 95 % interval is at least SFT's mean accuracy (the interval does not lie wholly below it)"
)
MEMBER_KEYS = ("pair_accuracy", "best_worst_accuracy", "kendall_tau")
BASELINE_KEYS = ("longer_wins_pair_accuracy", "shorter_wins_pair_accuracy")


def ensemble_scores(paths: list, prompts: list, texts: list[str]) -> dict:
    """The ensemble reward of every (prompt, text) as RL sees it (normalised members, mean − λ·std),
    with each member's normalised score under member_<i>."""
    return reward_model_reward(prompts, texts, paths=[str(p) for p in paths], penalty=PENALTY, batch_size=32)


def reward_models_held_out(paths: list, held_out: list) -> dict:
    """Each member's and the ensemble's accuracy on the held-out rankings (95 % intervals over
    prompts), beside the "longer wins" / "shorter wins" baselines on the same rankings."""
    prompts = [r.prompt for r in held_out for _ in r.responses]
    scores = ensemble_scores(paths, prompts, [text for r in held_out for text in r.responses])
    ranks, responses = [list(r.ranks) for r in held_out], [list(r.responses) for r in held_out]

    def per_ranking(flat: list[float]) -> list[list[float]]:
        out, start = [], 0
        for r in held_out:
            out.append(flat[start : start + len(r.responses)])
            start += len(r.responses)
        return out

    names = {f"member_{i}": f"member_{i}" for i in range(len(paths))} | {"ensemble": "reward"}
    metrics = {name: ranking_metrics(per_ranking(scores[key]), ranks, responses) for name, key in names.items()}
    first = metrics["member_0"]
    return {
        "prompts": first["prompts"],
        "all_tied_prompts": first["all_tied_prompts"],
        **{name: {k: m[k] for k in MEMBER_KEYS} for name, m in metrics.items()},
        "baselines": {k: first[k] for k in BASELINE_KEYS},
    }


@torch.no_grad()
def kl_to_sft(model_path, sft_path, prompts: list, completions: list[str], batch_size: int = 32) -> list[float]:
    """Per sequence, Σ_t [log π(y_t) − log π_sft(y_t)] in nats over the completion's tokens: each
    completion re-tokenised as the assistant turn after its prompt with the chat template (its
    end-of-turn token included), as DPO renders a response; fp32 on the CPU. Its mean over the
    policy's own samples estimates KL(π ‖ π_sft)."""
    from transformers import AutoModelForCausalLM

    dpo = load_recipe("dpo")
    tokenizer = load_tokenizer(str(sft_path))
    examples = [
        dpo.render(tokenizer, SimpleNamespace(prompt=p, responses=[c]), max_tokens=4096)[0]
        for p, c in zip(prompts, completions)
    ]

    def logps(path) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        forward, pad = (lambda ids: model(ids).logits), model.config.pad_token_id
        chunks = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        return torch.cat([dpo.sequence_logps(forward, chunk, pad, mean=False) for chunk in chunks])

    return (logps(model_path) - logps(sft_path)).tolist()


def first_alarms(steps: list[dict]) -> dict:
    """The first step at which each monitor/alarm/* metric fired (None: never)."""
    keys = sorted({k for m in steps for k in m if k.startswith("monitor/alarm/")})
    return {k.removeprefix("monitor/alarm/"): next((m["step"] for m in steps if m.get(k)), None) for k in keys}


def sample_held_out(models: dict, problems: list[Problem]) -> dict[str, list[dict]]:
    """One answer per problem and model at temperature 1 (one vLLM engine, weights swapped): each
    model's transcripts, {"prompt", "answer", "completion", "correct"} per problem."""
    init_ray()
    sampled = {"sampled": EvalConfig(temperature=1.0, samples=1, max_new_tokens=128)}
    results = evaluate_models({k: str(v) for k, v in models.items()}, problems, sampled)
    return {name: result["sampled"].transcripts for name, result in results.items()}


def policies_held_out(models: dict, problems: list[Problem], ensemble: list, alarms: dict) -> dict:
    """Per model on the held-out problems: accuracy (95 % bootstrap interval over problems), win
    rate against the SFT model ("sft" in `models`) under the hidden preference, hidden score,
    ensemble reward, characters, KL to the SFT model, and the alarms its training run raised."""
    transcripts = sample_held_out(models, problems)
    prompts, answers = [p.prompt for p in problems], [p.answer for p in problems]
    texts = {name: [t["completion"] for t in ts] for name, ts in transcripts.items()}
    report = {}
    for name, path in models.items():
        kl = [0.0] * len(prompts) if name == "sft" else kl_to_sft(path, models["sft"], prompts, texts[name])
        report[name] = {
            "accuracy": mean_ci95([float(t["correct"]) for t in transcripts[name]]),
            "win_rate_vs_sft": None if name == "sft" else hidden_win_rate(prompts, answers, texts[name], texts["sft"]),
            "hidden_score_mean": statistics.fmean(map(hidden_score, prompts, texts[name], answers)),
            "reward_model_ensemble_score_mean": statistics.fmean(
                ensemble_scores(ensemble, prompts, texts[name])["reward"]
            ),
            "chars_mean": statistics.fmean(map(len, texts[name])),
            "kl_to_sft_nats": statistics.fmean(kl),
            "first_alarm_step": alarms.get(name),
            "example": {"prompt": prompts[0], "response": texts[name][0]},
        }
    return report


def verdict(held_out: dict, names: tuple[str, ...]) -> dict:
    """For each model of `names`, whether it passes `VERDICT_RULE` against held_out["sft"]."""
    sft_accuracy = held_out["sft"]["accuracy"]["mean"]
    out: dict = {"rule": VERDICT_RULE, "sft_accuracy": sft_accuracy}
    for name in names:
        win, accuracy = held_out[name]["win_rate_vs_sft"]["mean"], held_out[name]["accuracy"]
        out[name] = {
            "win_rate": win,
            "accuracy_ci95": accuracy["ci95"],
            "passes": win >= MIN_WIN_RATE and accuracy["ci95"][1] >= sft_accuracy,
        }
    return out
