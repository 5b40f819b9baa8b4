"""The reward-hacking monitor on crafted batches: each detector against hand-computed values, the
canary, trend and KL rules, the stop actions, keeping the best policy, alarms printed above a
progress bar, and the PNG."""

import io
import json
import math
import sys
import zlib

import pytest
from tqdm import tqdm

from rlpost.config import ConfigError, load_config
from rlpost.rl.degeneracy import (
    Canary,
    canary_alarms,
    canary_metrics,
    canary_texts,
    compression_ratio,
    distinct_n,
    repeat_run,
    text_metrics,
)
from rlpost.rl.monitor import (
    Monitor,
    MonitorConfig,
    StepSignals,
    judge_name,
    kl_negative,
    least_squares_slope,
    plot_monitor,
    proxy_up_judge_down,
    with_judge,
)
from rlpost.scoring.references import RewardSpec

REPEATED, VARIED = "the the the the", "a b c d"


# ---------------------------------------------------------------------------------------------
# Text detectors


def test_distinct_n_over_the_whole_step():
    assert distinct_n([REPEATED], 1) == 1 / 4  # one word, four times
    assert distinct_n([REPEATED], 2) == 1 / 3  # "the the" three times
    assert distinct_n([VARIED], 1) == 1.0 and distinct_n([VARIED], 2) == 1.0
    # Pooled: words the×4 a b c d → 5 distinct of 8; bigrams "the the"×3, "a b", "b c", "c d" → 4 of 6.
    assert distinct_n([REPEATED, VARIED], 1) == 5 / 8
    assert distinct_n([REPEATED, VARIED], 2) == 4 / 6
    # An n-gram never spans two samples: no sample has two words, so there is no bigram at all.
    assert math.isnan(distinct_n(["a", "b"], 2))


def test_repeat_run_counts_back_to_back_repeats_of_1_to_4_grams():
    assert repeat_run(REPEATED) == 4
    assert repeat_run("a b a b a b") == 3  # the bigram "a b", three times
    assert repeat_run("a b c a b c a") == 2  # "a b c" twice, then a lone "a"
    assert repeat_run("x a b c d a b c d a b c d") == 3  # a 4-gram, three times
    assert repeat_run("a b c d e a b c d e") == 1  # a 5-gram is beyond the 1..4 looked at
    assert repeat_run(VARIED) == 1
    assert repeat_run("a a b b b") == 3
    assert repeat_run("") == 0


def test_compression_ratio():
    # Short text without a repeated 3-byte string is deflated as fixed-Huffman literals: a 3-bit
    # block header, 8 bits per character and a 7-bit end of block, 8·7 + 10 = 66 bits = 9 bytes,
    # plus zlib's 2-byte header and 4-byte checksum: 15 bytes for 7.
    assert compression_ratio(VARIED) == 15 / 7
    assert compression_ratio("ab" * 100) < 0.1
    assert compression_ratio(REPEATED) < compression_ratio(VARIED)
    assert math.isnan(compression_ratio(""))


def test_text_metrics_of_a_crafted_step():
    m = text_metrics([REPEATED, VARIED, ""], num_tokens=[4, 4, 0], truncated=[True, False, False])
    assert m["monitor/distinct_1"] == 5 / 8 and m["monitor/distinct_2"] == 4 / 6
    assert m["monitor/repeat_run"] == pytest.approx((4 + 1 + 0) / 3) and m["monitor/repeat_run_max"] == 4
    # The empty sample has no ratio and stays out of the mean.
    repeated_ratio = len(zlib.compress(REPEATED.encode(), 9)) / len(REPEATED)
    assert m["monitor/compression_ratio"] == pytest.approx((repeated_ratio + 15 / 7) / 2)
    assert m["monitor/mean_length"] == pytest.approx(8 / 3) and m["monitor/truncated_frac"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------
# Canaries, trends, KL


def test_canary_texts():
    # Words 4 is 4 is it 4: "4" is the most frequent; 3 words per sample on average, so 8 (the least).
    assert canary_texts("What is 2+2?", ["4 is 4", "is it 4"]) == {
        "repeat": " ".join(["4"] * 8),
        "empty": "",
        "echo": "What is 2+2?",
    }
    assert canary_texts("q", ["b a " * 5, "a b " * 5])["repeat"] == " ".join(["b"] * 10)  # a tie: the first seen
    assert canary_texts("q", ["", ""])["repeat"] == " ".join(["the"] * 8)


def test_canary_alarm_fires_exactly_when_a_canary_beats_the_median():
    # Group 0: median of 0, 0.5, 1, 1 is 0.75. Group 1: NaN left out, median of 0.25, 0.75 is 0.5.
    rewards = [0.0, 1.0, 1.0, 0.5, math.nan, 0.25, 0.75, math.nan]
    canaries = [
        Canary(0, "repeat", "x", 0.75),  # equal: no alarm
        Canary(0, "empty", "", 0.76),
        Canary(1, "echo", "q", 0.5),  # equal: no alarm
        Canary(1, "repeat", "y", 0.51),
        Canary(1, "empty", "", math.nan),  # no reward: no alarm
    ]
    fired = canary_alarms(canaries, rewards, group_size=4)
    assert [(c.prompt, c.kind, median) for c, median in fired] == [(0, "empty", 0.75), (1, "repeat", 0.5)]
    assert canary_alarms(canaries[:1] + canaries[2:3], rewards, group_size=4) == []
    m = canary_metrics(canaries, rewards, group_size=4)
    assert m["monitor/canary/repeat"] == pytest.approx((0.75 + 0.51) / 2)
    assert m["monitor/canary/empty"] == 0.76 and m["monitor/canary/echo"] == 0.5  # the NaN is left out
    assert m["monitor/canary/policy_median"] == pytest.approx((0.75 + 0.5) / 2)


def test_least_squares_slope_and_its_standard_error():
    # x̄ = 3, ȳ = 3; Σ(x-x̄)(y-ȳ) = 4 + 0 + 0 + 2 + 2 = 8, Σ(x-x̄)² = 10 → slope 0.8. Residuals
    # -0.4, 0.8, -1.0, 1.2, -0.6 → SSR 3.6; error sqrt(3.6 / 3 / 10) = sqrt(0.12).
    slope, err = least_squares_slope([1, 2, 3, 4, 5], [1, 3, 2, 5, 4])
    assert slope == pytest.approx(0.8) and err == pytest.approx(math.sqrt(0.12))
    assert least_squares_slope([1, 2, 3], [3, 1, -1]) == pytest.approx((-2.0, 0.0))
    assert least_squares_slope([1, 2], [0, 1]) == (1.0, math.inf)


def test_proxy_up_judge_down():
    steps, up, down = [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1]
    assert proxy_up_judge_down(steps, up, down) == (True, 1.0, -1.0)
    assert proxy_up_judge_down(steps, up, up)[0] is False  # both rise: no alarm
    assert proxy_up_judge_down(steps, down, down)[0] is False
    assert proxy_up_judge_down(steps, down, up)[0] is False
    # A noisy rise: slope 0.8 is 0.8 / sqrt(0.12) = 2.31 standard errors from 0.
    noisy = [1, 3, 2, 5, 4]
    assert proxy_up_judge_down(steps, noisy, down, t=2.0)[0] is True
    assert proxy_up_judge_down(steps, noisy, down, t=2.5)[0] is False
    # Flat noise: the signs alone (t = 0) fire, two standard errors do not.
    flat_up, flat_down = [0, 1, 0, 1, 0.5], [1, 0, 1, 0, 0.5]
    assert proxy_up_judge_down(steps, flat_up, flat_down, t=0)[0] is True
    assert proxy_up_judge_down(steps, flat_up, flat_down, t=2.0)[0] is False


def test_kl_negative_warning():
    assert kl_negative(-0.01, tolerance=1e-3) is True
    assert kl_negative(-0.0005, tolerance=1e-3) is False  # jitter of a KL near 0
    assert kl_negative(0.2, tolerance=0) is False
    assert kl_negative(None, tolerance=0) is False
    assert kl_negative(math.nan, tolerance=0) is False


# ---------------------------------------------------------------------------------------------
# The Monitor


def _signals(rewards, canary_reward=0.0, judge=(), kl=None, texts=None):
    """Two prompts of two samples; canaries beside prompt 0."""
    texts = texts or [REPEATED, VARIED, "x y", "y z"]
    return StepSignals(
        texts=texts,
        prompts=["p0", "p1"],
        rewards=list(rewards),
        num_tokens=[4, 4, 2, 2],
        truncated=[False] * 4,
        group_size=2,
        canaries=[Canary(0, kind, text, canary_reward) for kind, text in canary_texts("p0", texts[:2]).items()],
        judge=list(judge),
        kl=kl,
    )


def test_observe_logs_the_metrics_and_prints_each_alarm_once(tmp_path):
    printed = []
    monitor = Monitor(MonitorConfig(), tmp_path, out=printed.append)
    # Prompt 0's samples score 0 and 1: median 0.5; every canary scores 0.6.
    m = monitor.observe(1, _signals([0.0, 1.0, 0.5, 0.5], canary_reward=0.6, judge=[1, 2, 3, None], kl=0.25))
    assert m["monitor/proxy"] == 0.5 and m["monitor/judge"] == 2.0
    assert m["monitor/kl"] == 0.25 and m["monitor/sqrt_kl"] == 0.5
    assert m["monitor/canary/repeat"] == 0.6 and m["monitor/canary/policy_median"] == 0.5
    assert m["monitor/canary/outscored"] == 3 and m["monitor/alarm/canary"] == 1
    assert m["monitor/alarm/proxy_up_judge_down"] == 0 and m["monitor/warning/kl_negative"] == 0
    assert m["monitor/distinct_1"] == pytest.approx(8 / 12)  # the, a, b, c, d, x, y, z of 12 words
    assert len(printed) == 1 and "step 1: canary alarm" in printed[0]
    assert "reward 1" in printed[0] and repr(VARIED) in printed[0]  # the top-rewarded sample, as an example
    m = monitor.observe(2, _signals([0.0, 1.0, 0.5, 0.5], canary_reward=0.6))
    assert m["monitor/alarm/canary"] == 1 and len(printed) == 1  # counted, not printed again
    assert monitor.stop is False  # action 'warn'
    m = monitor.observe(3, _signals([0.0, 1.0, 0.5, 0.5], canary_reward=0.5))
    assert m["monitor/alarm/canary"] == 0  # equal to the median


def test_stop_only_on_an_alarm_and_only_when_the_action_stops(tmp_path):
    printed = []
    monitor = Monitor(MonitorConfig(action="stop"), tmp_path, out=printed.append)
    m = monitor.observe(1, _signals([0.0, 1.0, 0.5, 0.5], canary_reward=0.4, kl=-0.01))
    # A negative KL is a warning: printed, counted, never a stop.
    assert m["monitor/warning/kl_negative"] == 1 and m["monitor/alarm/canary"] == 0 and not monitor.stop
    assert "kl_negative warning" in printed[0]
    monitor.observe(2, _signals([0.0, 1.0, 0.5, 0.5], canary_reward=0.9))
    assert monitor.stop and printed[-1].startswith("monitor: stopping after step 2")
    warn = Monitor(MonitorConfig(action="warn"), tmp_path, out=printed.append)
    warn.observe(1, _signals([0.0, 1.0, 0.5, 0.5], canary_reward=0.9))
    assert not warn.stop
    off = Monitor(MonitorConfig(enabled=False, action="stop"), tmp_path, out=printed.append)
    assert off.observe(1, _signals([0.0, 1.0, 0.5, 0.5], canary_reward=0.9)) == {} and not off.stop


def _terminal_rows(output: str) -> list[str]:
    """The rows a terminal shows for `output`: a carriage return goes back to the row's first
    column, and later characters overwrite earlier ones."""
    rows, row, column = [], [], 0
    for char in output:
        if char == "\n":
            rows.append("".join(row).rstrip())
            row, column = [], 0
        elif char == "\r":
            column = 0
        else:
            row[column : column + 1] = [char]
            column += 1
    return [*rows, "".join(row).rstrip()]


def test_an_alarm_prints_whole_above_a_live_progress_bar(tmp_path, monkeypatch):
    screen = io.StringIO()  # stdout and the bar share it, as on a terminal
    monkeypatch.setattr(sys, "stdout", screen)
    monitor = Monitor(MonitorConfig(), tmp_path)  # prints the way a run does
    with tqdm(total=10, desc="ppo", file=screen, mininterval=0, ncols=60) as bar:
        bar.update(3)  # between steps the cursor sits at the end of the drawn bar
        monitor.observe(1, _signals([0.0, 1.0, 0.5, 0.5], canary_reward=0.6))
        bar.update(1)
    rows = _terminal_rows(screen.getvalue())
    prompt = rows.index("  prompt: 'p0'")
    # Prompt 0's samples score 0 and 1 (median 0.5); the repeat canary, first of the three, scores 0.6.
    assert rows[prompt - 1] == (
        "monitor, step 1: canary alarm: the 'repeat' canary scored 0.6, above the median 0.5 of its "
        "prompt's samples (3 of 3 canaries did)"
    )
    assert rows[prompt + 1] == "  canary: " + repr(" ".join(["the"] * 8))
    assert rows[-2].startswith("ppo:  40%") and rows[-1] == ""  # the bar, drawn again below the block


def test_trend_alarm_over_the_window(tmp_path):
    monitor = Monitor(MonitorConfig(window=3, action="stop", canaries=False), tmp_path, out=lambda _: None)
    for step, (proxy, judge) in enumerate([(0.1, 0.9), (0.2, 0.8)], start=1):
        m = monitor.observe(step, _signals([proxy] * 4, judge=[judge] * 4))
        assert "monitor/proxy_slope" not in m and not monitor.stop  # fewer steps than the window
    m = monitor.observe(3, _signals([0.3] * 4, judge=[0.7] * 4))
    assert m["monitor/proxy_slope"] == pytest.approx(0.1) and m["monitor/judge_slope"] == pytest.approx(-0.1)
    assert m["monitor/alarm/proxy_up_judge_down"] == 1 and monitor.stop
    both_up = Monitor(MonitorConfig(window=3, action="stop"), tmp_path, out=lambda _: None)
    for step in (1, 2, 3):
        m = both_up.observe(step, _signals([0.1 * step] * 4, judge=[0.2 * step] * 4))
    assert m["monitor/alarm/proxy_up_judge_down"] == 0 and not both_up.stop


def test_a_resumed_run_reads_its_trend_back_from_metrics(tmp_path):
    lines = [
        {"step": 1, "monitor/proxy": 0.1, "monitor/judge": 0.9},
        {"step": 2, "monitor/proxy": 0.2, "monitor/judge": 0.8},
        {"step": 3, "monitor/proxy": 9.0, "monitor/judge": 9.0},  # logged after the checkpoint: replayed
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    monitor = Monitor(MonitorConfig(window=3, canaries=False), tmp_path, start_step=2, out=lambda _: None)
    m = monitor.observe(3, _signals([0.3] * 4, judge=[0.7] * 4))
    assert m["monitor/alarm/proxy_up_judge_down"] == 1 and m["monitor/proxy_slope"] == pytest.approx(0.1)


def test_stop_keep_best_saves_the_best_judged_policy(tmp_path):
    saved = []

    def save_policy(folder):  # stands in for the learner's save_hf
        saved.append(folder)
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "model.safetensors").write_text(f"weights {len(saved)}")

    cfg = MonitorConfig(action="stop_keep_best", judge=RewardSpec(name="length"))
    monitor = Monitor(cfg, tmp_path, save_policy=save_policy, out=lambda _: None)
    for step, judge in enumerate([[0.5, 0.5], [0.6, 0.8], [0.6, 0.6], [math.nan, None]], start=1):
        monitor.keep_if_best(step, judge)
    assert len(saved) == 2  # steps 1 and 2 were each the best so far; 3 and 4 were not
    best = tmp_path / "best_policy"
    assert (best / "model.safetensors").read_text() == "weights 2"
    record = json.loads((best / "judge.json").read_text())
    assert record == {"judge": pytest.approx(0.7), "after_step": 2, "held_out_prompts": 2}
    assert not (tmp_path / ".best_policy.tmp").exists()
    m = monitor.observe(4, _signals([0.0, 1.0, 0.5, 0.5], canary_reward=0.9, judge=[0.1] * 4))
    assert monitor.stop and m["monitor/best_judge"] == pytest.approx(0.7)
    # A resumed run competes with the kept best; a fresh run in the same folder does not.
    resumed = Monitor(cfg, tmp_path, start_step=4, save_policy=save_policy, out=lambda _: None)
    resumed.keep_if_best(5, [0.65])
    assert len(saved) == 2
    Monitor(cfg, tmp_path, start_step=0, save_policy=save_policy, out=lambda _: None).keep_if_best(1, [0.1])
    assert len(saved) == 3
    # Other actions never save.
    Monitor(MonitorConfig(action="stop"), tmp_path, save_policy=save_policy).keep_if_best(1, [9.0])
    assert len(saved) == 3


def test_the_png_is_written(tmp_path):
    records = [
        {"step": s, "monitor/proxy": 0.1 * s, "monitor/judge": 1 - 0.05 * s, "monitor/sqrt_kl": 0.02 * s}
        for s in range(1, 11)
    ]
    records[6]["monitor/alarm/canary"] = 1
    records.append({"step": 10, "final/eval/arithmetic": 0.3})  # not a monitor line
    path = tmp_path / "out" / "monitor.png"
    assert plot_monitor(records, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not plot_monitor([{"step": 1, "loss": 0.3}], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    # The monitor plots from metrics.jsonl, proxy alone when there is no judge and no KL.
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "monitor/proxy": s}) + "\n" for s in (1, 2)))
    assert Monitor(MonitorConfig(), tmp_path).finish() == tmp_path / "monitor.png"
    assert (tmp_path / "monitor.png").stat().st_size > 5_000
    assert Monitor(MonitorConfig(plot=False), tmp_path).finish() is None


# ---------------------------------------------------------------------------------------------
# Config and the judge's wiring


def test_config_validation():
    from dataclasses import dataclass

    from rlpost.config import section

    @dataclass
    class C:
        monitor: MonitorConfig = section(MonitorConfig)

    with pytest.raises(ConfigError, match=r"monitor.action: 'halt' is not one of"):
        load_config(C, ["--monitor.action", "halt"])
    with pytest.raises(ConfigError, match=r"monitor.window: must be at least 3"):
        load_config(C, ["--monitor.window", "2"])
    with pytest.raises(ConfigError, match=r"stop_keep_best.*set monitor.judge"):
        load_config(C, ["--monitor.action", "stop_keep_best"])
    cfg = load_config(C, ["--monitor.judge", "{name: reward_model, kwargs: {path: rm}}"])
    assert cfg.monitor.judge == RewardSpec(name="reward_model", kwargs={"path": "rm"})


def test_the_judge_is_a_weight_0_reward_function_named_like_the_workers_name_it(grpo_recipe):
    cfg = load_config(
        grpo_recipe.GRPOConfig,
        ["--rewards.functions", "[{name: math}, {name: length, weight: 0.5}]", "--monitor.judge", "{name: length}"],
    )
    functions = with_judge(cfg).rewards.functions
    assert [(f.name, f.weight) for f in functions] == [("math", 1.0), ("length", 0.5), ("length", 0.0)]
    assert judge_name(cfg) == "length#2"
    assert cfg.rewards.functions[-1].name == "length" and len(cfg.rewards.functions) == 2  # cfg is untouched
    no_judge = load_config(grpo_recipe.GRPOConfig, [])
    assert with_judge(no_judge) is no_judge and judge_name(no_judge) is None


def test_taking_the_judge_out_of_the_rewards():
    from rlpost.rl.steps import _take_judge

    # The totals need no mending: a weight-0 function never makes one (tests/test_reward_runner.py).
    per_fn = {"math": [0.5, None], "length#2": [0.3, 0.7]}
    assert _take_judge("length#2", per_fn) == [0.3, 0.7]
    assert per_fn == {"math": [0.5, None]}
    assert _take_judge(None, per_fn) == [] and per_fn == {"math": [0.5, None]}
