"""The comparison recipe (recipes/compare.py): its measurements on crafted records, and a real
run of two tiny models through vLLM with the report."""

from __future__ import annotations

import json

import pytest

from rlpost.config import load_recipe

compare = load_recipe("compare")


def _records(greedy: list[bool], sampled: list[list[bool]], task="arithmetic", budget=None) -> list[dict]:
    """Records of a model: one greedy answer and n sampled ones per problem, answers "7" when
    right and "8" when wrong; `budget` maps a budget to each problem's forced correctness."""
    out = []
    for i, ok in enumerate(greedy):
        out.append({"task": task, "problem": i, "sample": "greedy", "completion": "The answer is 7." if ok else "8",
                    "tokens": 10, "truncated": False, "tool_calls": 0, "correct": ok})  # fmt: skip
        for j, s in enumerate(sampled[i]):
            text = "Wait, let me check. The answer is 7." if s else "Hmm. The answer is 8."
            out.append({"task": task, "problem": i, "sample": j, "completion": text, "tokens": 20 if s else 40,
                        "truncated": not s, "tool_calls": 1, "correct": s})  # fmt: skip
    for b, forced in (budget or {}).items():
        out += [
            {"task": task, "problem": i, "sample": f"budget:{b}", "budget": b, "correct": ok}
            for i, ok in enumerate(forced)
        ]
    return out


def _cfg(samples=2, budgets=(16,)):
    from rlpost.config import load_config

    return load_config(compare.CompareConfig, ["--models", "{a: x}", "--sampling.samples", str(samples),
                                               "--sampling.budgets", str(list(budgets))])  # fmt: skip


def test_summary_by_hand():
    # 3 problems × 2 samples: correct counts 2, 1, 0
    records = _records(
        [True, False, False], [[True, True], [False, True], [False, False]], budget={16: [True, False, False]}
    )
    s = compare.summarize(records, _cfg())
    assert s["problems"] == 3
    assert s["greedy_accuracy"] == pytest.approx(1 / 3)
    assert s["pass@1"]["mean"] == pytest.approx(0.5)
    assert s["pass@k"] == pytest.approx({"1": 0.5, "2": 2 / 3})
    # maj@k is the expected majority vote over k-subsets of the samples. maj@1: the share of right
    # samples, (1 + 1/2 + 0) / 3. maj@2: problem 0 votes 7, 7 → right; problem 1 votes 8, 7 (a tie,
    # each answer winning half) → 1/2; problem 2 → wrong
    assert s["maj@k"] == pytest.approx({"1": 1 / 2, "2": 1 / 2})
    assert s["lengths"] == {"correct": [20, 20, 20], "wrong": [40, 40, 40]}
    assert s["mean_tokens"] == {"correct": 20, "wrong": 40}
    assert s["truncated_frac"] == 0.5 and s["tool_calls_per_answer"] == 1
    # "wait" + "let me check" in each right answer, "hmm" in each wrong one: 9 phrases in 180 tokens
    assert s["reflection_per_1k_tokens"] == pytest.approx(1000 * 9 / 180)
    assert s["budget_accuracy"] == {"16": pytest.approx(1 / 3)}
    assert "thinking_chars_mean" not in s


def test_pair_table_and_tests():
    a = _records([True, True, False, True], [[True, True], [True, False], [False, False], [True, True]])
    b = _records([True, False, False, False], [[True, False], [False, False], [False, False], [False, False]])
    pair = compare.compare_pair(a, b, n=2)
    assert (pair["both"], pair["only_a"], pair["only_b"], pair["neither"]) == (1, 2, 0, 1)
    assert pair["mcnemar_p"] == pytest.approx(0.5)  # 2 discordant pairs, both for A: 2 · (1/2)^2
    assert pair["pass1_diff"]["diff"] == pytest.approx((0.5 + 0.5 + 0 + 1) / 4)


def test_thinking_split_and_reflections():
    assert compare.thinking_split("<think>3 + 4 = 7, wait</think> The answer is 7.") == (
        "3 + 4 = 7, wait",
        " The answer is 7.",
    )
    assert compare.thinking_split("<think>still thinking") == ("still thinking", "")
    assert compare.thinking_split("The answer is 7.") is None
    assert compare.reflections("Wait. WAIT, let me check; waiting is not a phrase.", ["wait", "let me check"]) == 3


def test_user_problem_files_name_their_bad_line(tmp_path):
    from rlpost.config import ConfigError

    good, bad = tmp_path / "mine.jsonl", tmp_path / "bad.jsonl"
    good.write_text('{"prompt": "What is 3 + 4?", "answer": "7"}\n')
    bad.write_text('{"prompt": "x", "answer": "1"}\n{"prompt": "y"}\n')
    problems = compare.load_problems(compare.CompareData(tasks={}, files=[str(good)]))
    assert [(p.task, p.answer) for p in problems["mine"]] == [("mine", "7")]
    with pytest.raises(ConfigError, match=rf"{bad}:2: expected fields"):
        compare.load_problems(compare.CompareData(tasks={}, files=[str(bad)]))


@pytest.mark.slow
def test_two_tiny_models_compared_through_vllm_with_cache(
    sft_run, pretrained, ray_cluster, tmp_path, capsys, monkeypatch
):
    from rlpost.config import load_config

    args = ["--config", "recipes/configs/compare_tiny.yaml", "--run_dir", str(tmp_path),
            "--models", f"{{sft: '{sft_run / 'model'}', base: '{pretrained / 'model'}'}}",
            "--data.tasks", "{arithmetic: 12, spelling_bee: 6}", "--sampling.samples", "4",
            "--sampling.max_new_tokens", "48", "--sampling.budgets", "[8, 16, 64]"]  # fmt: skip
    results = compare.main(load_config(compare.CompareConfig, args))
    assert results["models"] == ["sft", "base"] and results["tasks"] == ["arithmetic", "spelling_bee"]
    arithmetic = results["per_model"]["sft"]["arithmetic"]
    assert arithmetic["problems"] == 12 and set(arithmetic["pass@k"]) == {"1", "2", "4"}
    assert arithmetic["pass@k"]["1"] <= arithmetic["pass@k"]["4"]
    # A budget above max_new_tokens cuts no answer: every answer keeps its own result.
    assert set(arithmetic["budget_accuracy"]) == {"8", "16", "64"}
    assert arithmetic["budget_accuracy"]["64"] == arithmetic["greedy_accuracy"]
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 * (12 + 6) * (1 + 4)
    assert {r["model"] for r in records} == {"sft", "base"}
    assert len(results["pairs"]) == 2 and results["pairs"][0]["a"] == "sft"
    for name in ("report.md", "report.html", "pass_at_k.png"):
        assert (tmp_path / name).exists()
    # A second run with one more model answers only for the new one.
    capsys.readouterr()
    args[5] = f"{{sft: '{sft_run / 'model'}', base: '{pretrained / 'model'}', again: '{sft_run / 'model'}'}}"
    monkeypatch.setattr(compare, "CHUNK_PROMPTS", 5)  # 12 problems: three engine calls, a bar step each
    again = compare.main(load_config(compare.CompareConfig, args))
    out, err = capsys.readouterr()
    assert "sft: every task cached" in out and "base: every task cached" in out and "again: answering" in out
    assert "arithmetic, 4 samples: 100%" in err and "12/12" in err
    # The same weights give the same greedy answers, whether asked in one call or in chunks.
    greedy = {
        (r["model"], r["task"], r["problem"]): r["completion"]
        for r in map(json.loads, (tmp_path / "records.jsonl").read_text().splitlines())
        if r["sample"] == "greedy"
    }
    assert all(greedy["again", task, i] == greedy["sft", task, i] for _, task, i in greedy)
    assert again["per_model"]["again"]["arithmetic"]["greedy_accuracy"] == arithmetic["greedy_accuracy"]
