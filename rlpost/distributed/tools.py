"""The Python tool: code the model writes between <|python_start|> and <|python_end|> runs in
the sandbox, and what it printed comes back between <|output_start|> and <|output_end|>.

Code runs like a REPL cell: if its last statement is an expression, the value is printed
(`'strawberry'.count('r')` → `3`), so the short checks the SFT data teaches need no print().
An error comes back as its last traceback line (`NameError: name 'x' is not defined`), a
timeout as `TimeoutError`, so the model sees what went wrong and the run goes on.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from rlpost.config import doc


@dataclass
class ToolConfig:
    enabled: bool = doc("Let the policy call the Python tool while it generates (rollouts and evaluation).", False)
    max_calls: int = doc("Tool calls per sample; after the last one the sample just keeps generating.", 2)
    timeout_s: float = doc("Wall-clock limit per call.", 2.0)
    memory_mb: int = doc("Memory limit per call.", 256)
    max_output_chars: int = doc("Tool output shown to the model is cut to this many characters.", 200)
    sandbox_workers: int = doc("Sandbox worker processes per rollout worker.", 1)


def repl_program(code: str) -> str:
    """`code` rewritten so that a trailing expression's value is printed, as in a REPL.

    Code that does not parse is returned unchanged: running it reports the SyntaxError."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body.pop()
    value = ast.unparse(last.value)
    head = ast.unparse(tree) + "\n" if tree.body else ""
    return f"{head}__value = ({value})\nif __value is not None:\n    print(repr(__value))\n"


def output_text(result, max_chars: int) -> str:
    """What the model sees of one sandbox result."""
    if result.timed_out:
        text = "TimeoutError"
    elif result.ok:
        text = result.stdout.strip()
    else:
        lines = (result.stderr or result.reason).strip().splitlines()
        text = (result.stdout.strip() + "\n" if result.stdout.strip() else "") + (lines[-1] if lines else result.reason)
    return text if len(text) <= max_chars else text[:max_chars] + "…"


class PythonTool:
    """A sandbox pool that runs batches of tool calls; started on first use."""

    def __init__(self, cfg: ToolConfig):
        self.cfg = cfg
        self._pool = None

    def run(self, codes: list[str]) -> list[str]:
        """Outputs (as the model will see them) of each snippet, in order."""
        if not codes:
            return []
        if self._pool is None:
            import sandbox

            self._pool = sandbox.SandboxPool(
                self.cfg.sandbox_workers, timeout_s=self.cfg.timeout_s, memory_mb=self.cfg.memory_mb
            )
        results = self._pool.run_batch([repl_program(c) for c in codes])
        return [output_text(r, self.cfg.max_output_chars) for r in results]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
