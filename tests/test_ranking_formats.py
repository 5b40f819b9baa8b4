"""Rankings from other formats: TRL/OpenRLHF chosen/rejected pairs, HH-RLHF transcripts, format
detection, and several files (e.g. one per labeler) read as one set."""

from __future__ import annotations

import gzip
import json

import pytest
from helpers import SHARED_DATA
from test_rankings import CHAT, GOOD, assert_fails_at_line_2, changed, write_lines

from rlpost.rlhf.ranking_formats import detect_format, load_rankings, read_hh_rlhf, read_pairs
from rlpost.rlhf.rankings import RankingError

HH_TEST = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def test_pairs_with_text_and_with_messages(tmp_path):
    text = {"prompt": "What is 3 + 4?", "chosen": "7", "rejected": "8"}
    # TRL conversational, implicit prompt: the messages before the final assistant turn.
    implicit = {
        "chosen": CHAT + [{"role": "assistant", "content": "4"}],
        "rejected": CHAT + [{"role": "assistant", "content": "5"}],
    }
    single = {
        "chosen": [CHAT[1], {"role": "assistant", "content": "Hey"}],
        "rejected": [CHAT[1], {"role": "assistant", "content": "Go away"}],
    }
    # TRL conversational, explicit prompt: chosen/rejected are the completion only.
    explicit = {
        "prompt": CHAT,
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "22"}],
    }
    # chosen/rejected continue the given prompt with more turns (OpenRLHF style).
    continued = {
        "prompt": "Hi",
        "chosen": [CHAT[2], CHAT[3], {"role": "assistant", "content": "4"}],
        "rejected": [CHAT[2], CHAT[3], {"role": "assistant", "content": "3"}],
    }
    pairs = read_pairs(write_lines(tmp_path / "p.jsonl", [text, implicit, single, explicit, continued]))
    assert [r.ranks for r in pairs] == [(0, 1)] * 5
    assert [r.responses for r in pairs] == [("7", "8"), ("4", "5"), ("Hey", "Go away"), ("4", "22"), ("4", "3")]
    assert pairs[0].prompt == "What is 3 + 4?"
    assert list(pairs[1].prompt) == CHAT and list(pairs[3].prompt) == CHAT
    assert pairs[2].prompt == "Hi"  # a single user turn is its text
    assert list(pairs[4].prompt) == [{"role": "user", "content": "Hi"}, CHAT[2], CHAT[3]]
    assert pairs[4].source == f"{tmp_path / 'p.jsonl'}:5"


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


BAD_PAIRS = [
    ({"prompt": "Q", "chosen": "a"}, "missing key 'rejected'"),
    ({"chosen": "a", "rejected": "b"}, "missing key 'prompt' (needed when chosen and rejected are strings)"),
    ({"prompt": "Q", "chosen": "a", "rejected": [assistant("b")]}, "must both be strings or both be message lists"),
    ({"chosen": [CHAT[1], assistant("a")], "rejected": [CHAT[3], assistant("b")]}, "different messages before"),
    ({"chosen": [CHAT[1]], "rejected": [CHAT[1], assistant("b")]}, "chosen must end with an assistant message"),
    ({"chosen": [assistant("a")], "rejected": [assistant("b")]}, "missing key 'prompt' (chosen and rejected have no"),
    ({"prompt": "Q", "chosen": "", "rejected": "b"}, "chosen response is empty"),
    ({"prompt": CHAT[:3], "chosen": "a", "rejected": "b"}, "prompt messages must end with a user turn"),
    ({"prompt": 1, "chosen": "a", "rejected": "b"}, "prompt must be a string or a list of messages, got int"),
    ("3", "not a JSON object (got int)"),
]


@pytest.mark.parametrize("line, problem", BAD_PAIRS)
def test_bad_pair_line_names_file_line_and_problem(tmp_path, line, problem):
    assert_fails_at_line_2(
        read_pairs, tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b"}, line], problem
    )


def hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def test_hh_parsing_and_skips(tmp_path):
    lines = [
        {"chosen": hh("Hi", "Hello!", "Name a color", " Blue "), "rejected": hh("Hi", "Hello!", "Name a color", "No.")},
        {"chosen": hh("Capital of France?", "Paris"), "rejected": hh("Capital of France?", "Rome")},
        {"chosen": hh("A", "B", "C", "D"), "rejected": hh("A", "X", "C", "E")},  # contexts differ
        {"chosen": hh("A", "same"), "rejected": hh("A", "same ")},  # identical final responses
        {"chosen": hh("A", ""), "rejected": hh("A", "B")},  # empty final response
        {"chosen": hh("A", "B") + "\n\nAssistant: C", "rejected": hh("A", "B") + "\n\nAssistant: D"},
    ]
    pairs = read_hh_rlhf(write_lines(tmp_path / "hh.jsonl", lines))
    assert len(pairs) == 2
    assert dict(pairs.skipped) == {
        "contexts_differ": 1,
        "identical_responses": 1,
        "empty_response": 1,
        "prompt_not_user_turn": 1,
    }
    first, second = pairs
    assert list(first.prompt) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a color"},
    ]
    assert first.responses == ("Blue", "No.") and first.ranks == (0, 1)
    assert second.prompt == "Capital of France?" and second.responses == ("Paris", "Rome")


BAD_HH = [
    ({"chosen": "Human: A\n\nAssistant: B", "rejected": hh("A", "C")}, "chosen: not an HH-RLHF transcript"),
    (
        {"chosen": hh("A", "B"), "rejected": hh("A", "C", "D")},
        "rejected: the transcript does not end with an Assistant",
    ),
    ({"chosen": hh("A", "B")}, "missing key 'rejected'"),
    ({"chosen": [1], "rejected": hh("A", "C")}, "chosen must be a transcript string, got list"),
]


@pytest.mark.parametrize("line, problem", BAD_HH)
def test_bad_hh_line_names_file_line_and_problem(tmp_path, line, problem):
    good = {"chosen": hh("A", "B"), "rejected": hh("A", "C")}
    assert_fails_at_line_2(read_hh_rlhf, tmp_path / "hh.jsonl", [good, line], problem)


@pytest.mark.skipif(not HH_TEST.exists(), reason=f"{HH_TEST} not present")
def test_hh_rlhf_real_file():
    pairs = read_hh_rlhf(HH_TEST)
    assert len(pairs) + sum(pairs.skipped.values()) == 2312
    # Counted by reading the file: 5 pairs continue differently before the last turn, and in 4 the
    # chosen transcript ends in an empty "Assistant:" (lines 87, 517, 926, 1104).
    assert dict(pairs.skipped) == {"contexts_differ": 5, "empty_response": 4}
    first = pairs[0]
    assert first.source == f"{HH_TEST}:1"
    assert [m["role"] for m in first.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert first.prompt[0]["content"] == "what are some pranks with a pen i can do?"
    assert first.prompt[2]["content"] == "yep"
    assert first.prompt[-1]["content"] == "okay some of these do not have anything to do with pens"
    assert first.responses[0].startswith("No, sorry!  All of these involve a pen")
    assert first.responses[1].startswith("There are lots of funny things you can do with pens")
    for ranking in pairs:
        assert isinstance(ranking.prompt, str) or ranking.prompt[-1]["role"] == "user"
        assert ranking.responses[0] != ranking.responses[1] and all(ranking.responses)
    assert detect_format(HH_TEST) == "hh"


def test_gzip_and_auto_detection(tmp_path):
    native = write_lines(tmp_path / "native.jsonl", [{"prompt": "Q", "responses": ["", "b"], "unrankable": True}, GOOD])
    pairs = write_lines(tmp_path / "pairs.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b"}])
    messages = write_lines(
        tmp_path / "msgs.jsonl", [{"chosen": [CHAT[1], assistant("a")], "rejected": [CHAT[1], assistant("b")]}]
    )
    hh_gz = tmp_path / "hh.jsonl.gz"
    with gzip.open(hh_gz, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"chosen": hh("A", "B"), "rejected": hh("A", "C")}) + "\n")
    assert [detect_format(p) for p in (native, pairs, messages, hh_gz)] == ["rankings", "pairs", "pairs", "hh"]
    rankings = load_rankings([native, pairs, messages, hh_gz])
    assert [r.responses for r in rankings] == [tuple(GOOD["responses"]), ("a", "b"), ("a", "b"), ("B", "C")]
    assert rankings.formats == {str(native): "rankings", str(pairs): "pairs", str(messages): "pairs", str(hh_gz): "hh"}
    assert rankings.skipped == {"unrankable": 1}

    unknown = write_lines(tmp_path / "unknown.jsonl", ["", {"text": "hello"}])
    with pytest.raises(RankingError, match=rf"^{unknown}:2: the first record fits no known format.*\['text'\]"):
        load_rankings([native, unknown])
    empty = write_lines(tmp_path / "empty.jsonl", [])
    with pytest.raises(RankingError, match=rf"^{empty}: no records"):
        load_rankings(empty)
    # A forced format reads the file as that format, and its errors name the line.
    with pytest.raises(RankingError, match=rf"^{pairs}:1: missing key 'responses'"):
        load_rankings(pairs, fmt="rankings")
    with pytest.raises(ValueError, match="unknown rankings format"):
        load_rankings(pairs, fmt="csv")


def test_two_labelers_combine(tmp_path):
    alice = write_lines(
        tmp_path / "alice.jsonl",
        [GOOD, changed(prompt="Q2", order=[0, 1, 2, 3]), changed(prompt="Q3", order=..., unrankable=True)],
    )
    bob = write_lines(tmp_path / "bob.jsonl", [changed(labeler="bob", order=[[3, 0], 2, 1])])
    rankings = load_rankings([alice, bob])
    assert len(rankings) == 3
    assert rankings.per_labeler() == {"alice": 2, "bob": 1}
    assert rankings.skipped == {"unrankable": 1}
    assert rankings[2].ranks == (0, 2, 1, 0) and rankings[2].source == f"{bob}:1"
    summary = rankings.summary()
    assert summary["rankings"] == 3 and summary["per_labeler"] == {"alice": 2, "bob": 1}
