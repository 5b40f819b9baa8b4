"""Rankings of K responses to a prompt: the data a reward model learns from.

One JSONL line per ranked prompt:

```json
{"prompt": "What is 3 + 4?",
 "responses": ["3 + 4 = 7. The answer is 7.", "The answer is 8.", "7", "3 + 4 = 7. The answer is 7 apples."],
 "order": [3, [0, 2], 1],
 "labeler": "alice",
 "note": "optional free text"}
```

- `prompt`: a string (one user turn) or a list of chat messages `{"role": "system"|"user"|"assistant",
  "content": str}` ending with a user message (multi-turn context; the responses are the next
  assistant turn).
- `responses`: K >= 2 non-empty strings.
- `order`: best → worst; each item is a response index or a list of tied indices. Every index
  0..K-1 appears exactly once. K = 2 with order [0, 1] is a plain preference pair.
- `labeler` (optional string). Simulated labelers are always `"simulated:<name>"`.
- `note` (optional string).
- `{"prompt": ..., "responses": [...], "unrankable": true, "labeler": ...}` records that a person
  marked the prompt unrankable: readers skip the line and count it.

`read_rankings` is strict: a bad line raises RankingError "path:line: problem" before anything
is returned. `append_ranking` adds one validated line, safe against concurrent writers, and
`split_by_prompt` holds out whole prompts. Chosen/rejected pairs and HH-RLHF transcripts are read
into the same Rankings by rlpost/rlhf/ranking_formats.py, whose `load_rankings` takes any mix.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rlpost.chat import ROLES
from rlpost.data import read_jsonl


class RankingError(ValueError):
    """A record that is not a valid ranking; the message starts with "path:line: "."""


@dataclass(frozen=True)
class Ranking:
    """One ranked prompt. Response i beats response j iff ranks[i] < ranks[j]; equal ranks tie."""

    prompt: str | tuple  # a string, or a tuple of message dicts ending with a user turn
    responses: tuple[str, ...]
    ranks: tuple[int, ...]  # tier per response, 0 = best
    labeler: str | None = None
    note: str | None = None
    source: str = ""  # "file:line"

    def __post_init__(self):
        # Accept lists from callers; tuples keep the frozen value from being changed in place.
        if isinstance(self.prompt, list):
            object.__setattr__(self, "prompt", tuple(self.prompt))
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "ranks", tuple(self.ranks))
        if len(self.ranks) != len(self.responses):
            raise ValueError(f"{len(self.ranks)} ranks for {len(self.responses)} responses")

    def __hash__(self):  # message dicts are not hashable; their canonical dump is
        return hash((self.prompt_key, self.responses, self.ranks, self.labeler, self.note, self.source))

    @property
    def prompt_key(self) -> str:
        """The prompt as one string: its text, or a canonical JSON dump of the messages.

        A message list of a single plain user turn has the same key as that turn's text, since
        both mean the same prompt."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) == 1 and is_plain_user_turn(self.prompt[0]):
            return self.prompt[0]["content"]
        return json.dumps(list(self.prompt), sort_keys=True, ensure_ascii=False, separators=(",", ":"))

    def to_record(self) -> dict:
        """The JSONL record: `order` lists tiers best → worst, tied indices in a list."""
        tiers: dict[int, list[int]] = {}
        for index, rank in enumerate(self.ranks):
            tiers.setdefault(rank, []).append(index)
        order = [tier[0] if len(tier) == 1 else tier for _, tier in sorted(tiers.items())]
        prompt = self.prompt if isinstance(self.prompt, str) else [dict(m) for m in self.prompt]
        record = {"prompt": prompt, "responses": list(self.responses), "order": order}
        if self.labeler is not None:
            record["labeler"] = self.labeler
        if self.note is not None:
            record["note"] = self.note
        return record


class RankingSet(list):
    """A list of Rankings read from files, with what reading left out.

    `skipped` counts lines or pairs not turned into rankings, by reason: "unrankable" lines, and
    for HH-RLHF the pairs in ranking_formats.HH_SKIP_REASONS. `formats` maps each file to the format it was read as.
    """

    def __init__(self, rankings: Iterable[Ranking] = (), skipped: dict | None = None, formats: dict | None = None):
        super().__init__(rankings)
        self.skipped = Counter(skipped or {})
        self.formats = dict(formats or {})

    def per_labeler(self) -> dict[str | None, int]:
        """Rankings per labeler (None for rankings without one)."""
        return dict(Counter(r.labeler for r in self))

    def summary(self) -> dict:
        """Counts for logs and reports."""
        return {
            "rankings": len(self),
            "skipped": dict(self.skipped),
            "per_labeler": {str(k): v for k, v in self.per_labeler().items()},
            "files": dict(self.formats),
        }


def is_plain_user_turn(message: dict) -> bool:
    """A user message with nothing but role and content: it means the same prompt as its text."""
    return set(message) == {"role", "content"} and message["role"] == "user"


def type_name(value) -> str:
    """The JSON-ish name of a value's type, for error messages."""
    return "null" if value is None else type(value).__name__


def check_prompt(prompt) -> str | tuple:
    """The prompt as stored in a Ranking, or RankingError naming what is wrong with it."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise RankingError("prompt is empty")
        return prompt
    if not isinstance(prompt, list):
        raise RankingError(f"prompt must be a string or a list of messages, got {type_name(prompt)}")
    if not prompt:
        raise RankingError("prompt is an empty message list")
    for i, message in enumerate(prompt):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise RankingError(
                f"prompt message {i} needs 'role' in {ROLES} and string 'content': {json.dumps(message)[:200]}"
            )
    if prompt[-1]["role"] != "user":
        raise RankingError(f"prompt messages must end with a user turn, the last is {prompt[-1]['role']!r}")
    return tuple(dict(m) for m in prompt)


def _check_responses(responses) -> tuple[str, ...]:
    if not isinstance(responses, list):
        raise RankingError(f"responses must be a list of strings, got {type_name(responses)}")
    if len(responses) < 2:
        raise RankingError(f"needs K >= 2 responses, got {len(responses)}")
    for i, response in enumerate(responses):
        if not isinstance(response, str):
            raise RankingError(f"response {i} is not a string ({type_name(response)})")
        if not response.strip():
            raise RankingError(f"response {i} is empty")
    return tuple(responses)


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_order(order, k: int) -> tuple[int, ...]:
    """Ranks (tier per response, 0 = best) from an `order` list over k responses."""
    if not isinstance(order, list):
        raise RankingError(f"order must be a list (best → worst), got {type_name(order)}")
    ranks: list[int | None] = [None] * k
    for tier, item in enumerate(order):
        group = item if isinstance(item, list) else [item]
        if not group:
            raise RankingError(f"order item {tier} is an empty tie list")
        for index in group:
            if not _is_index(index):
                raise RankingError(f"order: {json.dumps(index)} is not an integer response index")
            if not 0 <= index < k:
                raise RankingError(f"order: response index {index} out of range (K = {k}, indices 0..{k - 1})")
            if ranks[index] is not None:
                raise RankingError(f"order: response index {index} repeated")
            ranks[index] = tier
    missing = [i for i, rank in enumerate(ranks) if rank is None]
    if missing:
        raise RankingError(f"order: response index {missing[0]} missing (every index 0..{k - 1} appears once)")
    return tuple(ranks)


def _optional_string(record: dict, key: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise RankingError(f"{key} must be a string, got {type_name(value)}")
    return value


def ranking_from_record(record, source: str) -> Ranking | None:
    """A Ranking from one native record, None for an "unrankable" line; RankingError otherwise."""
    try:
        if not isinstance(record, dict):
            raise RankingError(f"not a JSON object (got {type_name(record)})")
        unrankable = record.get("unrankable", False)
        if not isinstance(unrankable, bool):
            raise RankingError(f"unrankable must be true or false, got {json.dumps(unrankable)}")
        required = ("prompt",) if unrankable else ("prompt", "responses", "order")
        for key in required:
            if key not in record:
                raise RankingError(f"missing key {key!r}")
        prompt = check_prompt(record["prompt"])
        labeler, note = _optional_string(record, "labeler"), _optional_string(record, "note")
        if unrankable:
            # The page may mark a prompt unrankable because a response is empty: only the types matter.
            responses = record.get("responses", [])
            if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
                raise RankingError("responses must be a list of strings")
            return None
        responses = _check_responses(record["responses"])
        ranks = parse_order(record["order"], len(responses))
    except RankingError as e:
        raise RankingError(f"{source}: {e}") from None
    return Ranking(prompt, responses, ranks, labeler, note, source)


def read_records(path: str | Path) -> Iterator[tuple[str, object]]:
    """("path:line", record) for each non-blank line; invalid JSON is a RankingError too."""
    try:
        for lineno, record in read_jsonl(path):
            yield f"{path}:{lineno}", record
    except ValueError as e:
        raise RankingError(str(e)) from None


def read_rankings(path: str | Path) -> RankingSet:
    """The native format; `skipped["unrankable"]` counts lines marked unrankable."""
    rankings, skipped = [], Counter()
    for source, record in read_records(path):
        ranking = ranking_from_record(record, source)
        if ranking is None:
            skipped["unrankable"] += 1
        else:
            rankings.append(ranking)
    return RankingSet(rankings, skipped, {str(path): "rankings"})


def split_by_prompt(rankings: list[Ranking], held_out: float | int, seed: int) -> tuple[list[Ranking], list[Ranking]]:
    """(train, held_out) with whole prompts on one side: a float is the fraction of prompts held
    out (rounded half up), an int the number of prompts. Input order is kept on each side; which
    prompts are held out depends only on the set of prompts and the seed."""
    keys = sorted({r.prompt_key for r in rankings})
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)):
        raise ValueError(f"held_out must be a fraction or a number of prompts, got {held_out!r}")
    if isinstance(held_out, float):
        if not 0.0 <= held_out <= 1.0:
            raise ValueError(f"held_out fraction must be in [0, 1], got {held_out}")
        count = math.floor(held_out * len(keys) + 0.5)
    else:
        if not 0 <= held_out <= len(keys):
            raise ValueError(f"held_out = {held_out} prompts, but there are {len(keys)} prompts")
        count = held_out
    random.Random(seed).shuffle(keys)
    held = set(keys[:count])
    return [r for r in rankings if r.prompt_key not in held], [r for r in rankings if r.prompt_key in held]


def append_ranking(path: str | Path, record: dict) -> Ranking | None:
    """Validate `record` and append it as one line; returns its Ranking (None if unrankable).

    The line is written by one os.write to an O_APPEND file under an exclusive flock, then
    fsynced, so concurrent writers (threads, processes, browser tabs) never interleave or leave
    half lines. A record that fails validation raises RankingError and nothing is written."""
    ranking = ranking_from_record(record, f"{path} (record to append)")
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A line cut short by a crash stays visible as one bad line instead of swallowing ours.
            line = b"\n" + line
        written = os.write(fd, line)
        while written < len(line):  # a regular file writes it all unless the disk is full
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock
    return ranking
