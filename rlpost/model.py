"""Llama-architecture model presets and Hugging Face folder I/O.

A model is a plain HF folder (config.json + model.safetensors + tokenizer files), so
transformers, vLLM and DeepSpeed all load the same files. Presets are sized for a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

# Parameter counts are for the tiny tokenizer's vocabulary (1024 for tiny, 4096 for small).
PRESETS: dict[str, dict] = {
    # ~3.3M parameters: learns the synthetic tasks in minutes on 2 CPU cores.
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=672,
        vocab_size=1024,
        max_position_embeddings=1024,
    ),
    # ~21M parameters.
    "small": dict(
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        intermediate_size=1376,
        vocab_size=4096,
        max_position_embeddings=2048,
    ),
}


def new_model(preset: str, tokenizer, **overrides):
    """A randomly initialised LlamaForCausalLM for `preset`, with the tokenizer's special ids."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid presets: {sorted(PRESETS)}")
    shape = {**PRESETS[preset], **overrides, "vocab_size": len(tokenizer)}
    config = LlamaConfig(
        **shape,
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def random_llama(vocab_size: int, hidden_size: int = 16, layers: int = 1, heads: int = 2, seed: int = 0, **config):
    """A randomly initialised LlamaForCausalLM of any small shape, for tests and benches (the MLP
    is `intermediate_size` wide, 2 × hidden by default); `config` goes to LlamaConfig."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config.setdefault("intermediate_size", 2 * hidden_size)
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            **config,
        )
    )


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_model(path: str | Path, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))


def save_model(model, tokenizer, path: str | Path) -> None:
    """Save weights (safetensors) + config + tokenizer as one loadable folder."""
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))


def bf16_is_native() -> bool:
    """Whether this process's device has bf16 arithmetic: a GPU that supports it, or a CPU with
    AVX-512-bf16 or AMX. Elsewhere torch emulates bf16, and a bf16 matmul ran 38x slower than
    fp32 on an AVX2 CPU, so bf16 settings fall back to fp32 there."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
