"""The ranking page's HTTP server: a person orders K sampled responses per prompt, best to worst.

`recipes/label.py` samples the candidates and starts this server:

    python recipes/label.py --config recipes/configs/label_tiny.yaml --labeler alice

The candidates (`rlpost/rlhf/candidates.py`) are K responses per prompt, kept in one JSONL
file. `LabelServer` serves `label_page.html` and a JSON API over them:

    GET  /api/next        the next prompt nobody ranked yet: one card per distinct response
                          ({"label", "text", "count"}), shuffled per view, labelled A, B, ...
    POST /api/submit      {"view", "ranks": [rank per displayed card, 1 = best, equal = tie], "note"?}
    POST /api/skip        {"view"}: nothing is written; the prompt comes back after the others
    POST /api/unrankable  {"view", "note"?}: written as an "unrankable": true line

A small policy often samples one text several times. Responses equal after stripping surrounding
whitespace are shown once, as one card whose `count` says how many of the K samples it stands
for; the written `order` still covers all K responses, the copies of a card tied at its place.
A prompt whose K responses are all one text has nothing to rank: when the server starts, it
appends an "unrankable": true line for it with the note IDENTICAL_NOTE, and never shows it.

Every ranking is one line of the rankings JSONL (rlpost/rlhf/rankings.py), appended at once. Prompts
already in that file, ranked or unrankable, are never shown again, so stopping and starting
again resumes where it stopped; a second answer for a prompt gets HTTP 409 and is not written.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import random
import secrets
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from rlpost.config import ConfigError
from rlpost.rlhf.candidates import read_candidates
from rlpost.rlhf.rankings import append_ranking

PAGE = Path(__file__).with_name("label_page.html")
TOKEN_HEADER = "X-Label-Token"
MAX_BODY = 1 << 20
IDENTICAL_NOTE = "all responses identical: nothing to rank, skipped without being shown"


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token: the page writes to a file."""
    if token:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"token: required when host is not a loopback address (host {host!r})")


def _key(prompt, responses) -> str:
    return json.dumps([prompt, responses], sort_keys=True, ensure_ascii=False)


def distinct_responses(responses: list[str]) -> list[list[int]]:
    """The response indices grouped by text without surrounding whitespace, one group per card,
    in order of first appearance: ["4", "5", " 4"] → [[0, 2], [1]]."""
    groups: dict[str, list[int]] = {}
    for index, response in enumerate(responses):
        groups.setdefault(response.strip(), []).append(index)
    return list(groups.values())


class Rejected(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class LabelServer:
    """The page and its JSON API over one candidates file and one rankings file.

    `serve_forever()` blocks (run it in a thread in tests); `shutdown()` stops it and `close()`
    frees the port. `port=0` takes any free port: read `.port` / `.url` afterwards."""

    def __init__(self, candidates_path, out_path, labeler: str, host="127.0.0.1", port=0, token: str | None = None):
        check_exposure(host, token)
        self.candidates = read_candidates(candidates_path)
        self.keys = [_key(c["prompt"], c["responses"]) for c in self.candidates]
        self.cards = [distinct_responses(c["responses"]) for c in self.candidates]
        self.out_path = Path(out_path)
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self.labeler, self.token = labeler, token or None
        self.queue = list(range(len(self.candidates)))  # skipping moves a prompt to the back
        # view id → (candidate, the response indices of each card in the shown order)
        self.views: OrderedDict[str, tuple[int, list[list[int]]]] = OrderedDict()
        self.done: set[str] = set()  # keys of the prompts in the rankings file
        self.unrankable: set[str] = set()  # those of them marked unrankable
        self._seen_stat = None
        self.lock = threading.Lock()
        self.rng = random.Random(secrets.randbits(64))
        self._refresh_done()
        self._record_identical()
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}/" + (
            f"?token={self.token}" if self.token else ""
        )

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        self.httpd.shutdown()

    def close(self) -> None:
        self.httpd.server_close()

    def _refresh_done(self) -> None:
        """Re-read the rankings file when it changed: another process may append to it too."""
        try:
            stat = self.out_path.stat()
        except FileNotFoundError:
            return
        if (stat.st_size, stat.st_mtime_ns) == self._seen_stat:
            return
        done, unrankable = set(), set()
        with open(self.out_path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:  # a line cut short by a crash: the rankings readers report it
                    continue
                if isinstance(r, dict):
                    done.add(_key(r.get("prompt"), r.get("responses")))
                    if r.get("unrankable") is True:
                        unrankable.add(_key(r.get("prompt"), r.get("responses")))
        self.done, self.unrankable, self._seen_stat = done, unrankable, (stat.st_size, stat.st_mtime_ns)

    def _is_done(self, index: int) -> bool:
        return self.keys[index] in self.done

    def _record_identical(self) -> None:
        """An unrankable line for each unanswered prompt whose responses are all one text."""
        for index, cards in enumerate(self.cards):
            if len(cards) == 1 and not self._is_done(index):
                c = self.candidates[index]
                append_ranking(
                    self.out_path,
                    {
                        "prompt": c["prompt"],
                        "responses": c["responses"],
                        "unrankable": True,
                        "labeler": self.labeler,
                        "note": IDENTICAL_NOTE,
                    },
                )
                self.done.add(self.keys[index])  # a candidate listed twice is recorded once
        self._refresh_done()

    def progress(self) -> dict:
        done = sum(key in self.done for key in self.keys)
        return {"done": done, "total": len(self.keys), "unrankable": sum(key in self.unrankable for key in self.keys)}

    def next_view(self) -> dict:
        with self.lock:
            self._refresh_done()
            progress = self.progress()
            index = next((i for i in self.queue if not self._is_done(i)), None)
            if index is None:
                return {"done": True, "progress": progress, "out": self.out_path.name}
            shown = list(self.cards[index])
            self.rng.shuffle(shown)  # a fresh order per view: no response keeps the first place
            view = secrets.token_hex(8)
            self.views[view] = (index, shown)
            while len(self.views) > 10_000:
                self.views.popitem(last=False)
        c = self.candidates[index]
        return {
            "done": False,
            "view": view,
            "prompt": c["prompt"],
            "responses": [
                {"label": _label(pos), "text": c["responses"][card[0]], "count": len(card)}
                for pos, card in enumerate(shown)
            ],
            "progress": {**progress, "position": progress["done"] + 1},
            "labeler": self.labeler,
        }

    def answer(self, action: str, body: dict) -> dict:
        """Apply 'submit', 'skip' or 'unrankable' to the prompt of `body["view"]`."""
        with self.lock:
            if body.get("view") not in self.views:
                raise Rejected(
                    HTTPStatus.CONFLICT, "this page is out of date (the server restarted); load the next prompt"
                )
            index, shown = self.views[body["view"]]
            self._refresh_done()
            if self._is_done(index):
                raise Rejected(HTTPStatus.CONFLICT, "this prompt was already answered (in another tab?)")
            c = self.candidates[index]
            record = {"prompt": c["prompt"], "responses": c["responses"]}
            if action == "skip":
                self.queue.remove(index)
                self.queue.append(index)
                return {"ok": True}
            if action == "submit":
                record["order"] = _order(body.get("ranks"), shown)
            else:
                record["unrankable"] = True
            record["labeler"] = self.labeler
            note = body.get("note")
            if isinstance(note, str) and note.strip():
                record["note"] = note.strip()
            try:
                append_ranking(self.out_path, record)
            except ValueError as error:
                raise Rejected(HTTPStatus.BAD_REQUEST, str(error)) from None
            self._refresh_done()
            return {"ok": True, "progress": self.progress()}


def _label(position: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[position] if position < 26 else f"R{position + 1}"


def _order(ranks, shown: list[list[int]]) -> list:
    """Ranks per displayed card (1 = best, equal = tie) → the record's `order` over the original
    response indices: best first, tied indices as a sorted list. The copies a card stands for
    are tied at its place."""
    if (
        not isinstance(ranks, list)
        or len(ranks) != len(shown)
        or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks)
    ):
        raise Rejected(HTTPStatus.BAD_REQUEST, f"'ranks' must be {len(shown)} integers >= 1, one per card")
    tiers: dict[int, list[int]] = {}
    for position, rank in enumerate(ranks):
        tiers.setdefault(rank, []).extend(shown[position])
    return [sorted(t) if len(t) > 1 else t[0] for _, t in sorted(tiers.items())]


def _handler(server: LabelServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # one line per request would drown the terminal
            pass

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")  # the page address may hold the token
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: HTTPStatus, payload: dict) -> None:
            self._send(status, json.dumps(payload, ensure_ascii=False).encode(), "application/json; charset=utf-8")

        def _authorized(self) -> bool:
            if server.token is None:
                return True
            given = self.headers.get(TOKEN_HEADER) or parse_qs(urlsplit(self.path).query).get("token", [""])[0]
            if hmac.compare_digest(given.encode(), server.token.encode()):
                return True
            self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong token: open the page address with ?token="})
            return False

        def do_GET(self):
            if not self._authorized():
                return
            route = urlsplit(self.path).path
            if route in ("/", "/index.html"):
                self._send(HTTPStatus.OK, PAGE.read_bytes(), "text/html; charset=utf-8")
            elif route == "/api/next":
                self._json(HTTPStatus.OK, server.next_view())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page {route}"})

        def do_POST(self):
            if not self._authorized():
                return
            action = urlsplit(self.path).path.removeprefix("/api/")
            if action not in ("submit", "skip", "unrankable"):
                return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such action {self.path}"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "request too large"})
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError
            except ValueError:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": "expected a JSON object"})
            try:
                self._json(HTTPStatus.OK, server.answer(action, body))
            except Rejected as rejected:
                self._json(rejected.status, {"error": str(rejected)})

    return Handler
