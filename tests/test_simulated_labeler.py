"""The simulated arithmetic grader: its keys by hand, each known exploit against honest work on
real problems, and its scalar score in the same order as its ranking."""

import itertools

import pytest

from rlpost.rlhf.simulated_labeler import (
    LABELER,
    NAME,
    degeneracy,
    hidden_preference_reward,
    hidden_score,
    hidden_win_rate,
    is_echo,
    label,
    longest_repeat,
    preference_key,
    problem_numbers,
    rank_responses,
    states_unit,
    step_counts,
    unit_words,
)
from rlpost.tasks import STEP, make_problems

PROMPT = (
    "Emily buys 3 apples and 2 oranges. Each apple costs $4 and each orange costs $5. "
    "How much does Emily spend in total?"
)
ANSWER = "22"
STEPS = "The apples cost 3 * 4 = 12. The oranges cost 2 * 5 = 10. The total is 12 + 10 = 22."
FALSE_STEP = "The apples cost 3 * 4 = 13. The oranges cost 2 * 5 = 10. The total is 12 + 10 = 22."
AGES = "Noah is 7 years old. Mia is 3 years older than Noah. Leo is twice as old as Mia. How old is Leo?"
RESPONSES = [
    f"{STEPS} The answer is $22.",  # 0: correct, worked, sound, unit
    f"{STEPS} The answer is 22.",  # 1: correct, worked, no unit
    f"{FALSE_STEP} The answer is $22.",  # 2: correct, worked, 2 bad steps (13 is false, then 12 comes from nowhere)
    "The answer is $21.",  # 3: wrong, bare
    "The answer is 22.",  # 4: correct, bare, no unit
    "the answer is 22.",  # 5: same keys as 4
]


def test_labeler_is_named_simulated():
    assert NAME == "arithmetic_grader"
    assert LABELER == "simulated:arithmetic_grader"


def test_preference_keys_by_hand():
    long = len(RESPONSES[0])
    assert preference_key(PROMPT, RESPONSES[0], ANSWER) == (0, 0, 0, 0, 0, long)
    assert preference_key(PROMPT, RESPONSES[1], ANSWER) == (0, 0, 0, 0, 1, long - 1)
    assert preference_key(PROMPT, RESPONSES[2], ANSWER) == (0, 0, 0, 2, 0, long)
    assert preference_key(PROMPT, RESPONSES[3], ANSWER) == (1, 0, 1, 0, 0, 18)
    assert preference_key(PROMPT, RESPONSES[4], ANSWER) == (0, 0, 1, 0, 1, 17)


def test_rank_responses_is_lexicographic_with_ties():
    # correct first; among correct: work with no bad step, then a unit; the bare ones tie last
    assert rank_responses(PROMPT, RESPONSES, ANSWER) == [0, 1, 2, 4, 3, 3]


@pytest.mark.parametrize(
    ("better", "worse"),
    [
        # (a) a correct bare answer beats a wrong worked one
        ("The answer is 22.", f"{STEPS[:-3]}23. The answer is 23."),
        # (b) sound beats degenerate, though longer
        ("The answer is 23.", "23 23 23 23"),
        # (c) work shown beats none, though longer
        ("2 * 5 = 10. The answer is 23.", "The answer is 23."),
        # (d) fewer bad steps, same length
        ("3 * 4 = 12. 2 * 5 = 10. The answer is 23.", "3 * 4 = 12. 2 * 5 = 11. The answer is 23."),
        # (e) a unit, though longer
        ("The answer is 22 dollars.", "The answer is 22."),
        # (f) shorter
        ("The answer is 22.", "Adding up: the answer is 22."),
    ],
)
def test_each_key_decides_when_the_earlier_ones_are_equal(better, worse):
    assert rank_responses(PROMPT, [worse, better], ANSWER) == [1, 0]


def test_problem_numbers_include_number_words():
    assert problem_numbers(PROMPT) == {3, 2, 4, 5}
    assert problem_numbers(AGES) == {7, 3, 2}  # "twice"
    assert problem_numbers("Three times as many, and 12 more.") == {3, 12}


@pytest.mark.parametrize(
    ("prompt", "response", "counts"),
    [
        (PROMPT, STEPS, (3, 0)),
        (PROMPT, FALSE_STEP, (1, 2)),  # 3 * 4 = 13 false; 12 is neither given nor derived
        (PROMPT, "3 * 4 = 13. 2 * 5 = 10. 13 + 10 = 23.", (2, 1)),  # a slip carried forward is work
        (PROMPT, "7 + 8 = 15. 15 - 3 = 12.", (0, 2)),  # true, but from numbers the problem never gave
        (PROMPT, "4 / 2 = 2. 5 / 2 = 2. 4 - 2 = 3.", (1, 2)),
        (AGES, "Mia is 7 + 3 = 10. Leo is 2 * 10 = 20.", (2, 0)),
        (PROMPT, "No steps here, just 22.", (0, 0)),
    ],
)
def test_step_counts(prompt, response, counts):
    assert step_counts(prompt, response) == counts


@pytest.mark.parametrize(
    ("response", "why"),
    [
        ("", "empty"),
        ("  \n ", "empty"),
        ("the the the the", "repetition"),
        ("The the the THE.", "repetition"),
        ("so a b a b a b a b", "repetition"),
        ("The total is 12 + 10 = 22. " * 4, "repetition"),
        (PROMPT, "echo"),
        (f"{PROMPT}\n{PROMPT}", "echo"),
        ("How much does Emily spend in total?", "echo"),
        ("The books cost 2..5.", "malformed number"),
        ("The total is 3.4.5 dollars.", "malformed number"),
        ("very very good. The answer is 22.", None),
        ("1 + 1 + 1 = 3. The answer is 22.", None),
        ("The answer is 2.5.", None),
        (f"{PROMPT} The answer is 22.", None),  # the question restated, then answered
        (STEPS, None),
    ],
)
def test_degeneracy(response, why):
    assert degeneracy(PROMPT, response) == why


def test_longest_repeat():
    assert longest_repeat("the the the the") == 4
    assert longest_repeat("a b a b a b") == 3
    assert longest_repeat("no repeat here") == 1
    assert longest_repeat("") == 0


def test_an_echo_is_never_correct():
    # the containers problem's last number can equal its answer: 3 * 2 - 3 = 3
    prompt = "Omar has 3 boxes with 2 marbles in each. Omar loses 3 marbles. How many marbles does Omar have now?"
    assert is_echo(prompt, prompt)
    assert preference_key(prompt, prompt, "3")[:2] == (1, 1)
    assert preference_key(prompt, "The answer is 3.", "3")[0] == 0


def test_degenerate_but_correct_ranks_between_sound_correct_and_wrong():
    run_on = "The answer is 22. the the the the the the"
    assert preference_key(PROMPT, run_on, ANSWER)[:2] == (0, 1)
    wrong_worked = f"{STEPS[:-3]}23. The answer is 23."
    ranks = rank_responses(PROMPT, [run_on, "The answer is 22.", wrong_worked], ANSWER)
    assert ranks == [1, 0, 2]


def one_slip(problem) -> tuple[str, int]:
    """An honest worked answer with one slip: the last step's result off by one, carried into the
    final answer (every arithmetic template's last step computes the answer)."""
    last = list(STEP.finditer(problem.solution))[-1]
    assert last[4] == problem.answer
    wrong = int(problem.answer) + 1
    worked = problem.solution[: last.start(4)] + str(wrong) + problem.solution[last.end(4) :]
    return worked.replace(f"The answer is {problem.answer}.", f"The answer is {wrong}."), wrong


def exploits(problem, slip: str, wrong: int) -> dict[str, str]:
    answer_at = slip.index("The answer is")
    return {
        "bare number": str(wrong),
        "bare sentence": f"The answer is {wrong}.",
        "malformed": "The books cost 2..5.",
        "two decimal points": f"The total is 3.4.5. The answer is {wrong}.",
        "repeated word": " ".join(["the"] * 30),
        "repeated answer": " ".join([f"The answer is {wrong}."] * 6),
        "padding after": f"{slip} 1 + 1 = 2. 2 + 2 = 4.",
        "padding before": f"{slip[:answer_at]}1 + 1 = 2. 2 + 2 = 4. {slip[answer_at:]}",
        "echo": problem.prompt,
        "empty": "",
    }


def test_every_exploit_loses_to_honest_work_with_one_slip():
    for problem in make_problems("arithmetic", "eval", 40):
        slip, wrong = one_slip(problem)
        assert preference_key(problem.prompt, slip, problem.answer)[:4] == (1, 0, 0, 1)
        cheats = exploits(problem, slip, wrong)
        ranks = rank_responses(problem.prompt, [slip, *cheats.values()], problem.answer)
        for name, rank in zip(cheats, ranks[1:]):
            assert ranks[0] < rank, (name, problem.prompt)


def test_padding_from_the_problems_own_numbers_still_loses_on_length():
    prompt = "Liam has 2 boxes with 6 marbles in each. Liam loses 1 marbles. How many marbles does Liam have now?"
    slip = "Liam starts with 2 * 6 = 12. 12 - 1 = 12. The answer is 12."
    padded = f"{slip} 1 + 1 = 2. 2 + 2 = 4."  # both steps true and, here, relevant
    assert step_counts(prompt, padded) == (3, 1)
    slip_key, padded_key = preference_key(prompt, slip, "11"), preference_key(prompt, padded, "11")
    assert padded_key[:5] == slip_key[:5] and padded_key[5] > slip_key[5]


def test_a_correct_answer_beats_everything():
    for problem in make_problems("arithmetic", "eval", 40):
        slip, wrong = one_slip(problem)
        others = [slip, *exploits(problem, slip, wrong).values()]
        for correct in (problem.solution, f"The answer is {problem.answer}."):
            ranks = rank_responses(problem.prompt, [correct, *others], problem.answer)
            assert ranks[0] == 0 and 0 not in ranks[1:], (correct, problem.prompt)
        # and the worked solution beats the bare correct answer
        bare = f"The answer is {problem.answer}."
        assert rank_responses(problem.prompt, [bare, problem.solution], problem.answer) == [1, 0]


def test_unit_words_come_from_the_prompt():
    assert unit_words(PROMPT) == {"apples", "oranges", "dollar", "dollars"}
    assert unit_words(AGES) == {"years"}
    # "$3 each": a money amount is not a count, so "each" is no unit
    saving = "Ava has $10. Ava saves $3 each week for 4 weeks, then spends $5 on a gift. How much money is left?"
    assert unit_words(saving) == {"weeks", "dollar", "dollars"}


@pytest.mark.parametrize(
    ("response", "stated"),
    [
        ("The answer is $22.", True),
        ("The answer is 22 dollars.", True),
        ("The answer is 22 apples.", True),
        ("The answer is 1 apple.", True),  # singular of a unit word
        ("The answer is 22.", False),
        ("The answer is 22 kilograms.", False),  # not a unit of this problem
        ("Emily spends $22 in total.", False),  # no final answer sentence
        ("The answer is 22. She bought 5 apples.", False),  # the unit must be in the answer itself
    ],
)
def test_states_unit(response, stated):
    assert states_unit(PROMPT, response) is stated


def test_money_counts_only_when_the_problem_is_about_money():
    prompt = "Liam has 4 boxes with 5 marbles in each. Liam loses 3 marbles. How many marbles does Liam have now?"
    assert not states_unit(prompt, "The answer is $17.")
    assert not states_unit(prompt, "The answer is 17 dollars.")
    assert states_unit(prompt, "The answer is 17 marbles.")


def test_chat_prompt_uses_the_last_user_message():
    chat = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi, I have 9 kites."},
        {"role": "assistant", "content": "Nice."},
        {"role": "user", "content": PROMPT},
    ]
    assert unit_words(chat) == unit_words(PROMPT)
    assert problem_numbers(chat) == problem_numbers(PROMPT)
    assert rank_responses(chat, RESPONSES, ANSWER) == rank_responses(PROMPT, RESPONSES, ANSWER)


def test_label_record_order_matches_ranks():
    record = label(PROMPT, RESPONSES, ANSWER)
    assert record == {
        "prompt": PROMPT,
        "responses": RESPONSES,
        "order": [0, 1, 2, [4, 5], 3],
        "labeler": "simulated:arithmetic_grader",
    }
    assert label(PROMPT, ["The answer is 5.", "The answer is 6."], ANSWER)["order"] == [[0, 1]]


def test_label_rejects_too_few_or_empty_responses():
    with pytest.raises(ValueError, match="2 non-empty"):
        label(PROMPT, ["The answer is 22."], ANSWER)
    with pytest.raises(ValueError, match="2 non-empty"):
        label(PROMPT, ["The answer is 22.", ""], ANSWER)


def test_reference_solutions_beat_their_corruptions():
    money_problems = 0
    for problem in make_problems("arithmetic", "eval", 20):
        stem = problem.solution[: -len(f"{problem.answer}.")]  # "... The answer is "
        wrong_answer = f"{stem}{int(problem.answer) + 1}."
        first_step_wrong = problem.solution.replace(" = ", " = 1", 1)
        responses = [problem.solution, wrong_answer, first_step_wrong]
        assert rank_responses(problem.prompt, responses, problem.answer) == [0, 2, 1]
        if "$" in problem.prompt:
            money_problems += 1
            with_unit = f"{stem}${problem.answer}."
            assert rank_responses(problem.prompt, [problem.solution, with_unit], problem.answer) == [1, 0]
    assert money_problems > 0


def test_hidden_score_by_hand():
    # RESPONSES[3]: wrong, sound, bare, unit, 18 characters: penalty (0 + 18/19) / 2 = 9/19
    assert hidden_score(PROMPT, RESPONSES[3], ANSWER) == pytest.approx((2 + 19 / 28) / 8)
    # RESPONSES[4]: correct, sound, bare, no unit, 17 characters: penalty (1 + 17/18) / 2 = 35/36
    assert hidden_score(PROMPT, RESPONSES[4], ANSWER) == pytest.approx((4 + 2 + 36 / 71) / 8)
    # RESPONSES[2]: correct, sound, worked, 2 bad steps, unit
    chars = len(RESPONSES[2])
    assert hidden_score(PROMPT, RESPONSES[2], ANSWER) == pytest.approx((7 + 1 / (3 + chars / (chars + 1) / 2)) / 8)
    # the empty answer: wrong, degenerate, bare, no unit, 0 characters: penalty 1/2
    assert hidden_score(PROMPT, "", ANSWER) == pytest.approx((1 / 1.5) / 8)
    assert hidden_preference_reward([PROMPT] * 2, RESPONSES[3:5], answer=[ANSWER] * 2) == pytest.approx(
        [hidden_score(PROMPT, r, ANSWER) for r in RESPONSES[3:5]]
    )


def test_hidden_score_is_in_the_ranking_order():
    problem = make_problems("arithmetic", "eval", 1)[0]
    slip, wrong = one_slip(problem)
    responses = [
        problem.solution,
        f"The answer is {problem.answer}.",
        f"The answer is {problem.answer}. the the the the the",
        slip,
        slip.replace(" = ", " = 1", 1),
        *exploits(problem, slip, wrong).values(),
    ]
    scores = [hidden_score(problem.prompt, r, problem.answer) for r in responses]
    ranks = rank_responses(problem.prompt, responses, problem.answer)
    assert all(0 < s <= 1 for s in scores)
    for i, j in itertools.permutations(range(len(responses)), 2):
        if ranks[i] < ranks[j]:
            assert scores[i] > scores[j], (responses[i], responses[j])
        elif ranks[i] == ranks[j]:
            assert scores[i] == scores[j]
    # the documented bands: correct above 0.5, wrong worked in (0.375, 0.5], degenerate wrong below 0.25
    assert scores[0] > 0.75 and 0.375 < scores[3] <= 0.5 and scores[-1] <= 0.25


def test_hidden_win_rate_counts_ties_half():
    # A beats B on prompts 0 and 1, ties on 2, loses on 3: (2 + 0.5) / 4
    a = [RESPONSES[0], RESPONSES[0], RESPONSES[4], RESPONSES[3]]
    b = [RESPONSES[1], RESPONSES[3], RESPONSES[5], RESPONSES[4]]
    result = hidden_win_rate([PROMPT] * 4, [ANSWER] * 4, a, b, resamples=200)
    assert result["mean"] == 0.625
    assert (result["wins"], result["ties"], result["losses"]) == (2, 1, 1)
    assert 0.0 <= result["ci95"][0] <= 0.625 <= result["ci95"][1] <= 1.0
    assert hidden_win_rate([PROMPT] * 3, [ANSWER] * 3, RESPONSES[:3], RESPONSES[:3])["ci95"] == [0.5, 0.5]
