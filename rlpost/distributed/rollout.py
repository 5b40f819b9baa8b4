"""Rollout generation with vLLM, and loading new policy weights into the running engine.

`RolloutWorker` wraps one vLLM `LLM` that runs in the caller's process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``): on CPU it starts in seconds instead of half a minute, and
new weights are handed to the model as tensors with no serialisation. It runs as a Ray actor
(`rlpost.distributed.engine.start_rollout_workers`) so the engine owns its process: vLLM replaces
``torch.set_num_threads`` there and sets up its own ``torch.distributed`` world.

Weights arrive either as buckets that the learner's rank 0 put into Ray's object store, read by
their refs (`update_weights`), or by a broadcast from the learner's rank 0 over a private process
group (`init_weight_group` + `receive_weights`; the sender side is `rlpost.distributed.weight_sync`). Either
way the methods that touch the model run inside vLLM's worker through `RolloutWorkerExtension`.

vLLM is imported only inside `RolloutWorker`, because its environment variables must be set
before the first import.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from rlpost.distributed import weight_sync
from rlpost.distributed.engine import EXTENSION_QUALNAME, rollout_env
from rlpost.distributed.tools import PythonTool, ToolConfig
from rlpost.model import bf16_is_native
from rlpost.tokenizer import OUTPUT_END, OUTPUT_START, PYTHON_END, PYTHON_START

logger = logging.getLogger(__name__)


@dataclass
class Sample:
    """One generated continuation of one prompt."""

    token_ids: list[int]  # generated ids only (a stop token, when hit, is the last one)
    logprobs: list[float]  # sampling logprob of each generated token (0.0 for injected tool output)
    finish_reason: str  # "stop" (eos / stop token) or "length" (max_new_tokens reached)
    loss_mask: list[int] | None = None  # with tools: 1 = sampled by the policy, 0 = injected tool output
    tool_calls: int = 0  # Python tool calls made while generating this sample
    tool_s: float = 0.0  # this sample's share of the wall time spent running tool calls


class RolloutWorker:
    """A vLLM engine in this process that samples rollouts and takes weight updates.

    All arguments but `model_path` are keyword-only. `kv_cache_gib` sizes the KV cache (on CPU
    it is committed at start); 0 lets vLLM size it from `gpu_memory_utilization` (GPUs only).
    `gpu_memory_utilization`, `tensor_parallel_size` and `max_num_seqs` go to vLLM when given
    (`start_rollout_workers` gives them on GPUs only); None keeps vLLM's defaults. With
    `enforce_eager=False` vLLM compiles the model and, on GPU, captures CUDA graphs.
    `logprobs_mode="processed_logprobs"` reports the logprob under the distribution actually
    sampled from (after temperature / top-p); pass "raw_logprobs" for the model's untempered
    log-softmax. `engine_kwargs` go to `vllm.LLM` unchanged (over the GPU arguments, if they overlap).
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        max_model_len: int = 1024,
        seed: int = 0,
        enforce_eager: bool = False,
        kv_cache_gib: float = 1.0,
        gpu_memory_utilization: float | None = None,
        tensor_parallel_size: int | None = None,
        max_num_seqs: int | None = None,
        logprobs_mode: str = "processed_logprobs",
        engine_kwargs: dict | None = None,
    ):
        # Fill in whatever the launcher did not set.
        for key, value in rollout_env(kv_cache_gib).items():
            os.environ.setdefault(key, value)
        Path(os.environ["VLLM_RPC_BASE_PATH"]).mkdir(parents=True, exist_ok=True)
        # The legacy variable is whole GiB and would override the exact size passed below.
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)

        max_model_len = _fit_max_model_len(model_path, max_model_len)
        if dtype == "bfloat16" and not bf16_is_native():
            logger.warning("vllm.dtype: this device has no bf16 arithmetic; the engine runs in float32")
            dtype = "float32"
        from vllm import LLM

        given = dict(
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_num_seqs=max_num_seqs,
        )
        extra = {key: value for key, value in given.items() if value is not None}
        if kv_cache_gib > 0:
            extra["kv_cache_memory_bytes"] = int(kv_cache_gib * 1024**3)
        if (tensor_parallel_size or 1) > 1:
            # In a placement group vLLM's default (Ray) executor puts its shards on the group's
            # GPU bundles, which belong to the learner and the other engines; worker processes
            # of this actor use the GPUs Ray gave it.
            extra["distributed_executor_backend"] = "mp"
        extra.update(engine_kwargs or {})

        t0 = time.perf_counter()
        self.llm = LLM(
            model=str(model_path),
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=enforce_eager,
            logprobs_mode=logprobs_mode,
            worker_extension_cls=EXTENSION_QUALNAME,
            disable_log_stats=True,
            # A prompt prefilled in chunks makes vLLM rewind its sampling generator, which a
            # seeded request on CPU cannot do ("CPU Generator does not use offset"): prefill
            # whole prompts, many per step.
            enable_chunked_prefill=False,
            max_num_batched_tokens=max(max_model_len, 8192),
            **extra,
        )
        self.start_s = time.perf_counter() - t0
        self.max_model_len = max_model_len
        self._tool: PythonTool | None = None
        logger.info("vLLM engine for %s ready in %.1f s (eager=%s)", model_path, self.start_s, enforce_eager)

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        *,
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop_token_ids: list[int] | None = None,
        seed: int | None = None,
        ignore_eos: bool = False,
        tools: ToolConfig | None = None,
    ) -> list[list[Sample]]:
        """Sample `n` continuations of every prompt, all prompts in one engine call.

        Prompts are token ids (text would let the tokenizer add a BOS). Generation stops at the
        model's eos, at `stop_token_ids`, or after `max_new_tokens`; `ignore_eos=True` (for
        benchmarks) only stops at the length. temperature 0 is greedy. With `seed`, prompt i
        uses seed + i, so a step is reproducible and prompts do not share random streams.
        With an enabled `tools` config, a sample that writes <|python_start|>code<|python_end|>
        pauses there; the code runs in the sandbox, its output is appended between
        <|output_start|> and <|output_end|> (logprob 0, loss mask 0) and the sample resumes.
        `max_new_tokens` bounds the whole completion, injected tokens included.
        Returns one list of `n` samples per prompt, in prompt order.
        """
        from vllm import SamplingParams

        if n < 1 or max_new_tokens < 1:
            raise ValueError(f"need n >= 1 and max_new_tokens >= 1, got {n=}, {max_new_tokens=}")
        longest = max((len(p) for p in prompt_token_ids), default=0)
        if longest + max_new_tokens > self.max_model_len:
            raise ValueError(
                f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds max_model_len={self.max_model_len}"
            )

        use_tools = tools is not None and tools.enabled and tools.max_calls > 0
        tool_ids = self._tool_token_ids() if use_tools else {}

        def params(seed_i: int | None, count: int, max_tokens: int, stop_at_tool: bool) -> SamplingParams:
            return SamplingParams(
                n=count,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                stop_token_ids=list(stop_token_ids or []) + ([tool_ids[PYTHON_END]] if stop_at_tool else []),
                ignore_eos=ignore_eos,
                seed=seed_i,
                # 0 = only the sampled token's logprob (not the top-k), which is what RL needs.
                logprobs=0,
                detokenize=False,
            )

        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        if seed is not None:
            sampling = [params(seed + i, n, max_new_tokens, use_tools) for i in range(len(prompts))]
        else:
            sampling = params(None, n, max_new_tokens, use_tools)
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        groups = [[_to_sample(c) for c in sorted(req.outputs, key=lambda c: c.index)] for req in outputs]
        if use_tools:
            self._tool_rounds(prompt_token_ids, groups, tools, tool_ids, params, max_new_tokens, seed)
        return groups

    def _tool_rounds(
        self, prompt_token_ids, groups, tools: ToolConfig, tool_ids: dict, params, max_new_tokens: int, seed: int | None
    ) -> None:
        """Serve the samples' tool calls in place: run every pending call in one sandbox batch,
        then resume all those samples in one engine call; repeat until none waits on the tool."""
        if self._tool is None or self._tool.cfg != tools:
            if self._tool is not None:
                self._tool.close()
            self._tool = PythonTool(tools)
        tokenizer = self.llm.get_tokenizer()
        flat = [(prompt_token_ids[i], s) for i, g in enumerate(groups) for s in g]
        for _, s in flat:
            s.loss_mask = [1] * len(s.token_ids)

        def wants_tool(s: Sample) -> bool:
            return (
                s.finish_reason == "stop"
                and s.token_ids[-1] == tool_ids[PYTHON_END]
                and s.tool_calls < tools.max_calls
                and len(s.token_ids) < max_new_tokens
            )

        pending = [(p, s) for p, s in flat if wants_tool(s)]
        round_ = 0
        while pending:
            round_ += 1
            codes = [
                tokenizer.decode(_tool_code(s.token_ids, tool_ids[PYTHON_START]), skip_special_tokens=True)
                for _, s in pending
            ]
            t0 = time.perf_counter()
            results = self._tool.run(codes)
            share = (time.perf_counter() - t0) / len(pending)
            resume = []
            for (p, s), text in zip(pending, results):
                injected = tokenizer.encode(OUTPUT_START + text + OUTPUT_END, add_special_tokens=False)
                injected = injected[: max_new_tokens - len(s.token_ids)]
                s.token_ids += injected
                s.logprobs += [0.0] * len(injected)
                s.loss_mask += [0] * len(injected)
                s.tool_calls += 1
                s.tool_s += share
                if len(s.token_ids) < max_new_tokens:
                    resume.append((p, s))
                else:
                    s.finish_reason = "length"
            if not resume:
                break
            sampling = [
                params(
                    None if seed is None else seed + 7919 * round_ + i,
                    1,
                    max_new_tokens - len(s.token_ids),
                    s.tool_calls < tools.max_calls,
                )
                for i, (_, s) in enumerate(resume)
            ]
            outputs = self.llm.generate(
                [{"prompt_token_ids": list(p) + s.token_ids} for p, s in resume], sampling, use_tqdm=False
            )
            for (_, s), req in zip(resume, outputs):
                more = _to_sample(req.outputs[0])
                s.token_ids += more.token_ids
                s.logprobs += more.logprobs
                s.loss_mask += [1] * len(more.token_ids)
                s.finish_reason = more.finish_reason
            pending = [(p, s) for p, s in resume if wants_tool(s)]

    def _tool_token_ids(self) -> dict[str, int]:
        tokenizer = self.llm.get_tokenizer()
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (PYTHON_START, PYTHON_END, OUTPUT_START, OUTPUT_END)}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"the Python tool needs the special tokens {missing} in the model's tokenizer")
        return ids

    # ------------------------------------------------------------------ weight sync

    def update_weights(self, weights: Mapping[str, torch.Tensor] | list) -> float:
        """Load a full set of HF-named weights and return seconds taken: a {name: tensor} dict (the
        model's state_dict), or the object refs of the buckets the learner put into the object
        store (`weight_sync.put_buckets`, bucket by bucket in the engine's dtype).

        Every weight must be present: a layer given only some of its tensors would be rebuilt
        from uninitialised memory. Dtypes are converted to the engine's dtype.
        """
        t0 = time.perf_counter()
        if not isinstance(weights, Mapping):
            # Read-only views of the object store's shared memory, in bucket order: holding them
            # all costs the engine no memory of its own, and one reload then sees every layer
            # whole, whichever bucket its tensors came in. A list (not a lazy iterator) also
            # crosses to vLLM's worker processes when an engine has more than one.
            weights = list(weight_sync.fetch_buckets(weights))
        self.llm.collective_rpc("rlpost_load_weights", args=(weights,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        took = time.perf_counter() - t0
        logger.info("weights updated through the object store in %.3f s", took)
        return took

    def init_weight_group(
        self, master_addr: str, master_port: int, rank: int, world_size: int, backend: str = "gloo"
    ) -> None:
        """Join the learner's weight-broadcast group as `rank` (>= 1); rank 0 must join too."""
        if rank == 0:
            raise ValueError("rank 0 is the learner; rollout workers take ranks 1..world_size-1")
        self.llm.collective_rpc("rlpost_init_weight_group", args=(master_addr, master_port, rank, world_size, backend))

    def receive_weights(self, specs: list[tuple[str, tuple[int, ...], str]]) -> float:
        """Receive rank 0's broadcast of `specs` (see `weight_sync.weight_specs`) and load it.

        Returns the seconds taken, including the wait for the sender.
        """
        t0 = time.perf_counter()
        recv_s, load_s = self.llm.collective_rpc("rlpost_receive_weights", args=(specs,))[0]
        self.llm.reset_prefix_cache()
        took = time.perf_counter() - t0
        logger.info("weights received by broadcast in %.3f s (receive %.3f s, load %.3f s)", took, recv_s, load_s)
        return took

    def close_weight_group(self) -> None:
        self.llm.collective_rpc("rlpost_close_weight_group")

    def ready(self) -> float:
        """Seconds the engine took to start (also a cheap liveness call for Ray)."""
        return self.start_s


def _fit_max_model_len(model_path: str, max_model_len: int) -> int:
    """Clamp to the model's position limit: vLLM refuses a longer max_model_len outright."""
    config_file = Path(model_path) / "config.json"
    if not config_file.is_file():
        return max_model_len
    limit = json.loads(config_file.read_text()).get("max_position_embeddings")
    if isinstance(limit, int) and 0 < limit < max_model_len:
        logger.warning(
            "max_model_len=%d exceeds the model's max_position_embeddings=%d; using %d", max_model_len, limit, limit
        )
        return limit
    return max_model_len


def _tool_code(token_ids: list[int], python_start: int) -> list[int]:
    """The ids between the last <|python_start|> and the closing <|python_end|> (the last id)."""
    body = token_ids[:-1]
    starts = [i for i, t in enumerate(body) if t == python_start]
    return body[starts[-1] + 1 :] if starts else []


def _to_sample(completion) -> Sample:
    ids = list(completion.token_ids)
    per_token = completion.logprobs
    if per_token is None or len(per_token) != len(ids):
        raise RuntimeError("vLLM returned no per-token logprobs for a completion")
    # Each position maps token id -> Logprob and always contains the sampled token.
    logprobs = [float(per_token[i][tok].logprob) for i, tok in enumerate(ids)]
    reason = completion.finish_reason
    if reason not in ("stop", "length"):
        raise RuntimeError(f"generation ended with finish_reason={reason!r}")
    return Sample(token_ids=ids, logprobs=logprobs, finish_reason=reason)
