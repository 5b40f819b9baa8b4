"""The ranking page (recipes/label.py) in a real browser, its JSON API over HTTP, and sampling.

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

from rlpost.config import ConfigError, load_config, load_recipe
from rlpost.rlhf.candidates import candidates_path_for, sample_candidates
from rlpost.rlhf.label_server import LabelServer

LabelConfig = load_recipe("label").LabelConfig

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


def write_candidates(path: Path) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in CANDIDATES))
    return path


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
    """The cards as displayed, top to bottom: label, original response index, rank (None: unranked)."""
    cards = page.eval_on_selector_all(
        "#cards .card",
        "els => els.map(e => [e.dataset.label, e.querySelector('.text').textContent, e.dataset.rank || null,"
        " e.classList.contains('tied')])",
    )
    texts = sorted(text for _, text, _, _ in cards)
    candidate = next(c for c in CANDIDATES if sorted(c["responses"]) == texts)
    return [
        {"label": label, "index": candidate["responses"].index(text), "rank": rank and int(rank), "tied": tied}
        for label, text, rank, tied in cards
    ]


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


def test_each_view_shuffles_the_responses(tmp_path):
    with serving(write_candidates(tmp_path / "c.jsonl"), tmp_path / "rankings.jsonl") as server:
        orders = {tuple(r["text"] for r in call(server, "/api/next")[1]["responses"]) for _ in range(30)}
    # 30 views of 4 responses all in one order would happen with probability 24**-29.
    assert len(orders) > 1
    assert all(sorted(order) == sorted(CANDIDATES[0]["responses"]) for order in orders)


def test_config_refuses_an_exposed_host_without_token(tmp_path):
    with pytest.raises(ConfigError, match="^token: "):
        load_config(LabelConfig, ["--labeler", "alice", "--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="^token: "):
        LabelServer(write_candidates(tmp_path / "c.jsonl"), tmp_path / "r.jsonl", "alice", host="0.0.0.0")
    cfg = load_config(LabelConfig, ["--labeler", "alice", "--host", "0.0.0.0", "--token", "s3cret"])
    assert (cfg.host, cfg.token, cfg.k) == ("0.0.0.0", "s3cret", 5)
    assert load_config(LabelConfig, ["--labeler", "a", "--host", "localhost"]).host == "localhost"
    assert load_config(LabelConfig, ["--labeler", "a", "--prompts", "data/p.jsonl"]).prompts == "data/p.jsonl"
    assert load_config(LabelConfig, ["--labeler", "a", "--prompts", "{arithmetic: 7}"]).prompts == {"arithmetic": 7}
    with pytest.raises(ConfigError, match="^labeler: "):
        load_config(LabelConfig, [])
    with pytest.raises(ConfigError, match="^k: "):
        load_config(LabelConfig, ["--labeler", "a", "--k", "1"])
    with pytest.raises(ConfigError, match="^prompts: unknown task 'nope'"):
        load_config(LabelConfig, ["--labeler", "a", "--prompts", "{nope: 3}"])
    assert candidates_path_for("runs/x/rankings.jsonl") == Path("runs/x/rankings.candidates.jsonl")


@pytest.mark.slow
def test_sample_candidates_through_a_rollout_worker(sft_run, ray_cluster, tmp_path):
    from rlpost.distributed.engine import VLLMConfig
    from rlpost.tasks import make_problems

    problems = make_problems("arithmetic", "rl", 3)
    path = tmp_path / "rankings.candidates.jsonl"
    records = sample_candidates(
        str(sft_run / "model"),
        [{"prompt": p.prompt, "answer": p.answer} for p in problems],
        3,
        path,
        max_new_tokens=64,
        vllm=VLLMConfig(kv_cache_gib=0.25),
    )
    assert lines(path) == records
    assert [(r["id"], r["prompt"], r["answer"]) for r in records] == [
        (i, p.prompt, p.answer) for i, p in enumerate(problems)
    ]
    assert all(len(r["responses"]) == 3 and all(t.strip() for t in r["responses"]) for r in records)
    # Sampled at temperature 1, three responses to the same prompt are not all one text.
    assert any(len(set(r["responses"])) > 1 for r in records)
    # A second call reads the file back: no model is needed (this path does not exist).
    assert sample_candidates(str(tmp_path / "no_model"), ["other prompt"], 5, path) == records
