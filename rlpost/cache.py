"""One cache folder for every slow, reusable artifact (DeepSpeed JIT ops, vLLM/inductor
compile caches, Hugging Face files), so a fresh clone reuses what an earlier one built.

Default `~/.cache/rlpost`; override with the RLPOST_CACHE environment variable.
"""

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("RLPOST_CACHE", "~/.cache/rlpost")).expanduser()


def cache_env() -> dict[str, str]:
    """Environment variables that point each library's cache into the rlpost cache folder."""
    root = cache_root()
    return {
        "RLPOST_CACHE": str(root),
        "TORCH_EXTENSIONS_DIR": str(root / "torch_extensions"),
        "VLLM_CACHE_ROOT": str(root / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"),
        "HF_HOME": str(root / "hf"),
        "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
        # Ray and wandb phone home by default; this project runs offline unless told otherwise.
        "RAY_USAGE_STATS_ENABLED": "0",
        "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"),
    }


def apply_cache_env() -> dict[str, str]:
    """Set the cache variables in this process (without overriding ones the user set)."""
    env = cache_env()
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in env}
