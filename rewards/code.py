"""Code-with-tests reward: run the completion's program with the sample's tests in the sandbox.

The ``tests`` column holds Python test code for each sample (asserts, or a HumanEval/MBPP style
``check(candidate)`` call already filled in). The completion's code is the last fenced
```python block, or the whole completion when there is none. 1.0 when the program and its
tests exit cleanly within the time limit, else 0.0; a sample without tests gets None.
Everything runs in `sandbox/` (bubblewrap + Landlock + seccomp, as an unprivileged user).
"""

from __future__ import annotations

import functools
import re

from rewards.base import column, completion_text

_FENCED = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
    blocks = _FENCED.findall(completion)
    return blocks[-1] if blocks else completion


@functools.lru_cache(maxsize=1)
def _pool(num_workers: int):
    import sandbox

    return sandbox.SandboxPool(num_workers=num_workers)


def code_reward(
    prompts, completions, tests=None, *, timeout_s: float = 5.0, memory_mb: int = 256, num_workers: int = 2, **_columns
) -> list[float | None]:
    """Batched code-with-tests reward; needs the ``tests`` column."""
    programs, index = [], []
    for i, completion in enumerate(completions):
        test = column(tests, i, "tests")
        if test is not None:
            programs.append(extract_code(completion_text(completion)) + "\n\n" + str(test) + "\n")
            index.append(i)
    scores: list[float | None] = [None] * len(completions)
    if programs:
        results = _pool(num_workers).run_batch(programs, timeout_s=timeout_s, memory_mb=memory_mb)
        for i, result in zip(index, results):
            scores[i] = 1.0 if result.ok else 0.0
    return scores
