"""The Python tool: REPL-style execution in the sandbox, tool-using rollouts, and GRPO with it."""

from __future__ import annotations

import json
import re

import pytest
from helpers import metrics

from rlpost.distributed.rollout import _tool_code
from rlpost.distributed.tools import PythonTool, ToolConfig, output_text, repl_program


@pytest.fixture(scope="module")
def tool():
    t = PythonTool(ToolConfig(timeout_s=1.0, max_output_chars=40))
    yield t
    t.close()


def test_repl_program_prints_a_trailing_expression():
    assert repl_program("x = 1") == "x = 1"  # no trailing expression: unchanged
    assert "print(repr(__value))" in repl_program("x = 2\nx * 3")
    assert repl_program("def f(:") == "def f(:"  # left alone; running it reports the SyntaxError


def test_tool_outputs_as_the_model_sees_them(tool):
    outputs = tool.run(
        [
            "'strawberry'.count('r')",
            "x = 'ab'\nx.upper()",
            "print('hi')",
            "1 / 0",
            "while True: pass",
            "def f(:",
            "print('y' * 100)",
            "None",
        ]
    )
    assert outputs[:4] == ["3", "'AB'", "hi", "ZeroDivisionError: division by zero"]
    assert outputs[4] == "TimeoutError"
    assert outputs[5].startswith("SyntaxError")
    assert outputs[6] == "y" * 40 + "…"  # cut at max_output_chars
    assert outputs[7] == ""


def test_output_text_keeps_stdout_before_an_error():
    from sandbox.result import Result

    r = Result("partial\n", "Traceback ...\nValueError: bad", 1, False, "error", 0.01, "bwrap")
    assert output_text(r, 100) == "partial\nValueError: bad"


@pytest.fixture(scope="module")
def tool_worker(tool_sft_run, ray_cluster):
    import ray

    from rlpost.distributed.engine import VLLMConfig, start_rollout_workers

    worker = start_rollout_workers(str(tool_sft_run / "model"), VLLMConfig(kv_cache_gib=0.25, num_cpus=0))[
        0
    ]  # leaves the CPUs to the GRPO test
    yield worker
    ray.kill(worker)


def test_rollout_runs_the_tool_and_masks_its_output(tool_worker, tool_sft_run):
    import ray

    from rlpost.chat import prompt_ids
    from rlpost.tasks import make_problems
    from rlpost.tokenizer import OUTPUT_END, OUTPUT_START, PYTHON_START, load_tokenizer, stop_token_ids

    tok = load_tokenizer(tool_sft_run / "model")
    problems = make_problems("spelling_bee", "eval", 8)
    cfg = ToolConfig(enabled=True, max_calls=1)
    groups = ray.get(
        tool_worker.generate.remote(
            [prompt_ids(tok, p.prompt) for p in problems],
            n=2,
            max_new_tokens=48,
            temperature=1.0,
            stop_token_ids=stop_token_ids(tok),
            tools=cfg,
        )
    )
    samples = [s for g in groups for s in g]
    called = [s for s in samples if s.tool_calls]
    assert called, "the tool-trained model never called the tool"
    out_start, out_end, code_open = (tok.convert_tokens_to_ids(t) for t in (OUTPUT_START, OUTPUT_END, PYTHON_START))
    tool = PythonTool(cfg)
    try:
        for s in called:
            assert s.tool_calls == 1 and len(s.loss_mask) == len(s.token_ids) == len(s.logprobs)
            begin = s.token_ids.index(out_start)
            end = s.token_ids.index(out_end) if out_end in s.token_ids else len(s.token_ids) - 1
            # Exactly the injected span is masked out, with logprob 0; everything else was sampled.
            assert s.loss_mask == [1] * begin + [0] * (end + 1 - begin) + [1] * (len(s.token_ids) - end - 1)
            assert all(lp == 0.0 for lp in s.logprobs[begin : end + 1])
            # The injected text is what the sandbox prints for the code the model wrote.
            # The code is what follows the last <|python_start|> (a sampled sample may write two).
            code = tok.decode(_tool_code(s.token_ids[:begin], code_open), skip_special_tokens=True)
            if out_end in s.token_ids:
                # Object addresses in a printed repr (`'abc'.count` unevaluated) differ per process.
                injected, rerun = tok.decode(s.token_ids[begin + 1 : end]), tool.run([code])[0]
                assert re.sub(r"0x[0-9a-f]+", "0x", injected) == re.sub(r"0x[0-9a-f]+", "0x", rerun)
    finally:
        tool.close()
    # Without tools the same engine never pauses: no calls, no mask.
    plain = ray.get(
        tool_worker.generate.remote(
            [prompt_ids(tok, problems[0].prompt)], n=2, max_new_tokens=48, stop_token_ids=stop_token_ids(tok)
        )
    )
    assert all(s.tool_calls == 0 and s.loss_mask is None for s in plain[0])


def test_sft_reports_accuracy_with_and_without_the_tool(tool_sft_run):
    report = json.loads((tool_sft_run / "eval.json").read_text())
    assert set(report["greedy_with_tool"]) >= {"spelling_bee", "transcripts"}
    assert report["greedy_with_tool"]["spelling_bee"]["tool_calls"] > 0
    assert report["greedy"]["spelling_bee"]["tool_calls"] == 0


@pytest.mark.slow
def test_grpo_with_the_tool(tool_sft_run, ray_cluster, tmp_path):
    from rlpost.config import load_config, load_recipe

    grpo = load_recipe("grpo")
    cfg = load_config(
        grpo.GRPOConfig,
        [
            "--config",
            "recipes/configs/grpo_tiny.yaml",
            "--model_path",
            str(tool_sft_run / "model"),
            "--run_dir",
            str(tmp_path),
            "--data.tasks",
            "{spelling_bee: 1000}",
            "--tools.enabled",
            "true",
            "--rewards.functions",
            "[{name: letter_count}, {name: length, weight: 0.5}]",
            "--train.steps",
            "2",
            "--train.eval_every",
            "2",
            "--train.checkpoint_every",
            "2",
            "--eval.problems_per_task",
            "8",
            "--rollout.prompts_per_step",
            "4",
            "--rollout.n",
            "4",
            "--rollout.max_new_tokens",
            "48",
            "--vllm.kv_cache_gib",
            "0.25",
            "--logging.wandb_mode",
            "disabled",
        ],
    )
    assert grpo.main(cfg)["steps"] == 2
    steps = [m for m in metrics(tmp_path) if m["step"] in (1, 2) and "loss" in m]
    assert len(steps) == 2
    for m in steps:
        assert m["tool/calls_per_sample"] > 0 and m["time/tool"] > 0
        assert m["reward/letter_count/failures"] == 0  # the verifier scored every sample
        assert m["train_tokens"] > 0
