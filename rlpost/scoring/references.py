"""Reward references: naming a reward function in a config and turning the name into a callable.

A reward function follows the convention of `rewards.base`:
``fn(prompts, completions, **columns) -> list[float | None]`` (sync or async).
A `RewardSpec` names it by one of

- a built-in name from `rewards.BUILTIN_REFERENCES` ("math", "format", ...);
- ``"package.module:function"`` (an importable module);
- ``"path/to/file.py:function"`` (any file, also outside the project; relative
  paths are relative to the working directory at load time; the file's folder is
  appended to ``sys.path`` so it can import its neighbours).

`load_reward_fn` imports and checks the function, raising `RewardLoadError` with
the reference and what is wrong. It runs in the process that calls the function
(`rlpost.scoring.process`); everything else here is string and signature work that
imports no reward code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

# Tracebacks are kept whole up to this size (their tail is the useful part).
MAX_ERROR_CHARS = 4000


class RewardLoadError(ValueError):
    """A reward reference cannot be turned into a usable reward function."""


@dataclass
class RewardSpec:
    """One reward function in a run's reward mix."""

    name: str
    """Reference to the function: a built-in name ("math"), "package.module:function",
    or "path/to/file.py:function"."""

    weight: float = 1.0
    """Multiplier of this function's value in the total reward."""

    timeout_s: float = 10.0
    """Seconds one call (one batch) may take before its process is killed."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments bound to the function (like functools.partial), e.g.
    {"max_length": 512} for "overlong"."""


# ----------------------------------------------------------------------------
# Names


def absolute_reference(ref: str) -> str:
    """The reference with a file path made absolute (so another process resolves it alike)."""
    reference = ref.strip()
    location, separator, attribute = reference.rpartition(":")
    if separator and _is_file_location(location):
        return f"{_file_path(location)}:{attribute}"
    return reference


def reward_display_name(ref: str) -> str:
    """Short name for logs: the built-in name or the function part of a reference."""
    return ref.strip().rpartition(":")[2] or ref.strip()


def unique_names(references: list[str]) -> list[str]:
    """Short display names, made unique.

    The function name, unless different references share it (then the full
    reference); repeats of one reference get "#2", "#3", ...
    """
    references = [reference.strip() for reference in references]
    short = [reward_display_name(reference) for reference in references]
    names = [
        name if len({r for r, n in zip(references, short) if n == name}) == 1 else reference
        for name, reference in zip(short, references)
    ]
    unique: list[str] = []
    for name in names:
        candidate, copy = name, 1
        while candidate in unique:
            copy += 1
            candidate = f"{name}#{copy}"
        unique.append(candidate)
    return unique


def _is_file_location(location: str) -> bool:
    return location.endswith(".py") or "/" in location or os.sep in location


def _file_path(location: str) -> Path:
    path = Path(location).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    return path.resolve()


# ----------------------------------------------------------------------------
# Loading


def load_reward_fn(ref: str, kwargs: dict[str, Any] | None = None) -> Callable[..., Any]:
    """Resolve a reward reference to a callable taking (prompts, completions, **columns).

    `kwargs` are bound with functools.partial after checking the function accepts
    them. Raises `RewardLoadError` naming the reference and the problem.
    """
    reference = ref.strip() if isinstance(ref, str) else ref
    if not isinstance(reference, str) or not reference:
        raise RewardLoadError(f"reward reference must be a non-empty string, got {ref!r}")
    function = _resolve_reference(reference)
    if not callable(function):
        raise RewardLoadError(f"{reference!r}: a {type(function).__name__} object is not callable")
    if kwargs:
        _check_keywords(reference, function, kwargs)
        function = functools.partial(function, **kwargs)
    _check_signature(reference, function)
    return function


def _resolve_reference(reference: str) -> Any:
    if ":" not in reference:
        # Built-ins are looked up by reference so only the needed module is imported.
        from rewards import BUILTIN_REFERENCES, builtin_reward

        if reference in BUILTIN_REFERENCES:
            return builtin_reward(reference)
        raise RewardLoadError(
            f"{reference!r} is not a built-in reward ({', '.join(sorted(BUILTIN_REFERENCES))}) "
            f"nor a 'package.module:function' or 'path/to/file.py:function' reference"
        )
    location, _, attribute = reference.rpartition(":")
    if not location or not attribute:
        raise RewardLoadError(f"{reference!r}: expected 'module:function' or 'file.py:function'")
    if _is_file_location(location):
        module = _import_file(reference, location)
        where = f"file {module.__file__}"
    else:
        module = _import_module(reference, location)
        where = f"module {location!r}"
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RewardLoadError(f"{reference!r}: {where} has no attribute {attribute!r}") from None
    return target


def _import_file(reference: str, location: str):
    path = _file_path(location)
    if not path.is_file():
        raise RewardLoadError(f"{reference!r}: file {path} does not exist")
    # One module per file path, so loading a file twice gives the same functions.
    module_name = f"_rlpost_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise RewardLoadError(f"{reference!r}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    # Registered before running, as a normal import would, so that dataclasses and
    # pickling inside the file can find the module.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:
        del sys.modules[module_name]
        raise RewardLoadError(
            f"{reference!r}: importing {path} failed: {type(error).__name__}: {error}\n{format_traceback(error)}"
        ) from error
    return module


def _import_module(reference: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise RewardLoadError(f"{reference!r}: module {module_name!r} not found") from error
        raise RewardLoadError(f"{reference!r}: importing module {module_name!r} failed: {error}") from error
    except (Exception, SystemExit) as error:
        raise RewardLoadError(
            f"{reference!r}: importing module {module_name!r} failed: {type(error).__name__}: "
            f"{error}\n{format_traceback(error)}"
        ) from error


def format_traceback(error: BaseException) -> str:
    """The error's traceback as text, cut to its last `MAX_ERROR_CHARS` characters."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return text if len(text) <= MAX_ERROR_CHARS else "...\n" + text[-MAX_ERROR_CHARS:]


# ----------------------------------------------------------------------------
# Signatures


def _signature(function: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(function)
    except (TypeError, ValueError):
        return None  # some C callables have no signature: nothing to check


def _positional(parameters: list[inspect.Parameter]) -> list[inspect.Parameter]:
    return [
        p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def _check_keywords(reference: str, function: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    signature = _signature(function)
    if signature is None:
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    nameable = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    unknown = sorted(set(kwargs) - nameable)
    if unknown:
        raise RewardLoadError(f"{reference!r}: the function takes no keyword argument(s) {unknown}")


def _check_signature(reference: str, function: Callable[..., Any]) -> None:
    signature = _signature(function)
    if signature is None:
        return
    parameters = list(signature.parameters.values())
    positional = _positional(parameters)
    takes_varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters)
    problem = None
    if len(positional) < 2 and not takes_varargs:
        problem = "it must take prompts and completions as its first two positional arguments"
    elif any(
        p.kind is inspect.Parameter.POSITIONAL_ONLY and p.default is inspect.Parameter.empty for p in positional[2:]
    ):
        problem = "it has required positional-only parameters after (prompts, completions)"
    if problem:
        raise RewardLoadError(
            f"{reference!r}: signature {signature} cannot take (prompts, completions, **columns): {problem}"
        )


def accepted_columns(function: Callable[..., Any]) -> set[str] | None:
    """Column names the function can receive, or None if it takes **columns."""
    signature = _signature(function)
    if signature is None:
        return None
    parameters = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    first_two = {p.name for p in _positional(parameters)[:2]}
    return {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in first_two
    }


# ----------------------------------------------------------------------------
# Calling


def call_reward_fn(
    function: Callable[..., Any],
    prompts: list[Any],
    completions: list[Any],
    columns: dict[str, list[Any]],
    accepted_columns: set[str] | None = None,
) -> Any:
    """Call a reward function in this process and return its raw result.

    Columns the function has no parameter for (`accepted_columns`, from the
    function of that name) are left out, so ``def f(prompts, completions, answer)``
    works. Awaitables are run to completion, on a thread of their own when the
    caller already runs an event loop (a notebook, Playwright's sync API).
    """
    if accepted_columns is not None:
        columns = {name: values for name, values in columns.items() if name in accepted_columns}
    result = function(prompts, completions, **columns)
    if inspect.isawaitable(result):
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop running here: the usual case
            return asyncio.run(_await(result))
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, _await(result)).result()
    return result


async def _await(awaitable):
    return await awaitable
