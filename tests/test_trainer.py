"""The resumable training loop (`train_loop`, `train_lm`) on a stand-in for the DeepSpeed trainer:
data order across epochs and resumes, the evaluation and checkpoint hooks, the time limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlpost.batching import epoch_batches
from rlpost.trainer import train_lm, train_loop


class StandInTrainer:
    """What the loop asks of a DeepSpeedTrainer: a rank, checkpoints, and (for train_lm) a step."""

    rank = 0

    def __init__(self, latest_step: int | None = None):
        self.latest_step = latest_step
        self.checkpoints: list[int] = []
        self.lm_batches: list[tuple[list, list]] = []

    def load_latest(self, _run_dir):
        return None if self.latest_step is None else {"step": self.latest_step}

    def save_checkpoint(self, run_dir, step, _tokenizer, _client_state):
        self.checkpoints.append(step)
        return Path(run_dir) / f"step_{step}"

    def train_lm_batch(self, input_ids, loss_mask):
        self.lm_batches.append((input_ids.tolist(), loss_mask.tolist()))
        return {"loss": 1.0, "lr": 0.1}


class ListLogger:
    def __init__(self):
        self.lines: list[tuple[int, dict]] = []

    def log(self, step, metrics):
        self.lines.append((step, metrics))


LENGTHS = [5, 1, 4, 2, 6, 3]  # 6 examples in batches of 2: 3 steps an epoch


def run(trainer, steps=7, **options):
    seen, logger = [], ListLogger()

    def step_fn(indices, step):
        seen.append((step, indices))
        return {"loss": float(step), "lr": 0.1}

    options = {"checkpoint_every": 100, "resume": False, **options}
    last = train_loop(
        trainer, LENGTHS, step_fn, steps=steps, batch_size=2, seed=3, run_dir="run", tokenizer=None, logger=logger,
        **options,
    )  # fmt: skip
    return last, seen, logger.lines


def test_steps_walk_each_epochs_batches_in_order_and_log_the_epoch():
    trainer = StandInTrainer()
    last, seen, lines = run(trainer)
    expected = [*epoch_batches(LENGTHS, 2, 3, 0), *epoch_batches(LENGTHS, 2, 3, 1), epoch_batches(LENGTHS, 2, 3, 2)[0]]
    assert seen == list(enumerate(expected))
    assert last == 7
    assert [step for step, _ in lines] == [1, 2, 3, 4, 5, 6, 7]
    assert [m["epoch"] for _, m in lines] == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    assert [m["loss"] for _, m in lines] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert trainer.checkpoints == [7]  # only the final one with checkpoint_every=100


def test_a_resumed_run_sees_the_batches_the_uninterrupted_run_saw(capsys):
    _, uninterrupted, _ = run(StandInTrainer())
    last, resumed, lines = run(StandInTrainer(latest_step=4), resume=True)
    assert "resumed from step 4" in capsys.readouterr().out
    assert resumed == uninterrupted[4:]
    assert [step for step, _ in lines] == [5, 6, 7] and last == 7
    # Without --resume the checkpoint is ignored.
    _, fresh, _ = run(StandInTrainer(latest_step=4))
    assert fresh == uninterrupted


def test_evaluation_and_checkpoint_hooks_add_their_metrics_to_the_step_line():
    trainer = StandInTrainer()
    checkpoint_dirs = []

    def on_checkpoint(step, path):
        checkpoint_dirs.append(path)
        return {"eval/at_checkpoint": step * 10}

    _, _, lines = run(
        trainer,
        checkpoint_every=3,
        evaluate=lambda step: {"eval/every_two": step * 100},
        eval_every=2,
        on_checkpoint=on_checkpoint,
    )
    assert trainer.checkpoints == [3, 6, 7]
    assert checkpoint_dirs == [Path("run/step_3"), Path("run/step_6"), Path("run/step_7")]
    by_step = dict(lines)
    assert [s for s in by_step if "eval/every_two" in by_step[s]] == [2, 4, 6]
    assert [s for s in by_step if "eval/at_checkpoint" in by_step[s]] == [3, 6, 7]
    assert list(by_step[6]) == ["loss", "lr", "epoch", "eval/every_two", "eval/at_checkpoint"]
    assert by_step[6]["eval/every_two"] == 600 and by_step[6]["eval/at_checkpoint"] == 60


def test_the_time_limit_stops_after_a_step_with_a_checkpoint(capsys):
    trainer = StandInTrainer()
    last, seen, lines = run(trainer, steps=50, max_minutes=1e-9)  # 60 ns: spent by the first step
    assert last == 1 and len(seen) == 1 and [s for s, _ in lines] == [1]
    assert trainer.checkpoints == [1]
    assert "stopping after 1e-09 minutes at step 1" in capsys.readouterr().out


def test_train_lm_right_pads_each_batch_shortest_first():
    class Tokenizer:
        pad_token_id = 0

    trainer, logger = StandInTrainer(), ListLogger()
    examples = [([5, 6, 7], [0, 1, 1]), ([8], [1])]
    last = train_lm(
        trainer, examples, steps=2, batch_size=2, seed=0, run_dir="run", tokenizer=Tokenizer(), logger=logger,
        checkpoint_every=1, resume=False, desc="sft",
    )  # fmt: skip
    # One batch an epoch; within its window the examples are sorted by length.
    batch = ([[8, 0, 0], [5, 6, 7]], [[1, 0, 0], [0, 1, 1]])
    assert trainer.lm_batches == [batch, batch]
    assert last == 2 and trainer.checkpoints == [1, 2]
    assert logger.lines == [(1, {"loss": 1.0, "lr": 0.1, "epoch": 0.0}), (2, {"loss": 1.0, "lr": 0.1, "epoch": 1.0})]
