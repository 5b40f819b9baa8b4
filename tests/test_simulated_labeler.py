"""The simulated arithmetic labeler on hand-built responses, one per key of its hidden preference."""

import pytest

from rlpost.rlhf.simulated_labeler import (
    LABELER,
    NAME,
    false_steps,
    hidden_preference_reward,
    hidden_score,
    hidden_win_rate,
    label,
    preference_key,
    rank_responses,
    states_unit,
    unit_words,
)
from rlpost.tasks import make_problems

PROMPT = (
    "Emily buys 3 apples and 2 oranges. Each apple costs $4 and each orange costs $5. "
    "How much does Emily spend in total?"
)
ANSWER = "22"
STEPS = "The apples cost 3 * 4 = 12. The oranges cost 2 * 5 = 10. The total is 12 + 10 = 22."
FALSE_STEP = "The apples cost 3 * 4 = 13. The oranges cost 2 * 5 = 10. The total is 12 + 10 = 22."
RESPONSES = [
    f"{STEPS} The answer is $22.",  # 0: correct, sound, unit
    f"{STEPS} The answer is 22.",  # 1: correct, sound, no unit, long
    f"{FALSE_STEP} The answer is $22.",  # 2: correct, one false step, unit
    "The answer is $21.",  # 3: wrong, though short, sound and with a unit
    "The answer is 22.",  # 4: correct, sound, no unit, short
    "the answer is 22.",  # 5: same keys as 4
]


def test_labeler_is_named_simulated():
    assert NAME == "arithmetic_preference"
    assert LABELER == "simulated:arithmetic_preference"


def test_preference_keys_by_hand():
    long = len(RESPONSES[0])
    assert preference_key(PROMPT, RESPONSES[0], ANSWER) == (0, 0, 0, long)
    assert preference_key(PROMPT, RESPONSES[1], ANSWER) == (0, 0, 1, long - 1)
    assert preference_key(PROMPT, RESPONSES[2], ANSWER) == (0, 1, 0, long)
    assert preference_key(PROMPT, RESPONSES[3], ANSWER) == (1, 0, 0, 18)
    assert preference_key(PROMPT, RESPONSES[4], ANSWER) == (0, 0, 1, 17)


def test_rank_responses_is_lexicographic_with_ties():
    # correctness beats everything; then false steps; then a unit; then length; 4 and 5 tie
    assert rank_responses(PROMPT, RESPONSES, ANSWER) == [0, 2, 3, 4, 1, 1]


@pytest.mark.parametrize(
    ("better", "worse"),
    [
        ("The answer is 22.", "The answer is 23."),  # (a) correct first, even when longer
        ("12 + 10 = 22. The answer is 22.", "12 + 10 = 23. The answer is 22."),  # (b)
        ("The answer is 22 dollars.", "The answer is 22."),  # (c), though longer
        ("The answer is 22.", "Adding up: the answer is 22."),  # (d)
    ],
)
def test_each_key_decides_when_the_earlier_ones_are_equal(better, worse):
    assert rank_responses(PROMPT, [worse, better], ANSWER) == [1, 0]


def test_false_steps():
    text = "3 * 4 = 12. 12 + 10 = 23. 10 / 2 = 5. 7 / 2 = 3. 5 / 0 = 0. 9 - 4 = 5. 10 - 3 = 6."
    assert false_steps(text) == 4  # 23, 7 / 2, 5 / 0, 6
    assert false_steps("No steps here, just 22.") == 0


def test_unit_words_come_from_the_prompt():
    assert unit_words(PROMPT) == {"apples", "oranges", "dollar", "dollars"}
    ages = "Noah is 7 years old. Mia is 3 years older than Noah. Leo is twice as old as Mia. How old is Leo?"
    assert unit_words(ages) == {"years"}
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
        {"role": "user", "content": "Hi, I have 3 kites."},
        {"role": "assistant", "content": "Nice."},
        {"role": "user", "content": PROMPT},
    ]
    assert unit_words(chat) == unit_words(PROMPT)
    assert rank_responses(chat, RESPONSES, ANSWER) == rank_responses(PROMPT, RESPONSES, ANSWER)


def test_label_record_order_matches_ranks():
    record = label(PROMPT, RESPONSES, ANSWER)
    assert record == {
        "prompt": PROMPT,
        "responses": RESPONSES,
        "order": [0, [4, 5], 1, 2, 3],
        "labeler": "simulated:arithmetic_preference",
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


def test_hidden_score_by_hand_and_in_the_preference_order():
    # RESPONSES[0]: correct, sound, unit, over 100 characters -> 1 + 0.1 - 0.0005 * 100
    assert hidden_score(PROMPT, RESPONSES[0], ANSWER) == pytest.approx(1.05)
    # RESPONSES[3]: wrong, sound, unit, 18 characters -> 0.1 - 0.009
    assert hidden_score(PROMPT, RESPONSES[3], ANSWER) == pytest.approx(0.091)
    scores = [hidden_score(PROMPT, r, ANSWER) for r in RESPONSES]
    ranks = rank_responses(PROMPT, RESPONSES, ANSWER)
    for i in range(len(RESPONSES)):
        for j in range(len(RESPONSES)):
            if ranks[i] < ranks[j]:
                assert scores[i] > scores[j], (i, j)
    assert hidden_preference_reward([PROMPT] * 2, RESPONSES[:2], answer=[ANSWER] * 2) == pytest.approx(scores[:2])


def test_hidden_win_rate_counts_ties_half():
    # A beats B on prompts 0 and 1, ties on 2, loses on 3: (2 + 0.5) / 4
    a = [RESPONSES[0], RESPONSES[0], RESPONSES[4], RESPONSES[3]]
    b = [RESPONSES[1], RESPONSES[3], RESPONSES[5], RESPONSES[4]]
    result = hidden_win_rate([PROMPT] * 4, [ANSWER] * 4, a, b, resamples=200)
    assert result["mean"] == 0.625
    assert (result["wins"], result["ties"], result["losses"]) == (2, 1, 1)
    assert 0.0 <= result["ci95"][0] <= 0.625 <= result["ci95"][1] <= 1.0
    assert hidden_win_rate([PROMPT] * 3, [ANSWER] * 3, RESPONSES[:3], RESPONSES[:3])["ci95"] == [0.5, 0.5]
