"""The native rankings format: a strict reader with file:line errors, splits by prompt and safe appends."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import ROOT

from rlpost.rlhf.rankings import (
    Ranking,
    RankingError,
    append_ranking,
    parse_order,
    ranking_from_record,
    read_rankings,
    split_by_prompt,
)

GOOD = {
    "prompt": "What is 3 + 4?",
    "responses": ["3 + 4 = 7. The answer is 7.", "The answer is 8.", "7", "3 + 4 = 7. The answer is 7 apples."],
    "order": [3, [0, 2], 1],
    "labeler": "alice",
    "note": "optional free text",
}
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2 + 2?"},
]


def write_lines(path: Path, lines: list) -> Path:
    """Each item is a dict (dumped as JSON) or a raw line of text."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def assert_fails_at_line_2(reader, path: Path, lines: list, problem: str):
    write_lines(path, lines)
    with pytest.raises(RankingError) as info:
        reader(path)
    assert str(info.value).startswith(f"{path}:2: "), str(info.value)
    assert problem in str(info.value), str(info.value)


def changed(**fields) -> dict:
    record = {**GOOD, **fields}
    return {k: v for k, v in record.items() if v is not ...}


BAD_RANKINGS = [
    ("[1, 2]", "not a JSON object (got list)"),
    ('{"prompt": "x", ', "invalid JSON"),
    (changed(prompt=...), "missing key 'prompt'"),
    (changed(responses=...), "missing key 'responses'"),
    (changed(order=...), "missing key 'order'"),
    (changed(prompt=5), "prompt must be a string or a list of messages, got int"),
    (changed(prompt="  "), "prompt is empty"),
    (changed(prompt=[]), "prompt is an empty message list"),
    (changed(prompt=CHAT[:3]), "prompt messages must end with a user turn, the last is 'assistant'"),
    (changed(prompt=[CHAT[1], {"role": "bot", "content": "x"}]), "prompt message 1 needs 'role'"),
    (changed(prompt=[{"role": "user", "content": 3}]), "prompt message 0 needs 'role'"),
    (changed(responses="abc"), "responses must be a list of strings, got str"),
    (changed(responses=["only one"], order=[0]), "needs K >= 2 responses, got 1"),
    (changed(responses=["a", "b", " ", "d"]), "response 2 is empty"),
    (changed(responses=["a", 7, "c", "d"]), "response 1 is not a string (int)"),
    (changed(order=[3, [0, 2], 4]), "order: response index 4 out of range (K = 4, indices 0..3)"),
    (changed(order=[3, [0, 2], 1, 0]), "order: response index 0 repeated"),
    (changed(order=[3, [0, 2]]), "order: response index 1 missing (every index 0..3 appears once)"),
    (changed(order=[3, [0, 2], 1.5]), "order: 1.5 is not an integer response index"),
    (changed(order=[3, [0, 2], "1"]), 'order: "1" is not an integer response index'),
    (changed(order=[3, [0, 2], True]), "order: true is not an integer response index"),
    (changed(order=[3, [], [0, 2], 1]), "order item 1 is an empty tie list"),
    (changed(order={"best": 3}), "order must be a list (best → worst), got dict"),
    (changed(labeler=3), "labeler must be a string, got int"),
    (changed(note=["x"]), "note must be a string, got list"),
    (changed(unrankable="yes"), 'unrankable must be true or false, got "yes"'),
]


@pytest.mark.parametrize("line, problem", BAD_RANKINGS)
def test_bad_ranking_line_names_file_line_and_problem(tmp_path, line, problem):
    assert_fails_at_line_2(read_rankings, tmp_path / "r.jsonl", [GOOD, line], problem)


def test_ranking_fields_and_ties():
    ranking = ranking_from_record(GOOD, "f.jsonl:7")
    assert ranking.ranks == (1, 2, 1, 0)  # 3 best; 0 and 2 tied second; 1 worst
    assert (ranking.labeler, ranking.note, ranking.source) == ("alice", "optional free text", "f.jsonl:7")
    assert parse_order([[0, 1], 2], 3) == (0, 0, 1)
    assert parse_order([[2, 0, 1]], 3) == (0, 0, 0)
    assert parse_order([1, 0], 2) == (1, 0)
    assert parse_order([[1], [0]], 2) == (1, 0)


def test_to_record_round_trips():
    for record in (GOOD, changed(prompt=CHAT, labeler=..., note=...), changed(order=[[0, 1, 2, 3]])):
        ranking = ranking_from_record(record, "x:1")
        assert ranking.to_record() == record
        assert ranking_from_record(ranking.to_record(), "x:1") == ranking
    # Ranks need not be dense when built in code: tiers are still listed best → worst.
    assert Ranking("p", ("a", "b", "c"), (0, 2, 2)).to_record()["order"] == [0, [1, 2]]
    assert Ranking("p", ("a", "b", "c"), (5, 1, 3)).to_record()["order"] == [1, 2, 0]


def test_prompt_key_and_hash():
    chat = ranking_from_record(changed(prompt=CHAT), "x:1")
    assert json.loads(chat.prompt_key) == [dict(sorted(m.items())) for m in CHAT]
    assert len({chat, ranking_from_record(changed(prompt=CHAT), "x:1")}) == 1
    one_turn = ranking_from_record(changed(prompt=[{"role": "user", "content": "What is 3 + 4?"}]), "x:1")
    assert one_turn.prompt_key == ranking_from_record(GOOD, "x:1").prompt_key == "What is 3 + 4?"


def test_unrankable_lines_are_counted_not_read(tmp_path):
    unrankable = {"prompt": "Q", "responses": ["", "b"], "unrankable": True, "labeler": "bob"}
    assert ranking_from_record(unrankable, "x:1") is None
    rankings = read_rankings(write_lines(tmp_path / "r.jsonl", [GOOD, unrankable, "", GOOD]))
    assert len(rankings) == 2 and rankings.skipped == {"unrankable": 1}
    assert [r.source for r in rankings] == [f"{tmp_path / 'r.jsonl'}:1", f"{tmp_path / 'r.jsonl'}:4"]
    assert_fails_at_line_2(read_rankings, tmp_path / "u.jsonl", [GOOD, {"unrankable": True}], "missing key 'prompt'")


def two_labelers(prompts: int) -> list[Ranking]:
    rankings = []
    for i in range(prompts):
        for labeler, ranks in (("alice", (0, 1)), ("bob", (1, 0))):
            prompt = f"prompt {i}" if i % 3 else ({"role": "user", "content": f"prompt {i}"},)
            rankings.append(Ranking(prompt, ("a", "b"), ranks, labeler))
    return rankings


def test_split_by_prompt_keeps_each_prompt_on_one_side():
    rankings = two_labelers(20)
    for held_out, expected_prompts in ((5, 5), (0.25, 5), (0.33, 7), (0.0, 0), (1.0, 20), (0, 0), (20, 20)):
        train, held = split_by_prompt(rankings, held_out, seed=3)
        assert len(train) + len(held) == len(rankings)
        train_keys, held_keys = {r.prompt_key for r in train}, {r.prompt_key for r in held}
        assert not train_keys & held_keys
        assert len(held_keys) == expected_prompts and len(held) == 2 * expected_prompts
    # Same seed, same split whatever the input order; another seed, another split.
    train, held = split_by_prompt(rankings, 5, seed=3)
    assert split_by_prompt(rankings[::-1], 5, seed=3)[1] == held[::-1]
    assert {r.prompt_key for r in split_by_prompt(rankings, 5, seed=4)[1]} != {r.prompt_key for r in held}
    assert [r for r in rankings if r in train] == train  # input order kept
    for bad in (21, -1, 1.5, True, "5"):
        with pytest.raises(ValueError):
            split_by_prompt(rankings, bad, seed=0)


def big_record(writer: str, i: int) -> dict:
    # Long lines make torn or interleaved writes likely if the append were not atomic.
    return {
        "prompt": f"{writer} {i}",
        "responses": [writer * 40_000, "b" * 30_000],
        "order": [0, 1],
        "note": f"{writer}:{i}",
    }


def assert_whole_lines(path: Path, expected_notes: set[str]):
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    records = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    assert {r["note"] for r in records} == expected_notes and len(records) == len(expected_notes)
    for r in records:
        writer = r["note"].split(":")[0]
        assert r == big_record(writer, int(r["note"].split(":")[1]))
    assert len(read_rankings(path)) == len(expected_notes)


def test_append_from_many_threads(tmp_path):
    path = tmp_path / "ranked.jsonl"
    writers = [f"t{n}" for n in range(8)]

    def write_all(writer):
        for i in range(15):
            append_ranking(path, big_record(writer, i))

    threads = [threading.Thread(target=write_all, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_whole_lines(path, {f"{w}:{i}" for w in writers for i in range(15)})


APPEND_SCRIPT = """
import os, sys, time
sys.path.insert(0, "tests")
from test_rankings import big_record
from rlpost.rlhf.rankings import append_ranking
path, writer, go = sys.argv[1:]
while not os.path.exists(go):
    time.sleep(0.005)
for i in range(40):
    append_ranking(path, big_record(writer, i))
"""


def test_append_from_two_processes(tmp_path):
    path, go = tmp_path / "ranked.jsonl", tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", APPEND_SCRIPT, str(path), writer, str(go)], cwd=ROOT)
        for writer in ("p", "q")
    ]
    go.touch()  # both start writing at the same moment
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert_whole_lines(path, {f"{w}:{i}" for w in ("p", "q") for i in range(40)})


def test_append_validates_and_keeps_lines_whole(tmp_path):
    path = tmp_path / "ranked.jsonl"
    with pytest.raises(RankingError, match=r"\(record to append\): order: response index 1 repeated"):
        append_ranking(path, changed(order=[3, [0, 2], 1, 1]))
    assert not path.exists()
    assert append_ranking(path, GOOD).ranks == (1, 2, 1, 0)
    before = path.read_bytes()
    with pytest.raises(RankingError, match="labeler must be a string"):
        append_ranking(path, changed(labeler=1))
    assert path.read_bytes() == before
    assert append_ranking(path, changed(order=..., unrankable=True)) is None
    # A line cut short by a crash stays one bad line; the next append starts on a line of its own.
    with open(path, "ab") as f:
        f.write(b'{"prompt": "cut')
    append_ranking(path, GOOD)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and json.loads(lines[3]) == GOOD
    with pytest.raises(RankingError, match=rf"^{path}:3: invalid JSON"):
        read_rankings(path)
