"""Reading datasets: JSONL (optionally gzipped) with line-exact errors, GSM8K, text corpora.

Local files are the tested path. Names that are not local files are treated as Hugging Face
dataset names and loaded with `datasets` for users who have a network.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

from rlpost.tasks import Problem


def _open_text(path: str | Path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such data file: {path}")
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record); a malformed line raises ValueError naming file and line."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")


def gsm8k_problem(question: str, answer: str) -> Problem:
    """A GSM8K record as a Problem: the worked solution keeps its steps (calculator
    annotations <<...>> removed) and ends in "The answer is N."."""
    match = _GSM8K_FINAL.search(answer.strip())
    if not match:
        raise ValueError("GSM8K answer has no '#### N' line")
    final = match.group(1).replace(",", "")
    steps = re.sub(r"<<[^>]*>>", "", answer[: match.start()]).strip()
    return Problem("gsm8k", question.strip(), f"{steps}\nThe answer is {final}.", final)


def load_gsm8k(source: str, split: str = "test") -> list[Problem]:
    """GSM8K from a local .jsonl/.jsonl.gz file or folder (`{split}.jsonl[.gz]`), else from the hub."""
    path = Path(source)
    if path.is_dir():
        candidates = [path / f"{split}.jsonl.gz", path / f"{split}.jsonl"]
        path = next((c for c in candidates if c.exists()), candidates[0])
    if path.exists():
        problems = []
        for lineno, rec in read_jsonl(path):
            if not isinstance(rec, dict) or "question" not in rec or "answer" not in rec:
                raise ValueError(f"{path}:{lineno}: expected fields 'question' and 'answer'")
            try:
                problems.append(gsm8k_problem(rec["question"], rec["answer"]))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
        return problems
    try:
        import datasets
    except ImportError:
        raise FileNotFoundError(
            f"{source} is not a local file, and the `datasets` package needed to load it "
            "from the Hugging Face hub is not installed (pip install datasets)"
        ) from None
    ds = datasets.load_dataset(source, "main", split=split)
    return [gsm8k_problem(r["question"], r["answer"]) for r in ds]


def read_text_corpus(source: str) -> list[str]:
    """Documents from a .txt file (blank-line separated paragraphs), a .jsonl file with a
    'text' field, or a Hugging Face dataset name with a 'text' column."""
    path = Path(source)
    if path.suffix in (".jsonl", ".gz") and path.exists():
        docs = []
        for lineno, rec in read_jsonl(path):
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string 'text' field")
            docs.append(rec["text"])
        return docs
    if path.exists():
        return [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    try:
        import datasets
    except ImportError:
        raise FileNotFoundError(
            f"{source} is not a local file, and `datasets` is not installed to load it from the hub"
        ) from None
    return [r["text"] for r in datasets.load_dataset(source, split="train")]
