"""Built-in reward functions and the registry that names them.

Every reward is a batched function
``fn(prompts, completions, **columns) -> list[float | None]`` (see
`rewards.base`). A reward spec refers to a built-in by its registry name
("math"), or to any other function as "package.module:function" or
"path/to/file.py:function" (see `rlpost.scoring.references`).

`BUILTIN_REFERENCES` maps each name to where its function lives, so a process
that runs one reward imports only that reward's module (math-verify and sympy
take about a second to import). `BUILTIN_REWARDS` maps the names to the
functions themselves and imports them all on first use.

"code" runs a completion's program against the sample's tests in the sandbox
(`sandbox/`); "reward_model" scores with a learned reward model (`recipes/reward_model.py`).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from rewards.base import per_sample

BUILTIN_REFERENCES: dict[str, str] = {
    "math": "rewards.math:math_reward",
    "letter_count": "rewards.spelling:letter_count_reward",
    "spelling": "rewards.spelling:spelling_reward",
    "format": "rewards.format:format_reward",
    "length": "rewards.length:length_reward",
    "overlong": "rewards.length:overlong_reward",
    "code": "rewards.code:code_reward",
    "reward_model": "rewards.reward_model:reward_model_reward",
}


def builtin_reward(name: str) -> Callable[..., Any]:
    """The built-in reward function registered as `name` (KeyError if none)."""
    module_name, _, function_name = BUILTIN_REFERENCES[name].partition(":")
    return getattr(importlib.import_module(module_name), function_name)


_FUNCTION_MODULES = {reference.partition(":")[2]: reference for reference in BUILTIN_REFERENCES.values()}


def __getattr__(name: str) -> Any:
    # Lazy attributes: the registry and the functions by their own names.
    if name == "BUILTIN_REWARDS":
        return {registered: builtin_reward(registered) for registered in BUILTIN_REFERENCES}
    if name in _FUNCTION_MODULES:
        module_name = _FUNCTION_MODULES[name].partition(":")[0]
        return getattr(importlib.import_module(module_name), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BUILTIN_REFERENCES", "BUILTIN_REWARDS", "builtin_reward", "per_sample", *_FUNCTION_MODULES]
