"""Rollout throughput: RolloutWorker (in-process vLLM) vs transformers `generate`, same model,
same prompts, bf16 on both sides, in one run.

    .venv/bin/python bench/rollout_throughput.py

Options: --threads 1 (OMP threads for every contestant), --model PATH (a HF Llama folder; default: a random 256-hidden, 4-layer, vocab-4096 tied
Llama, ~4.2M params, built in a temp dir), --prompts 64 --n 8 --new-tokens 128,
--modes eager,compile, --repeats 2, --out bench/results/rollout_throughput.json.

Both sides sample at temperature 1 with no top-k/top-p, return per-token logprobs, and ignore
EOS so every sequence is exactly --new-tokens long (same token count on both sides). Each
contestant runs in a fresh spawned process: in-process vLLM patches torch's threading and
creates a torch.distributed world, which must not leak into the others. Besides throughput,
the vLLM runs time weight syncs of this model (object-store style tensors in process, and a
gloo broadcast from a second thread standing in for the learner).

On a shared 2-core box the absolute numbers move a lot with background load (recorded as
load averages); compare contestants only within one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_random_model(out_dir: str, vocab: int = 4096) -> str:
    """A random tied Llama like the project's tiny presets, with a small byte-level tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rlpost.model import random_llama

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["a tiny corpus for a tiny benchmark tokenizer"] * 8, trainer=trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    ).save_pretrained(out_dir)
    model = random_llama(vocab, 256, layers=4, heads=4, intermediate_size=672, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=2)  # fmt: skip
    model.save_pretrained(out_dir)
    return out_dir


def make_prompts(vocab: int, count: int, seed: int = 0) -> list[list[int]]:
    """Random prompt ids of 16-48 tokens (avoiding the first few special ids)."""
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(16, 48))] for _ in range(count)]


# ---------------------------------------------------------------------- contestants (children)


def run_hf(args, prompts, queue) -> None:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    # Left padding: generate appends after the last column.
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    cfg = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,  # ignore EOS
        num_return_sequences=args.n,
        pad_token_id=pad,
        eos_token_id=model.config.eos_token_id,
        return_dict_in_generate=True,
        output_scores=True,
    )

    def step(p_ids, p_mask, c):
        with torch.inference_mode():
            out = model.generate(p_ids, attention_mask=p_mask, generation_config=c)
            # Per-token logprobs, as the rollout worker returns them.
            logprobs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        return int(logprobs.numel())

    warm = GenerationConfig(**{**cfg.to_dict(), "max_new_tokens": 8, "min_new_tokens": 8})
    step(ids[:4], mask[:4], warm)
    times, tokens = [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        tokens = step(ids, mask, cfg)
        times.append(time.perf_counter() - t0)
    queue.put({"tokens": tokens, "times_s": times, "torch_threads": torch.get_num_threads()})


def run_vllm(args, prompts, mode, queue) -> None:
    import torch

    from rlpost.distributed.rollout import RolloutWorker
    from rlpost.distributed.weight_sync import broadcast_weights, create_weight_group, free_port, weight_specs

    t0 = time.perf_counter()
    worker = RolloutWorker(
        args.model,
        dtype="bfloat16",
        max_model_len=1024,
        seed=0,
        enforce_eager=(mode == "eager"),
        kv_cache_gib=args.kv_cache_gib,
        engine_kwargs={"max_num_seqs": args.max_num_seqs} if args.max_num_seqs else None,
    )
    start_s = time.perf_counter() - t0

    def step(p, new_tokens):
        out = worker.generate(p, n=args.n, max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True)
        return sum(len(s.token_ids) for group in out for s in group)

    step(prompts[:4], 8)  # warm-up
    times, tokens = [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        tokens = step(prompts, args.new_tokens)
        times.append(time.perf_counter() - t0)

    # Weight sync of this model: the learner would send bf16 tensors.
    from transformers import LlamaForCausalLM

    state = {
        k: v.to(torch.bfloat16)
        for k, v in LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32).state_dict().items()
    }
    object_store = [worker.update_weights(state) for _ in range(3)]

    port = free_port()
    box = {}

    def learner():  # rank 0 of the broadcast group, in a thread of this process
        box["group"] = create_weight_group("127.0.0.1", port, 0, 2)
        box["ready"].set()
        for _ in range(3):
            box["go"].wait()
            box["go"].clear()
            broadcast_weights(box["group"], state)

    box["ready"], box["go"] = threading.Event(), threading.Event()
    thread = threading.Thread(target=learner, daemon=True)
    thread.start()
    worker.init_weight_group("127.0.0.1", port, 1, 2)
    box["ready"].wait()
    specs = weight_specs(state)
    broadcast = []
    for _ in range(3):
        box["go"].set()
        broadcast.append(worker.receive_weights(specs))
    thread.join()
    queue.put(
        {
            "tokens": tokens,
            "times_s": times,
            "start_s": start_s,
            "torch_threads": torch.get_num_threads(),
            "sync_object_store_ms": [round(s * 1000, 1) for s in object_store],
            "sync_gloo_broadcast_ms": [round(s * 1000, 1) for s in broadcast],
        }
    )


def in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()  # before join: a full queue pipe would block the child's exit
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{target.__name__} exited with {proc.exitcode}")
    return result


def measure(args, prompts: list, metrics: dict) -> None:
    """transformers' generate, then each vLLM mode, each in its own process; the tokens per
    second of each and its ratio to transformers go into `metrics`."""
    print("transformers generate ...", flush=True)
    hf = in_child(run_hf, args, prompts)
    hf_tok_s = hf["tokens"] / statistics.median(hf["times_s"])
    metrics.update(
        hf_tokens=hf["tokens"],
        hf_times_s=[round(t, 2) for t in hf["times_s"]],
        hf_torch_threads=hf["torch_threads"],
        hf_tok_s=round(hf_tok_s, 1),
    )
    print(f"  {hf_tok_s:.0f} tok/s", flush=True)

    for mode in [m for m in args.modes.split(",") if m]:
        print(f"vLLM {mode} ...", flush=True)
        r = in_child(run_vllm, args, prompts, mode)
        if r["tokens"] != hf["tokens"]:
            raise RuntimeError(f"token counts differ: vLLM {r['tokens']} vs HF {hf['tokens']}")
        tok_s = r["tokens"] / statistics.median(r["times_s"])
        metrics.update(
            {
                f"vllm_{mode}_tok_s": round(tok_s, 1),
                f"vllm_{mode}_ratio_vs_hf": round(tok_s / hf_tok_s, 2),
                f"vllm_{mode}_times_s": [round(t, 2) for t in r["times_s"]],
                f"vllm_{mode}_start_s": round(r["start_s"], 1),
                f"vllm_{mode}_torch_threads": r["torch_threads"],
                f"vllm_{mode}_sync_object_store_ms": r["sync_object_store_ms"],
                f"vllm_{mode}_sync_gloo_broadcast_ms": r["sync_gloo_broadcast_ms"],
            }
        )
        print(
            f"  {tok_s:.0f} tok/s ({tok_s / hf_tok_s:.2f}x), start {r['start_s']:.1f} s, "
            f"sync {r['sync_object_store_ms']} / gloo {r['sync_gloo_broadcast_ms']} ms",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF Llama folder (default: random tiny)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default="eager,compile", help="vLLM modes: eager,compile")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0)
    parser.add_argument(
        "--max-num-seqs", type=int, default=0, help="vLLM max_num_seqs (0 = vLLM's default, 256 on CPU)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="OMP/torch threads for every contestant (0 = library defaults)"
    )
    parser.add_argument("--out", default=str(REPO / "bench/results/rollout_throughput.json"))
    args = parser.parse_args()

    wall0 = time.perf_counter()
    from rlpost.distributed.engine import rollout_env
    from rlpost.metrics import write_bench_result

    for key, value in rollout_env(args.kv_cache_gib).items():
        os.environ.setdefault(key, value)  # inherited by the spawned contestants
    if args.threads:
        # Same thread count on both sides. On a shared 2-core box a 2-thread OpenMP team
        # stalls at every barrier whenever a sibling process takes one core.
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    tmp = None
    if args.model is None:
        tmp = tempfile.TemporaryDirectory(prefix="rlpost-bench-")
        args.model = build_random_model(tmp.name)
    config = json.loads((Path(args.model) / "config.json").read_text())
    prompts = make_prompts(config["vocab_size"], args.prompts)
    load_before = os.getloadavg()

    metrics: dict = {
        "model": args.model if tmp is None else "random tiny Llama (built by the script)",
        "hidden_size": config["hidden_size"],
        "layers": config["num_hidden_layers"],
        "vocab_size": config["vocab_size"],
        "dtype": "bfloat16",
        "prompts": args.prompts,
        "n": args.n,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "max_num_seqs": args.max_num_seqs or "vllm default",
    }
    measure(args, prompts, metrics)
    metrics["load_avg_before"] = [round(x, 2) for x in load_before]
    metrics["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    path = write_bench_result(
        out.stem,
        metrics,
        time.perf_counter() - wall0,
        command=" ".join([".venv/bin/python bench/rollout_throughput.py", *sys.argv[1:]]),
        results_dir=out.parent,
    )
    print(path.read_text(), end="")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
