"""The ranking page (recipes/label.py) in a real browser, and its JSON API over HTTP.

The browser is Debian's chromium driven by Playwright; the page shuffles the responses per view,
so every expected `order` is computed from the order the DOM showed (response text → original
index in the candidates file). RLPOST_LABEL_SCREENSHOT=docs/label_page.png saves a screenshot
of the page mid-ranking (the README shows it).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from rlpost.rlhf.label_server import IDENTICAL_NOTE, LabelServer
from rlpost.rlhf.rankings import read_rankings

CANDIDATES = [
    {
        "id": 0,
        "prompt": "Emily has 4 boxes with 6 apples in each box. She gives away 5 apples. How many apples are left?",
        "responses": [
            "4 boxes with 6 apples is 4 * 6 = 24 apples. After giving away 5: 24 - 5 = 19. The answer is 19.",
            "The answer is 19.",
            "4 + 6 = 10 apples, 10 - 5 = 5. The answer is 5.",
            "4 * 6 = 24. 24 - 5 = 19. The answer is 19.",
        ],
        "answer": "19",
    },
    {
        "id": 1,
        "prompt": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Name a prime number between 10 and 20."},
        ],
        "responses": ["11", "15", "Thirteen", "twelve"],
    },
    {
        "id": 2,
        "prompt": "How many letters 'l' are in 'parallel'?",
        "responses": ["3", "The answer is 3.", "There are 2.", "parallel has"],
        "answer": "3",
    },
]


# A tiny policy samples one text several times: "4" three times (once with whitespace around it),
# and all five responses to the second prompt are one text.
DUPLICATES = [
    {"id": 0, "prompt": "What is 2 + 2?", "responses": ["4", "The answer is 4.", " 4\n", "5", "4"]},
    {"id": 1, "prompt": "What is 3 + 3?", "responses": ["6", "6 ", "6", "\n6", "6"]},
]


def write_candidates(path: Path, candidates: list[dict] = CANDIDATES) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in candidates))
    return path


# The line the server writes by itself for DUPLICATES[1], whose responses are all "6".
IDENTICAL_LINE = {
    "prompt": "What is 3 + 3?",
    "responses": ["6", "6 ", "6", "\n6", "6"],
    "unrankable": True,
    "labeler": "alice",
    "note": IDENTICAL_NOTE,
}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@contextmanager
def serving(candidates: Path, out: Path, token: str | None = None):
    server = LabelServer(candidates, out, "alice", port=0, token=token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.close()
        thread.join(timeout=10)


def call(server, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{server.port}{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 900, "height": 1000})
    yield context.new_page()
    context.close()


def shown(page) -> list[dict]:
    """The cards as displayed, top to bottom: label, the original indices of the responses the
    card stands for (`index`: the first), rank (None: unranked), tie mark and ×count badge."""
    cards = page.eval_on_selector_all(
        "#cards .card",
        "els => els.map(e => [e.dataset.label, e.querySelector('.text').textContent, e.dataset.rank || null,"
        " e.classList.contains('tied'), e.querySelector('.copies')?.textContent || null])",
    )
    texts = sorted(text.strip() for _, text, _, _, _ in cards)
    candidate = next(c for c in CANDIDATES + DUPLICATES if sorted({r.strip() for r in c["responses"]}) == texts)
    result = []
    for label, text, rank, tied, copies in cards:
        indices = [i for i, r in enumerate(candidate["responses"]) if r.strip() == text.strip()]
        rank = rank and int(rank)
        result.append(
            {"label": label, "index": indices[0], "indices": indices, "rank": rank, "tied": tied, "copies": copies}
        )
    return result


def card(page, label: str):
    return page.locator(f'#cards .card[data-label="{label}"]')


def rank_by_drag_and_keys(page) -> list[dict]:
    """On the first prompt: drag cards, tie two with a digit key, drag again. Returns the cards
    as first shown, d0..d3; the page ends ranked d0 = d2 (best), then d1, then d3."""
    from playwright.sync_api import expect

    first = shown(page)
    assert [c["label"] for c in first] == ["A", "B", "C", "D"]
    assert [c["rank"] for c in first] == [None] * 4
    expect(page.locator("#submit")).to_be_disabled()

    # Drag the bottom card onto the top one: the list order becomes a strict ranking.
    d0, d1, d2, d3 = first
    card(page, d3["label"]).drag_to(card(page, d0["label"]))
    after_drag = shown(page)
    assert [c["label"] for c in after_drag] == [d3["label"], d0["label"], d1["label"], d2["label"]]
    assert [c["rank"] for c in after_drag] == [1, 2, 3, 4]

    # Select the last card and press 2: it ties with the card ranked 2 and moves up beside it.
    card(page, d2["label"]).click()
    page.keyboard.press("2")
    ranked = shown(page)
    assert [(c["label"], c["rank"], c["tied"]) for c in ranked] == [
        (d3["label"], 1, False),
        (d0["label"], 2, True),
        (d2["label"], 2, True),
        (d1["label"], 3, False),
    ]
    # Drag the top card down onto the bottom one: it takes the last place; the tie stays a tie.
    card(page, d3["label"]).drag_to(card(page, d1["label"]))
    assert [(c["label"], c["rank"]) for c in shown(page)] == [
        (d0["label"], 1),
        (d2["label"], 1),
        (d1["label"], 2),
        (d3["label"], 3),
    ]
    return first


def test_rank_by_drag_and_keys_skip_unrankable_then_resume(page, tmp_path):
    from playwright.sync_api import expect

    candidates, out = write_candidates(tmp_path / "c.jsonl"), tmp_path / "rankings.jsonl"
    with serving(candidates, out) as server:
        page.goto(server.url)
        expect(page.locator("#progress")).to_have_text("1 of 3")
        expect(page.locator("#prompt")).to_have_text(CANDIDATES[0]["prompt"])
        d0, d1, d2, d3 = rank_by_drag_and_keys(page)
        expect(page.locator("#submit")).to_be_enabled()
        page.fill("#note", "tie between two right answers")
        page.press("#note", "Control+Enter")
        expect(page.locator("#progress")).to_have_text("2 of 3")

        [record] = lines(out)
        assert record == {
            "prompt": CANDIDATES[0]["prompt"],
            "responses": CANDIDATES[0]["responses"],
            "order": [sorted([d0["index"], d2["index"]]), d1["index"], d3["index"]],
            "labeler": "alice",
            "note": "tie between two right answers",
        }

        # The chat prompt is shown message by message; skip it with the S key.
        expect(page.locator("#prompt .msg .role")).to_have_text(["system", "user"])
        expect(page.locator("#prompt .msg .text")).to_have_text([m["content"] for m in CANDIDATES[1]["prompt"]])
        page.keyboard.press("s")
        expect(page.locator("#prompt")).to_have_text(CANDIDATES[2]["prompt"])
        page.fill("#note", "the last response is cut off")
        page.click("#unrankable")
        # Only the skipped prompt is left, and it comes back.
        expect(page.locator("#prompt .msg .role")).to_have_text(["system", "user"])
        expect(page.locator("#progress")).to_have_text("3 of 3")
        assert lines(out)[1:] == [
            {
                "prompt": CANDIDATES[2]["prompt"],
                "responses": CANDIDATES[2]["responses"],
                "unrankable": True,
                "labeler": "alice",
                "note": "the last response is cut off",
            }
        ]

    # A new server on the same files shows only the skipped prompt, then says everything is ranked.
    with serving(candidates, out) as server:
        page.goto(server.url)
        expect(page.locator("#progress")).to_have_text("3 of 3")
        expect(page.locator("#prompt .msg .role")).to_have_text(["system", "user"])
        e0, e1, e2, e3 = shown(page)
        # Digits card after card: the selection moves on to the next unranked card each time.
        for key in "2113":
            page.keyboard.press(key)
        assert [(c["label"], c["rank"]) for c in shown(page)] == [
            (e1["label"], 1),
            (e2["label"], 1),
            (e0["label"], 2),
            (e3["label"], 3),
        ]
        page.keyboard.press("Enter")
        expect(page.locator("#finished")).to_be_visible()
        expect(page.locator("#finished")).to_contain_text("Everything is ranked: all 3 prompts are answered")
        expect(page.locator("#finished")).to_contain_text("1 marked unrankable")
        assert call(server, "/api/next")[1]["done"] is True

    records = lines(out)
    assert len(records) == 3
    assert [json.dumps(r["prompt"]) for r in records] == [json.dumps(CANDIDATES[i]["prompt"]) for i in (0, 2, 1)]
    assert records[2] == {
        "prompt": CANDIDATES[1]["prompt"],
        "responses": CANDIDATES[1]["responses"],
        "order": [sorted([e1["index"], e2["index"]]), e0["index"], e3["index"]],
        "labeler": "alice",
    }

    # Duplicated responses: "4" three times is one card marked ×3, the all-"6" prompt is never shown.
    duplicates, out = write_candidates(tmp_path / "dup.jsonl", DUPLICATES), tmp_path / "dup_rankings.jsonl"
    with serving(duplicates, out) as server:
        page.goto(server.url)
        expect(page.locator("#progress")).to_have_text("2 of 2")
        expect(page.locator("#prompt")).to_have_text("What is 2 + 2?")
        f0, f1, f2 = cards = shown(page)
        assert sorted((c["indices"], c["copies"]) for c in cards) == [([0, 2, 4], "×3"), ([1], None), ([3], None)]
        # Keys 2, 1, 1 rank the cards as shown: the second and the third tie for best.
        for key in "211":
            page.keyboard.press(key)
        assert [(c["label"], c["rank"]) for c in shown(page)] == [(f1["label"], 1), (f2["label"], 1), (f0["label"], 2)]
        page.keyboard.press("Enter")
        expect(page.locator("#finished")).to_contain_text("all 2 prompts are answered (1 marked unrankable)")

    # The copies of a card share its place: all five responses are in the order.
    ranked = {"prompt": "What is 2 + 2?", "responses": DUPLICATES[0]["responses"], "labeler": "alice"}
    order = [sorted(f1["indices"] + f2["indices"]), f0["indices"] if f0["copies"] else f0["index"]]
    assert lines(out) == [IDENTICAL_LINE, {**ranked, "order": order}]


def test_token_is_required_and_the_page_passes_it(page, tmp_path):
    from playwright.sync_api import expect

    out = tmp_path / "rankings.jsonl"
    with serving(write_candidates(tmp_path / "c.jsonl"), out, token="s3cret") as server:
        assert call(server, "/")[0] == 403
        assert call(server, "/api/next")[0] == 403
        assert call(server, "/api/next?token=wrong")[0] == 403
        assert call(server, "/api/next", headers={"X-Label-Token": "wrong"})[0] == 403
        assert call(server, "/api/skip", {"view": "x"})[0] == 403
        assert call(server, "/api/next", headers={"X-Label-Token": "s3cret"})[0] == 200

        assert server.url.endswith("/?token=s3cret")
        page.goto(server.url)
        expect(page.locator("#progress")).to_have_text("1 of 3")
        # Worked answers tie for best, the bare answer is next, the wrong one last.
        label_of = {c["index"]: c["label"] for c in shown(page)}
        for index, rank in enumerate((1, 2, 3, 1)):
            card(page, label_of[index]).click()
            page.keyboard.press(str(rank))
        assert [c["rank"] for c in shown(page)] == [1, 1, 2, 3]
        if os.environ.get("RLPOST_LABEL_SCREENSHOT"):
            page.fill("#note", "both worked answers are right; the bare answer gives no working")
            page.set_viewport_size({"width": 900, "height": 600})
            Path(os.environ["RLPOST_LABEL_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=os.environ["RLPOST_LABEL_SCREENSHOT"], full_page=True)
        page.click("#submit")
        expect(page.locator("#progress")).to_have_text("2 of 3")
    assert [r["order"] for r in lines(out)] == [[[0, 3], 1, 2]]


def test_second_answer_for_a_prompt_is_409_and_not_written(tmp_path):
    out = tmp_path / "rankings.jsonl"
    with serving(write_candidates(tmp_path / "c.jsonl"), out) as server:
        views = [call(server, "/api/next")[1] for _ in range(8)]  # eight tabs on the same prompt
        assert {v["prompt"] for v in views} == {CANDIDATES[0]["prompt"]}
        first, second = views[0]["view"], views[1]["view"]
        assert call(server, "/api/submit", {"view": first, "ranks": [2, 1, 3, 4]})[0] == 200
        status, body = call(server, "/api/submit", {"view": second, "ranks": [1, 2, 3, 4]})
        assert status == 409 and "already answered" in body["error"]
        assert call(server, "/api/unrankable", {"view": second})[0] == 409
        assert call(server, "/api/skip", {"view": second})[0] == 409

        # The other six tabs answer at the same moment: all refused, nothing written.
        results = []
        threads = [
            threading.Thread(
                target=lambda v=v: results.append(
                    call(server, "/api/submit", {"view": v["view"], "ranks": [1, 1, 1, 1]})[0]
                )
            )
            for v in views[2:]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [409] * 6

        shown_first = [CANDIDATES[0]["responses"].index(r["text"]) for r in views[0]["responses"]]
        assert [r["label"] for r in views[0]["responses"]] == ["A", "B", "C", "D"]
        assert lines(out) == [
            {
                "prompt": CANDIDATES[0]["prompt"],
                "responses": CANDIDATES[0]["responses"],
                "order": [shown_first[1], shown_first[0], shown_first[2], shown_first[3]],
                "labeler": "alice",
            }
        ]

        # Racing answers to a fresh prompt: exactly one is written.
        views = [call(server, "/api/next")[1]["view"] for _ in range(6)]
        results = []
        threads = [
            threading.Thread(target=lambda v=v: results.append(call(server, "/api/unrankable", {"view": v})[0]))
            for v in views
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [200] + [409] * 5
        assert len(lines(out)) == 2

        # Malformed ranks are refused and nothing is written.
        view = call(server, "/api/next")[1]["view"]
        for ranks in ([1, 2, 3], [0, 1, 2, 3], [1, 2, "3", 4], None):
            assert call(server, "/api/submit", {"view": view, "ranks": ranks})[0] == 400
        assert len(lines(out)) == 2

    # A view from before a restart is refused too.
    with serving(tmp_path / "c.jsonl", out) as server:
        assert call(server, "/api/submit", {"view": view, "ranks": [1, 2, 3, 4]})[0] == 409
        assert call(server, "/api/next")[1]["progress"] == {"done": 2, "total": 3, "unrankable": 1, "position": 3}


def test_identical_responses_are_one_card_and_tied_in_the_order(tmp_path):
    candidates, out = write_candidates(tmp_path / "c.jsonl", DUPLICATES), tmp_path / "rankings.jsonl"
    with serving(candidates, out) as server:
        # Starting wrote the all-"6" prompt as unrankable: only the other one is left.
        assert lines(out) == [IDENTICAL_LINE]
        view = call(server, "/api/next")[1]
        assert view["progress"] == {"done": 1, "total": 2, "unrankable": 1, "position": 2}
        assert {r["text"]: r["count"] for r in view["responses"]} == {"4": 3, "The answer is 4.": 1, "5": 1}
        assert [r["label"] for r in view["responses"]] == ["A", "B", "C"]

        # One rank per card, not per response; "4" best, the worked answer next, "5" last.
        assert call(server, "/api/submit", {"view": view["view"], "ranks": [1, 2, 3, 4, 5]})[0] == 400
        rank_of = {"4": 1, "The answer is 4.": 2, "5": 3}
        ranks = [rank_of[r["text"]] for r in view["responses"]]
        assert call(server, "/api/submit", {"view": view["view"], "ranks": ranks})[0] == 200
        assert call(server, "/api/next")[1]["done"] is True

    ranked = {"prompt": "What is 2 + 2?", "responses": DUPLICATES[0]["responses"], "labeler": "alice"}
    assert lines(out) == [IDENTICAL_LINE, {**ranked, "order": [[0, 2, 4], 1, 3]}]
    rankings = read_rankings(out)
    assert [r.ranks for r in rankings] == [(0, 1, 0, 2, 0)]
    assert rankings.skipped == {"unrankable": 1}

    # A restart does not record the all-"6" prompt again.
    with serving(candidates, out) as server:
        assert call(server, "/api/next")[1]["done"] is True
    assert len(lines(out)) == 2


def test_each_view_shuffles_the_responses(tmp_path):
    with serving(write_candidates(tmp_path / "c.jsonl"), tmp_path / "rankings.jsonl") as server:
        orders = {tuple(r["text"] for r in call(server, "/api/next")[1]["responses"]) for _ in range(30)}
    # 30 views of 4 responses all in one order would happen with probability 24**-29.
    assert len(orders) > 1
    assert all(sorted(order) == sorted(CANDIDATES[0]["responses"]) for order in orders)
