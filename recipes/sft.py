"""Stage 2: supervised fine-tuning on conversations, then held-out accuracy through vLLM.

    python recipes/sft.py --config recipes/configs/sft_tiny.yaml [--data.tasks.arithmetic 400]
    ray job submit --working-dir . -- python recipes/sft.py --config recipes/configs/sft_tiny.yaml \
        --model_path $PWD/runs/pretrain_tiny/model --run_dir $PWD/runs/sft_tiny

Trains on a limited number of worked solutions per synthetic task (the textbook's worked
examples; RL later draws answer-only practice problems from a separate split) plus any JSONL
conversations in `data.conversations` ({"messages": [{"role", "content"}, ...]} per line).
Loss is on assistant tokens only. At every checkpoint the weights are pushed into a vLLM
rollout worker and held-out greedy accuracy is logged, which shows whether SFT has plateaued.
At the end, `<run_dir>/eval.json` holds greedy and sampled accuracy per task, and the model is
an HF folder in `<run_dir>/model`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from rlpost.chat import read_conversations, render_conversation
from rlpost.config import ConfigError, check_path, doc, run_command, save_config, section
from rlpost.distributed.cluster import init_ray
from rlpost.distributed.engine import VLLMConfig, start_rollout_workers
from rlpost.distributed.tools import ToolConfig
from rlpost.evaluate import EvalConfig, EvalResult, evaluate, format_table
from rlpost.metrics import LoggingConfig, MetricsLogger, read_metrics, write_json
from rlpost.tasks import SOLUTION_FORMATS, format_solution, make_problems
from rlpost.tokenizer import load_tokenizer
from rlpost.trainer import DeepSpeedConfig, DeepSpeedTrainer, OptimConfig, train_lm


@dataclass
class SFTData:
    tasks: dict[str, int] = doc(
        "Worked solutions per synthetic task (the scarce SFT set).",
        {"arithmetic": 800, "spelling_bee": 200, "spelling": 100, "compare": 100},
    )
    conversations: list[str] = doc("JSONL files of {'messages': [...]} conversations to train on as well.", [])
    tool_calls: bool = doc(
        "Spelling-bee solutions end with a Python check (`tools.enabled` at RL and eval time runs it).", True
    )
    solution_format: str = doc(
        "How the worked solutions are written: 'worked' (steps, then the answer), 'think' (the steps in "
        "<think>…</think>, then a one-line answer) or 'answer_first' (the answer, then the steps).",
        "worked",
    )

    def validate(self):
        if self.solution_format not in SOLUTION_FORMATS:
            raise ConfigError(f"data.solution_format: {self.solution_format!r} is not one of {list(SOLUTION_FORMATS)}")


@dataclass
class SFTTrain:
    steps: int = doc("Optimizer steps.", 1000)
    max_minutes: float = doc("Stop (with a checkpoint) after this many minutes of training; 0 = no limit.", 0.0)
    batch_size: int = doc("Conversations per step.", 32)
    checkpoint_every: int = doc("Checkpoint (and held-out greedy eval) every N steps.", 100)


@dataclass
class SFTConfig:
    model_path: str = doc(
        "Base model HF folder (from recipes/pretrain.py) or any HF causal LM with a chat template.",
        "runs/pretrain_tiny/model",
    )
    run_dir: str = doc("Output folder of this run.", "runs/sft_tiny")
    resume: bool = doc("Continue from the last checkpoint in run_dir if there is one.", False)
    seed: int = doc("Seed of the data order.", 0)
    data: SFTData = section(SFTData)
    train: SFTTrain = section(SFTTrain)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20))
    deepspeed: DeepSpeedConfig = section(DeepSpeedConfig)
    vllm: VLLMConfig = section(VLLMConfig)
    checkpoint_eval: EvalConfig = field(default_factory=lambda: EvalConfig(problems_per_task=100))
    final_eval: EvalConfig = field(default_factory=lambda: EvalConfig(problems_per_task=200))
    sampled_eval: EvalConfig = field(
        default_factory=lambda: EvalConfig(problems_per_task=500, samples=4, temperature=1.0)
    )
    sampled_eval_tasks: list[str] = doc(
        "Tasks evaluated by sampling (sampled pass@1 and pass@k) at the end; [] skips it.", ["arithmetic"]
    )
    logging: LoggingConfig = section(LoggingConfig)


def sft_examples(tokenizer, cfg: SFTData) -> list[tuple[list[int], list[int]]]:
    conversations = []
    for task, n in cfg.tasks.items():
        kwargs = {"with_tool": True} if task == "spelling_bee" and cfg.tool_calls else {}
        for p in make_problems(task, "sft", n, **kwargs):
            answer = format_solution(p.solution, p.answer, cfg.solution_format)
            conversations.append([{"role": "user", "content": p.prompt}, {"role": "assistant", "content": answer}])
    for path in cfg.conversations:
        conversations += read_conversations(path)
    return [render_conversation(tokenizer, c) for c in conversations]


def held_out(tasks, n: int):
    return [p for task in tasks for p in make_problems(task, "eval", n)]


def main(cfg: SFTConfig) -> dict:
    import ray

    check_path("model_path", cfg.model_path)
    for i, path in enumerate(cfg.data.conversations):
        check_path(f"data.conversations[{i}]", path)
    run_dir = Path(cfg.run_dir)
    save_config(cfg, run_dir / "config.yaml")
    tokenizer = load_tokenizer(cfg.model_path)
    examples = sft_examples(tokenizer, cfg.data)
    print(
        f"SFT: {len(examples)} conversations, {sum(sum(m) for _, m in examples)} trained tokens, "
        f"{cfg.train.steps * cfg.train.batch_size / len(examples):.1f} epochs"
    )

    init_ray(run_log=run_dir / "actors.log")  # the rollout worker's library output stays off the console
    worker = start_rollout_workers(cfg.model_path, dataclasses.replace(cfg.vllm, num_workers=1))[0]
    trainer = train(cfg, examples, tokenizer, worker)

    # Final held-out evaluation of the saved model: greedy, and sampled at temperature 1.
    ray.get(worker.update_weights.remote(trainer.full_state_dict()))
    results = final_evaluations(cfg, worker, tokenizer)
    report = {name: result.to_json() for name, result in results.items()}
    report["checkpoints"] = checkpoint_accuracy(run_dir)
    write_json(run_dir / "eval.json", report)
    print_results(results, cfg.sampled_eval)
    ray.kill(worker)
    return report


def train(cfg: SFTConfig, examples: list, tokenizer, worker) -> DeepSpeedTrainer:
    """Train on `examples`, with held-out greedy accuracy through `worker` at each checkpoint;
    the model is saved to <run_dir>/model. Returns the trainer, which holds the final weights."""
    import ray

    run_dir = Path(cfg.run_dir)
    checkpoint_problems = held_out(cfg.data.tasks, cfg.checkpoint_eval.problems_per_task)
    trainer = DeepSpeedTrainer(
        cfg.model_path,
        cfg.optim,
        cfg.deepspeed,
        total_steps=cfg.train.steps,
        micro_batch_size=cfg.train.batch_size,
        seed=cfg.seed,
    )

    def eval_checkpoint(step: int, _path) -> dict:
        ray.get(worker.update_weights.remote(trainer.full_state_dict()))
        result = evaluate(worker, tokenizer, checkpoint_problems, cfg.checkpoint_eval)
        summary = {f"eval/{task}": accuracy for task, accuracy in result.accuracy.items()}
        print(f"step {step}: held-out greedy " + ", ".join(f"{k[5:]} {v:.3f}" for k, v in summary.items()))
        return summary

    logger = MetricsLogger(run_dir, cfg.logging, "sft", config=None)
    train_lm(
        trainer,
        examples,
        steps=cfg.train.steps,
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        run_dir=run_dir,
        tokenizer=tokenizer,
        logger=logger,
        checkpoint_every=cfg.train.checkpoint_every,
        resume=cfg.resume,
        on_checkpoint=eval_checkpoint,
        desc="sft",
        max_minutes=cfg.train.max_minutes,
    )
    trainer.save_hf(run_dir / "model", tokenizer)
    logger.close()
    return trainer


def final_evaluations(cfg: SFTConfig, worker, tokenizer) -> dict[str, EvalResult]:
    """The held-out evaluations of the model `worker` holds: "greedy"; "greedy_with_tool" when the
    spelling-bee solutions call Python; "sampled" on `sampled_eval_tasks`."""
    final = held_out(cfg.data.tasks, cfg.final_eval.problems_per_task)
    results = {"greedy": evaluate(worker, tokenizer, final, cfg.final_eval)}
    if cfg.data.tool_calls and "spelling_bee" in cfg.data.tasks:
        # The same model, but its Python calls now run in the sandbox instead of being guessed.
        results["greedy_with_tool"] = evaluate(
            worker,
            tokenizer,
            held_out(["spelling_bee"], cfg.final_eval.problems_per_task),
            cfg.final_eval,
            tools=ToolConfig(enabled=True),
        )
    if cfg.sampled_eval_tasks:
        results["sampled"] = evaluate(
            worker, tokenizer, held_out(cfg.sampled_eval_tasks, cfg.sampled_eval.problems_per_task), cfg.sampled_eval
        )
    return results


def checkpoint_accuracy(run_dir: Path) -> list[dict]:
    """Held-out greedy accuracy at each checkpoint, from the run's metrics: flat at the end means
    SFT has plateaued."""
    return [
        {"step": m["step"], **{k[5:]: v for k, v in m.items() if k.startswith("eval/")}}
        for m in read_metrics(run_dir)
        if any(k.startswith("eval/") for k in m)
    ]


def print_results(results: dict[str, EvalResult], sampled_eval: EvalConfig) -> None:
    print("held-out greedy accuracy:\n" + format_table(results["greedy"]))
    if "greedy_with_tool" in results:
        print("with the Python tool:\n" + format_table(results["greedy_with_tool"], ("accuracy", "tool_calls")))
    if "sampled" in results:
        k = sampled_eval.samples
        print(
            f"held-out sampled (T={sampled_eval.temperature}, {k} per problem):\n"
            + format_table(results["sampled"], ("accuracy", f"pass@{k}"))
        )


if __name__ == "__main__":
    run_command(SFTConfig, main)
