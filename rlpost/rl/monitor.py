"""The reward-hacking monitor: cheap signs, every RL step, that the policy games its reward.

    MonitorConfig                       the `monitor` section of an RL recipe's config
    with_judge, judge_name              the judge run as a weight-0 reward function, and its name
    least_squares_slope,                the trend test of the proxy reward against the judge (pure)
      proxy_up_judge_down, kl_negative
    StepSignals, Monitor                called by the loop once per step: metrics, alarms, stop
    print_above_bars                    how alarms are printed while a progress bar is on screen
    plot_monitor                        <run_dir>/monitor.png: proxy reward, judge score, √KL

The signals:
- text detectors and canaries (rlpost/rl/degeneracy.py): repetition, low variety, and degenerate
  answers scored by the same reward workers as the policy's samples;
- a judge: a second reward (e.g. a reward model fitted to another split of the rankings) run as a
  weight-0 reward function in the same workers, so it scores every sample but never enters the
  reward; the proxy rising while the judge falls over a window is the overoptimisation of Gao et
  al. (2022), "Scaling Laws for Reward Model Overoptimization";
- the learner's KL estimate to the reference (only when the loss has a KL term): below zero is a
  warning, never a stop (with k2/k3 the estimate cannot go below zero; with k1 it can).

An RL loop (GRPO here, PPO alike) calls, per step:
    metrics.update(monitor.observe(step, signals)) after the update, with the learner's KL when it has one
    monitor.keep_if_best(step, judge_scores)       every `judge_every` steps, right after a weight sync: the
                                                   judge's scores of the policy's answers to fixed held-out prompts
    monitor.stop                                   true once an alarm fired and the action stops
and `monitor.finish()` at the end of the run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from rlpost.config import ConfigError, doc
from rlpost.metrics import read_metrics
from rlpost.rl.degeneracy import Canary, canary_alarms, canary_metrics, is_finite, mean_of_finite, text_metrics
from rlpost.scoring.references import RewardSpec, absolute_reference, unique_names

ACTIONS = ("warn", "stop", "stop_keep_best")
ALARMS = ("canary", "proxy_up_judge_down")  # these stop a run whose action stops; a warning never does


@dataclass
class MonitorConfig:
    enabled: bool = doc("Run the reward-hacking monitor every step (metrics monitor/*, alarms).", True)
    action: str = doc(
        "On an alarm: 'warn' (print it once, go on), 'stop' (end the run after the step) or 'stop_keep_best' "
        "(stop, and keep the policy with the best mean judge score in <run_dir>/best_policy; needs a judge).",
        "warn",
    )
    window: int = doc("Steps of the proxy-up / judge-down test: least-squares slopes over the last N steps.", 20)
    trend_t: float = doc("Standard errors each slope must be away from 0 for the trend alarm (0: its sign alone).", 2.0)
    canaries: bool = doc("Score canaries (a repeated word, the empty answer, the prompt echoed) every step.", True)
    canary_prompts: int = doc("Prompts per step that get canaries: the step's first groups.", 4)
    judge: RewardSpec | None = doc(
        "A second reward that scores every sample and never enters the reward (run as a weight-0 reward function), "
        "a spec like a rewards.functions entry, e.g. {name: reward_model, kwargs: {path: ...}}. None: no judge.",
        None,
    )
    judge_every: int = doc(
        "With 'stop_keep_best': every N steps (and before the first) the judge scores the policy's greedy answers "
        "to the same judge_prompts held-out prompts, right after a weight sync, and the best-scored policy is kept.",
        10,
    )
    judge_prompts: int = doc("Held-out prompts the judge scores for keep-best (the first of the eval set).", 64)
    kl_tolerance: float = doc("Warn when the learner's KL estimate is below -kl_tolerance (a KL near 0 jitters).", 1e-3)
    plot: bool = doc("Write <run_dir>/monitor.png at the end: proxy reward, judge score and √KL over steps.", True)

    def validate(self):
        if self.action not in ACTIONS:
            raise ConfigError(f"monitor.action: {self.action!r} is not one of {list(ACTIONS)}")
        if self.window < 3:
            raise ConfigError(f"monitor.window: must be at least 3 (a slope needs residuals), got {self.window}")
        if self.judge_every < 1 or self.judge_prompts < 1:
            raise ConfigError("monitor.judge_every and monitor.judge_prompts: must be at least 1")
        if self.canary_prompts < 1:
            raise ConfigError(f"monitor.canary_prompts: must be at least 1, got {self.canary_prompts}")
        if self.trend_t < 0 or self.kl_tolerance < 0:
            raise ConfigError("monitor.trend_t and monitor.kl_tolerance: must be 0 or more")
        if self.enabled and self.action == "stop_keep_best" and self.judge is None:
            raise ConfigError(
                "monitor.action: 'stop_keep_best' keeps the policy the judge scores best; set monitor.judge"
            )


def with_judge(cfg):
    """An RL config whose reward workers also run the judge, last and with weight 0 (its values are
    returned per function but add nothing to the total); `cfg` itself when there is no judge."""
    monitor = cfg.monitor
    if not (monitor.enabled and monitor.judge):
        return cfg
    functions = [*cfg.rewards.functions, replace(monitor.judge, weight=0.0)]
    return replace(cfg, rewards=replace(cfg.rewards, functions=functions))


def judge_name(cfg) -> str | None:
    """The judge's name among the reward workers' per-function values (they name the functions of
    their absolute references with `unique_names`); None without a judge."""
    judged = with_judge(cfg)
    if judged is cfg:
        return None
    return unique_names([absolute_reference(spec.name) for spec in judged.rewards.functions])[-1]


# ---------------------------------------------------------------------------------------------
# Trends and KL


def least_squares_slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """The slope of the least-squares line through the points and its standard error
    sqrt(SSR / (k - 2) / Σ(x - x̄)²); the error is inf with 2 points (no residual to measure)."""
    k = len(xs)
    mx, my = sum(xs) / max(k, 1), sum(ys) / max(k, 1)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a slope needs at least two distinct x values")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if k == 2:
        return slope, math.inf
    ssr = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    return slope, math.sqrt(ssr / (k - 2) / sxx)


def proxy_up_judge_down(steps: list[float], proxy: list[float], judge: list[float], t: float = 2.0):
    """(fires, proxy slope, judge slope): fires when the proxy reward's least-squares slope over
    `steps` is above 0 and the judge's below 0, each at least `t` standard errors from 0."""
    (p, p_err), (j, j_err) = least_squares_slope(steps, proxy), least_squares_slope(steps, judge)

    def clear(slope: float, err: float) -> bool:  # t = 0: the sign alone (0·inf would be NaN)
        return t == 0 or abs(slope) >= t * err

    return p > 0 and j < 0 and clear(p, p_err) and clear(j, j_err), p, j


def kl_negative(kl: float | None, tolerance: float) -> bool:
    """The KL warning: an estimate of KL(policy ‖ reference) below -tolerance."""
    return is_finite(kl) and kl < -tolerance


# ---------------------------------------------------------------------------------------------
# The monitor of a run


@dataclass
class StepSignals:
    """What the monitor reads from one RL step; sample i answers prompt i // group_size."""

    texts: list[str]  # every completion of the step
    prompts: list[str]  # one per prompt
    rewards: list[float]  # the proxy (the run's reward) per sample; NaN: none
    num_tokens: list[int]
    truncated: list[bool]
    group_size: int
    canaries: list[Canary] = field(default_factory=list)
    judge: list[float | None] = field(default_factory=list)  # per sample; empty: no judge
    kl: float | None = None  # the learner's KL estimate to the reference, when its loss has one


def print_above_bars(text: str) -> None:
    """Print to stdout above the tqdm bars on screen: they are cleared, the text is printed and
    flushed, then they are drawn again. A plain print starts on the bar's line, behind the bar,
    so the first line of an alarm was lost to it."""
    with tqdm.external_write_mode():
        print(text, flush=True)


class Monitor:
    """The monitor of one run; the module docstring lists the calls an RL loop makes.

    `save_policy(folder)` writes the learner's current policy as an HF folder (needed only by
    'stop_keep_best'); `start_step` is the step a resumed run continues from; `out` prints each
    alarm or warning block as one string."""

    def __init__(
        self,
        cfg: MonitorConfig,
        run_dir: str | Path,
        start_step: int = 0,
        save_policy: Callable[[str], None] | None = None,
        out: Callable[[str], None] = print_above_bars,
    ):
        self.cfg, self.run_dir, self.save_policy, self.out = cfg, Path(run_dir), save_policy, out
        self.stop = False
        self.printed: set[str] = set()  # each alarm or warning is printed the first time only
        # (step, proxy, judge) of every step so far, for the trend test: a resumed run reads back
        # what it had logged up to the step it resumes from.
        records = _last_per_step(read_metrics(run_dir)) if cfg.enabled and start_step else {}
        self.history = [(s, _num(r["monitor/proxy"]), _num(r.get("monitor/judge"))) for s, r in sorted(records.items())]
        self.history = [h for h in self.history if h[0] <= start_step]
        self.best_dir = self.run_dir / "best_policy"
        best = self.best_dir / "judge.json"
        # A fresh run in an old folder must not compete with that folder's earlier best.
        self.best_judge = json.loads(best.read_text())["judge"] if start_step and best.exists() else -math.inf

    def keep_if_best(self, step: int, judge: list[float | None]) -> None:
        """With 'stop_keep_best': when the judge's mean score of the policy's answers to the fixed
        held-out prompts beats every earlier one, save that policy (the learner's weights after
        `step` steps, which the engines that answered also held) to <run_dir>/best_policy with
        judge.json."""
        if not (self.cfg.enabled and self.cfg.action == "stop_keep_best" and judge):
            return
        score = mean_of_finite(judge)
        if not score > self.best_judge:  # NaN never wins
            return
        # Written beside and renamed, so a crash mid-save leaves the previous best whole.
        tmp = self.run_dir / ".best_policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.save_policy(str(tmp.resolve()))
        record = {"judge": score, "after_step": step, "held_out_prompts": len(judge)}
        (tmp / "judge.json").write_text(json.dumps(record) + "\n")
        shutil.rmtree(self.best_dir, ignore_errors=True)
        os.replace(tmp, self.best_dir)
        self.best_judge = score

    def observe(self, step: int, signals: StepSignals) -> dict:
        """The step's monitor/* metrics. Prints each alarm and warning the first time it fires (with
        examples) and sets `stop` when an alarm fires and the action stops."""
        if not self.cfg.enabled:
            return {}
        s = signals
        metrics = text_metrics(s.texts, s.num_tokens, s.truncated)
        proxy, judge = mean_of_finite(s.rewards), (mean_of_finite(s.judge) if s.judge else None)
        metrics["monitor/proxy"] = proxy
        if judge is not None:
            metrics["monitor/judge"] = judge
        if s.kl is not None:
            metrics["monitor/kl"] = s.kl
            metrics["monitor/sqrt_kl"] = math.sqrt(max(s.kl, 0.0))
        fired: dict[str, list[str]] = {}  # alarm or warning → its message lines
        if s.canaries:
            metrics.update(canary_metrics(s.canaries, s.rewards, s.group_size))
            outscored = canary_alarms(s.canaries, s.rewards, s.group_size)
            metrics["monitor/canary/outscored"] = len(outscored)
            if outscored:
                canary, median = outscored[0]
                fired["canary"] = [
                    f"the {canary.kind!r} canary scored {canary.reward:.4g}, above the median {median:.4g} of its "
                    f"prompt's samples ({len(outscored)} of {len(s.canaries)} canaries did)",
                    f"prompt: {_clip(s.prompts[canary.prompt])}",
                    f"canary: {_clip(canary.text)}",
                ]
        self.history.append((step, proxy, math.nan if judge is None else judge))
        trend = self._trend()
        if trend is not None:
            fires, metrics["monitor/proxy_slope"], metrics["monitor/judge_slope"] = trend
            if fires:
                fired["proxy_up_judge_down"] = [
                    f"over the last {self.cfg.window} steps the proxy reward rose ({trend[1]:+.3g} per step) while "
                    f"the judge fell ({trend[2]:+.3g} per step)"
                ]
        if kl_negative(s.kl, self.cfg.kl_tolerance):
            fired["kl_negative"] = [f"the KL estimate to the reference is {s.kl:.3g}; a true KL is never negative"]
        for name in ALARMS:
            metrics[f"monitor/alarm/{name}"] = int(name in fired)
        metrics["monitor/warning/kl_negative"] = int("kl_negative" in fired)
        if self.cfg.action == "stop_keep_best" and math.isfinite(self.best_judge):
            metrics["monitor/best_judge"] = self.best_judge
        for name, lines in fired.items():
            if name not in self.printed:
                self.printed.add(name)
                self._print(step, name, lines, s)
        if self.cfg.action != "warn" and not self.stop and any(name in fired for name in ALARMS):
            self.stop = True
            kept = f"; the best policy by judge score is in {self.best_dir}" if self.best_dir.exists() else ""
            self.out(f"monitor: stopping after step {step} (monitor.action: {self.cfg.action}){kept}")
        return metrics

    def finish(self) -> Path | None:
        """Write <run_dir>/monitor.png from the run's metrics.jsonl (so a resumed run's earlier
        steps are in it); returns its path, or None when disabled or nothing was logged."""
        if not (self.cfg.enabled and self.cfg.plot):
            return None
        path = self.run_dir / "monitor.png"
        return path if plot_monitor(read_metrics(self.run_dir), path) else None

    def _trend(self):
        recent = self.history[-self.cfg.window :]
        if len(recent) < self.cfg.window or not all(is_finite(p) and is_finite(j) for _, p, j in recent):
            return None
        steps, proxy, judge = (list(column) for column in zip(*recent))
        return proxy_up_judge_down(steps, proxy, judge, self.cfg.trend_t)

    def _print(self, step: int, name: str, lines: list[str], s: StepSignals) -> None:
        kind = "alarm" if name in ALARMS else "warning"
        text = [f"monitor, step {step}: {name} {kind}: {lines[0]}", *(f"  {line}" for line in lines[1:])]
        text.append("  the step's highest-rewarded samples:")
        ranked = sorted((i for i, r in enumerate(s.rewards) if is_finite(r)), key=lambda i: -s.rewards[i])[:3]
        for i in ranked:
            judged = f", judge {s.judge[i]:.4g}" if s.judge and is_finite(s.judge[i]) else ""
            text.append(f"    reward {s.rewards[i]:.4g}{judged}: {_clip(s.texts[i])}")
        text.append(f"  (from now on counted in monitor/{kind}/{name}, not printed)")
        self.out("\n".join(text))


def _clip(text: str, limit: int = 160) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _num(value) -> float:
    # metrics.jsonl stores NaN as null and inf as a string
    return math.nan if value is None else float(value)


def _last_per_step(records: list[dict]) -> dict[int, dict]:
    """Step → its monitor record; a step logged twice (a crash after it, then a resume) keeps the last."""
    return {r["step"]: r for r in records if "monitor/proxy" in r}


# ---------------------------------------------------------------------------------------------
# The plot


def plot_monitor(records: list[dict], path: str | Path) -> bool:
    """Proxy reward and judge score (top) and √KL (below, when the loss has a KL term) over steps,
    alarm steps marked, as a PNG at `path`. False, and nothing written, without monitor records."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(_last_per_step(records).items())
    if not rows:
        return False
    steps = [step for step, _ in rows]

    def series(key: str) -> list[float]:
        return [_num(r.get(key)) for _, r in rows]

    judge, sqrt_kl = series("monitor/judge"), series("monitor/sqrt_kl")
    has_judge, has_kl = any(map(math.isfinite, judge)), any(map(math.isfinite, sqrt_kl))
    # A figure of its own on the Agg canvas: no pyplot state, no display needed.
    fig = Figure(figsize=(8, 6 if has_kl else 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if has_kl else 1, 1, sharex=True, squeeze=False)[:, 0]
    lines = axes[0].plot(steps, series("monitor/proxy"), color="tab:blue", marker=".", label="proxy reward")
    axes[0].set_ylabel("proxy reward")
    if has_judge:  # its own scale: a second reward model's scores need not match the proxy's
        right = axes[0].twinx()
        lines += right.plot(steps, judge, color="tab:orange", marker=".", label="judge score")
        right.set_ylabel("judge score")
    alarms = [step for step, r in rows if any(r.get(f"monitor/alarm/{name}") for name in ALARMS)]
    for ax in axes:
        for step in alarms:
            ax.axvline(step, color="tab:red", alpha=0.35, linewidth=1)
    if has_kl:
        axes[1].plot(steps, sqrt_kl, color="tab:green", marker=".")
        axes[1].set_ylabel("√KL to the reference")
    axes[0].legend(lines, [line.get_label() for line in lines], loc="best")
    axes[0].set_title("reward-hacking monitor" + (" (red lines: steps with an alarm)" if alarms else ""))
    axes[-1].set_xlabel("step")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return True
