"""The code-with-tests reward runs programs in the real sandbox."""

from rewards import BUILTIN_REWARDS
from rewards.code import extract_code

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"


def test_extract_code_takes_last_fenced_block():
    text = "First try:\n```python\nx = 1\n```\nBetter:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert extract_code(text) == "def add(a, b):\n    return a + b\n"
    assert extract_code("def f(): pass") == "def f(): pass"


def test_code_reward_passes_fails_and_contains(tmp_path):
    marker = tmp_path / "escaped"
    completions = [
        "```python\ndef add(a, b):\n    return a + b\n```",  # correct
        "```python\ndef add(a, b):\n    return a - b\n```",  # wrong answer
        "```python\ndef add(a, b):\n    while True: pass\n```",  # hangs: killed by the time limit
        f"```python\nimport os\nos.system('touch {marker}')\nopen('{marker}', 'w')\ndef add(a, b): return a + b\n```",
        "no code at all",
    ]
    scores = BUILTIN_REWARDS["code"](["p"] * 6, completions + ["anything"], tests=[TESTS] * 5 + [None], timeout_s=2)
    assert scores == [1.0, 0.0, 0.0, 0.0, 0.0, None]  # writing outside the sandbox's scratch fails
    assert not marker.exists()
