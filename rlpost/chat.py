"""Conversations → token ids with a loss mask.

Only assistant tokens are trained on (their content and the closing assistant token); user
turns, the template's framing and tool outputs injected between OUTPUT_START/OUTPUT_END are
masked out. The ids equal `tokenizer.apply_chat_template(messages)` for the rlpost template,
which the tests check, so training, sampling and serving all see the same ids.
"""

from __future__ import annotations

import json
import re

from rlpost.data import read_jsonl
from rlpost.tokenizer import ASSISTANT_END, ASSISTANT_START, OUTPUT_END, OUTPUT_START, USER_END, USER_START

ROLES = ("system", "user", "assistant")
_TOOL_OUTPUT = re.compile(f"({re.escape(OUTPUT_START)}.*?{re.escape(OUTPUT_END)})", re.DOTALL)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def render_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 loss mask (1 = train on this token) for one conversation."""
    ids, mask = [tokenizer.bos_token_id], [0]
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"message {i}: needs role in {ROLES} and string content, got {message!r}")
        if role == "assistant":
            start = _ids(tokenizer, ASSISTANT_START)
            ids += start
            mask += [0] * len(start)
            for part in _TOOL_OUTPUT.split(content):
                part_ids = _ids(tokenizer, part)
                trained = 0 if part.startswith(OUTPUT_START) else 1
                ids += part_ids
                mask += [trained] * len(part_ids)
            end = _ids(tokenizer, ASSISTANT_END)
            ids += end
            mask += [1] * len(end)
        else:
            part_ids = _ids(tokenizer, USER_START + content + USER_END)
            ids += part_ids
            mask += [0] * len(part_ids)
    return ids, mask


def template_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Ids of `messages` rendered with the tokenizer's own chat template (the tiny one or any HF
    model's)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def prompt_messages(prompt: str | list[dict]) -> list[dict]:
    """A prompt as chat messages: one user turn, or the given messages (a multi-turn context)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_ids(tokenizer, prompt: str | list[dict]) -> list[int]:
    """Ids of a prompt followed by the assistant's opening, ready for sampling."""
    return template_ids(tokenizer, prompt_messages(prompt), add_generation_prompt=True)


def read_conversations(path: str) -> list[list[dict]]:
    """Read a JSONL file of {"messages": [{"role", "content"}, ...]} records.

    A bad line fails with the file name and line number, before any training starts."""
    conversations = []
    for lineno, record in read_jsonl(path):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{path}:{lineno}: expected an object with a non-empty 'messages' list")
        for j, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(
                    f"{path}:{lineno}: message {j} needs 'role' in {ROLES} and string 'content': {json.dumps(m)[:200]}"
                )
        conversations.append(messages)
    return conversations
