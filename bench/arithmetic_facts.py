"""How many arithmetic results a model gets right inside a worked solution, by operation and size.

    .venv/bin/python bench/arithmetic_facts.py [MODEL ...]     (default: runs/sft_tiny/model)

For 300 held-out arithmetic problems, each model reads the chat prompt and the reference worked
solution (teacher forcing), and at every `a op b = ` its greedy next tokens must spell out the
result. This isolates the facts from everything else a sampled answer can get wrong (copying a
number, choosing the operation). Results are split by operation and by whether an operand is
above 20, and for sums and differences also by digit place. Writes
bench/results/arithmetic_facts.json.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict


def fact_accuracy(model_path: str, problems) -> dict:
    import torch

    from rlpost.chat import prompt_ids
    from rlpost.model import load_model
    from rlpost.tasks import STEP
    from rlpost.tokenizer import load_tokenizer

    tokenizer, model = load_tokenizer(model_path), load_model(model_path).eval()
    right, total = defaultdict(int), defaultdict(int)
    digit_right, digit_total = defaultdict(int), defaultdict(int)
    for problem in problems:
        # Tokenize the solution piece by piece so the result digits' positions are known; digits
        # are single tokens and the text before them ends in a space token, so the pieces
        # concatenate to the solution's own ids (checked below).
        prompt = prompt_ids(tokenizer, problem.prompt)
        ids, results, pos = list(prompt), [], 0
        for m in STEP.finditer(problem.solution):
            ids += tokenizer(problem.solution[pos : m.start(4)], add_special_tokens=False)["input_ids"]
            digits = tokenizer(m.group(4), add_special_tokens=False)["input_ids"]
            size = "large" if max(int(m.group(1)), int(m.group(3))) > 20 else "small"
            results.append((len(ids), digits, f"{m.group(2)} {size}"))
            ids += digits
            pos = m.end(4)
        solution = tokenizer(problem.solution, add_special_tokens=False)["input_ids"]
        assert ids[len(prompt) :] == solution[: len(ids) - len(prompt)], problem.solution
        with torch.no_grad():
            predicted = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        for start, digits, kind in results:
            guess = predicted[start - 1 : start - 1 + len(digits)]
            total[kind] += 1
            right[kind] += guess == digits
            if kind[0] in "+-":  # each digit given the right ones before it, by place (units last)
                for place, (g, d) in zip(("units", "tens", "hundreds"), zip(guess[::-1], digits[::-1])):
                    digit_total[f"{kind[0]} {place}"] += 1
                    digit_right[f"{kind[0]} {place}"] += g == d
    by_kind = {k: round(right[k] / total[k], 3) for k in sorted(total)}
    by_place = {k: round(digit_right[k] / digit_total[k], 3) for k in sorted(digit_total)}
    return {
        "all": round(sum(right.values()) / sum(total.values()), 3),
        **by_kind,
        "count": dict(sorted(total.items())),
        "digits of sums and differences": by_place,
    }


def main() -> None:
    import torch

    from rlpost.metrics import write_bench_result
    from rlpost.tasks import make_problems

    torch.set_num_threads(2)
    models = sys.argv[1:] or ["runs/sft_tiny/model"]
    problems = make_problems("arithmetic", "eval", 300)
    start = time.time()
    metrics = {path: fact_accuracy(path, problems) for path in models}
    for path, acc in metrics.items():
        print(path, acc)
    write_bench_result(
        "arithmetic_facts",
        metrics,
        time.time() - start,
        command=".venv/bin/python bench/arithmetic_facts.py " + " ".join(models),
    )


if __name__ == "__main__":
    main()
