"""Rankings files in other formats, and reading any mix of formats as one set.

`read_pairs` takes chosen/rejected preference pairs as TRL and OpenRLHF store them, `read_hh_rlhf`
Anthropic HH-RLHF transcripts; both give K = 2 Rankings (chosen first) of rlpost/rlhf/rankings.py.
`load_rankings` reads several files, detecting each one's format from its first record. Readers
are strict like the native one: a bad line raises RankingError "path:line: problem".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from rlpost.config import ConfigError
from rlpost.rlhf.rankings import (
    Ranking,
    RankingError,
    RankingSet,
    check_prompt,
    is_plain_user_turn,
    read_rankings,
    read_records,
    split_by_prompt,
    type_name,
)

FORMATS = ("rankings", "pairs", "hh")
HH_SKIP_REASONS = ("contexts_differ", "empty_response", "identical_responses", "prompt_not_user_turn")


def _simplify_prompt(messages: list[dict]) -> str | list[dict]:
    """A single plain user turn is written as its text, as in the native format."""
    return messages[0]["content"] if len(messages) == 1 and is_plain_user_turn(messages[0]) else messages


def _split_conversation(side: str, messages: list) -> tuple[list[dict], str]:
    """(context, final assistant content) of a chosen/rejected message list."""
    if not messages:
        raise RankingError(f"{side} is an empty message list")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        raise RankingError(f"{side} must end with an assistant message with string 'content'")
    return messages[:-1], last["content"]


def _pair_from_record(record, source: str) -> Ranking:
    try:
        if not isinstance(record, dict):
            raise RankingError(f"not a JSON object (got {type_name(record)})")
        for key in ("chosen", "rejected"):
            if key not in record:
                raise RankingError(f"missing key {key!r}")
        chosen, rejected = record["chosen"], record["rejected"]
        if isinstance(chosen, str) and isinstance(rejected, str):
            if "prompt" not in record:
                raise RankingError("missing key 'prompt' (needed when chosen and rejected are strings)")
            prompt = record["prompt"]
        elif isinstance(chosen, list) and isinstance(rejected, list):
            chosen_context, chosen = _split_conversation("chosen", chosen)
            rejected_context, rejected = _split_conversation("rejected", rejected)
            if chosen_context != rejected_context:
                raise RankingError("chosen and rejected have different messages before their final response")
            if "prompt" in record:
                prompt = record["prompt"]
                if chosen_context:  # as in OpenRLHF: chosen and rejected continue the given prompt
                    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
                    prompt = prompt + chosen_context if isinstance(prompt, list) else prompt
            elif chosen_context:
                prompt = _simplify_prompt(chosen_context)
            else:
                raise RankingError("missing key 'prompt' (chosen and rejected have no messages before the response)")
        else:
            raise RankingError(
                f"chosen and rejected must both be strings or both be message lists, "
                f"got {type_name(chosen)} and {type_name(rejected)}"
            )
        prompt = check_prompt(prompt)
        for side, response in (("chosen", chosen), ("rejected", rejected)):
            if not response.strip():
                raise RankingError(f"{side} response is empty")
    except RankingError as e:
        raise RankingError(f"{source}: {e}") from None
    return Ranking(prompt, (chosen, rejected), (0, 1), source=source)


def read_pairs(path: str | Path) -> RankingSet:
    """Chosen/rejected pairs, `{"prompt"?, "chosen", "rejected"}`, each a K = 2 ranking (0, 1).

    chosen/rejected are strings (then `prompt` is required) or message lists whose final
    assistant message is the response; the messages before it are the prompt, or continue the
    `prompt` when one is given."""
    rankings = [_pair_from_record(record, source) for source, record in read_records(path)]
    return RankingSet(rankings, formats={str(path): "pairs"})


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(transcript: str) -> list[dict]:
    """ "\\n\\nHuman: ...\\n\\nAssistant: ..." as messages; turn contents are stripped of surrounding space."""
    if not transcript.startswith("\n\nHuman:"):
        raise RankingError("not an HH-RLHF transcript (must start with '\\n\\nHuman:')")
    parts = _HH_TURN.split(transcript)[1:]  # [role, content, role, content, ...]
    return [{"role": _HH_ROLES[role], "content": content.strip()} for role, content in zip(parts[::2], parts[1::2])]


def _hh_pair(record, source: str) -> Ranking | str:
    """A Ranking, or the HH_SKIP_REASONS reason this pair is left out."""
    try:
        if not isinstance(record, dict):
            raise RankingError(f"not a JSON object (got {type_name(record)})")
        sides = []
        for key in ("chosen", "rejected"):
            if key not in record:
                raise RankingError(f"missing key {key!r}")
            if not isinstance(record[key], str):
                raise RankingError(f"{key} must be a transcript string, got {type_name(record[key])}")
            try:
                messages = parse_hh_transcript(record[key])
            except RankingError as e:
                raise RankingError(f"{key}: {e}") from None
            if messages[-1]["role"] != "assistant":
                raise RankingError(f"{key}: the transcript does not end with an Assistant turn")
            sides.append(messages)
    except RankingError as e:
        raise RankingError(f"{source}: {e}") from None
    (*context, chosen), (*rejected_context, rejected) = sides
    if context != rejected_context:
        return "contexts_differ"
    if not chosen["content"] or not rejected["content"]:
        return "empty_response"
    if chosen["content"] == rejected["content"]:
        return "identical_responses"
    if not context or context[-1]["role"] != "user":
        return "prompt_not_user_turn"  # e.g. two Assistant turns in a row before the response
    return Ranking(
        check_prompt(_simplify_prompt(context)), (chosen["content"], rejected["content"]), (0, 1), source=source
    )


def read_hh_rlhf(path: str | Path) -> RankingSet:
    """Anthropic HH-RLHF `{"chosen": transcript, "rejected": transcript}` pairs (.jsonl or .jsonl.gz).

    The prompt is every turn before the final Assistant turn (its text when that is one Human
    turn); the responses are the two final Assistant turns, chosen first. Pairs whose contexts
    differ, with an empty or identical final response, or whose response does not follow a Human
    turn are counted in `skipped` (see HH_SKIP_REASONS), not read; a malformed line is an error."""
    rankings, skipped = [], Counter()
    for source, record in read_records(path):
        result = _hh_pair(record, source)
        if isinstance(result, str):
            skipped[result] += 1
        else:
            rankings.append(result)
    return RankingSet(rankings, skipped, {str(path): "hh"})


_READERS = {"rankings": read_rankings, "pairs": read_pairs, "hh": read_hh_rlhf}


def detect_format(path: str | Path) -> str:
    """ "rankings", "pairs" or "hh", from the file's first record."""
    for source, record in read_records(path):
        if isinstance(record, dict) and ("order" in record or "unrankable" in record):
            return "rankings"
        if isinstance(record, dict) and "chosen" in record and "rejected" in record:
            chosen = record["chosen"]
            if "prompt" not in record and isinstance(chosen, str) and chosen.startswith("\n\nHuman:"):
                return "hh"
            return "pairs"
        keys = sorted(record) if isinstance(record, dict) else type_name(record)
        raise RankingError(
            f"{source}: the first record fits no known format (rankings have 'order' or 'unrankable', "
            f"preference pairs 'chosen' and 'rejected'); it has {keys}"
        )
    raise RankingError(f"{path}: no records, cannot detect its format")


def load_rankings(paths: str | Path | Iterable[str | Path], fmt: str = "auto") -> RankingSet:
    """Rankings from one or several files (e.g. one per labeler) as one set.

    fmt is "auto" (detected per file from its first record) or one of FORMATS for all files."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown rankings format {fmt!r}; expected 'auto' or one of {FORMATS}")
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    combined = RankingSet()
    for path in paths:
        part = _READERS[detect_format(path) if fmt == "auto" else fmt](path)
        combined.extend(part)
        combined.skipped.update(part.skipped)
        combined.formats.update(part.formats)
    return combined


def split_rankings(data, seed: int, batch_size: int) -> tuple[list, list]:
    """The training and held-out rankings of `data` (a recipe's data section: files, held_out,
    max_train_prompts), split by prompt; every line is checked before anything trains. Stops with
    a ConfigError when fewer rankings than one batch are left to train on."""
    dataset = load_rankings(data.files)
    held_out = data.held_out if data.held_out < 1 else int(data.held_out)
    train_set, eval_set = split_by_prompt(dataset, held_out, seed=seed)
    if data.max_train_prompts:
        keep = set(list(dict.fromkeys(r.prompt_key for r in train_set))[: data.max_train_prompts])
        train_set = [r for r in train_set if r.prompt_key in keep]
    if len(train_set) < batch_size:
        raise ConfigError(f"train.batch_size: {batch_size} is more than the {len(train_set)} training rankings")
    prompts = lambda rankings: len({r.prompt_key for r in rankings})  # noqa: E731
    print(
        f"rankings: {len(train_set)} training ({prompts(train_set)} prompts), {len(eval_set)} held out "
        f"({prompts(eval_set)} prompts); per labeler: {dataset.per_labeler()}; skipped: {dict(dataset.skipped)}"
    )
    return train_set, eval_set
