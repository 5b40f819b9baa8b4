"""Tokenizer round trips, chat-template ids, the SFT loss mask, and length-bucketed SFT batches."""

import pytest

from rlpost.chat import prompt_ids, read_conversations, render_conversation
from rlpost.tokenizer import (
    ASSISTANT_END,
    ASSISTANT_START,
    OUTPUT_END,
    OUTPUT_START,
    PYTHON_END,
    PYTHON_START,
    SPECIAL_TOKENS,
    decode_completions,
    load_tokenizer,
    stop_token_ids,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from rlpost.corpus import synthetic_corpus

    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(synthetic_corpus(2000), 512, out)
    return load_tokenizer(out)


@pytest.mark.parametrize(
    "text",
    [
        "Emily buys 3 apples and 2 oranges. The total cost is $13.",
        "strawberry: s,t,r,a,w,b,e,r,r,y",
        "Is 9.11 bigger than 9.9?",
        "ünïcödé ✓ 日本語 tabs\tand\nnewlines",
        "  leading spaces",
    ],
)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_special_tokens_are_single_ids(tokenizer):
    for tok in SPECIAL_TOKENS:
        ids = tokenizer.encode(tok, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == tok


def test_digits_are_split(tokenizer):
    assert tokenizer.tokenize("12345") == ["1", "2", "3", "4", "5"]


def test_chat_template_matches_render(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How many r in strawberry?"},
        {
            "role": "assistant",
            "content": f"Check: {PYTHON_START}'strawberry'.count('r'){PYTHON_END}"
            f"{OUTPUT_START}3{OUTPUT_END} The answer is 3.",
        },
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome."},
    ]
    ids, mask = render_conversation(tokenizer, messages)
    template = tokenizer.apply_chat_template(messages, tokenize=True)
    template = list(template["input_ids"] if not isinstance(template, list) else template)
    assert ids == template
    assert len(mask) == len(ids)


def test_loss_mask_covers_exactly_assistant_tokens(tokenizer):
    messages = [
        {"role": "user", "content": "Spell cat."},
        {"role": "assistant", "content": f"c,a,t {PYTHON_START}x{PYTHON_END}{OUTPUT_START}out put{OUTPUT_END} done"},
    ]
    ids, mask = render_conversation(tokenizer, messages)
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    untrained = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    # The assistant's own words, its tool call and the end-of-turn token are trained on...
    assert trained == f"c,a,t {PYTHON_START}x{PYTHON_END} done{ASSISTANT_END}"
    # ...the prompt, the turn opening and the injected tool output are not.
    assert "Spell cat." in untrained and ASSISTANT_START in untrained
    assert f"{OUTPUT_START}out put{OUTPUT_END}" in untrained


def test_prompt_ids_end_with_assistant_start_and_stop_ids(tokenizer):
    ids = prompt_ids(tokenizer, "hi")
    assert tokenizer.convert_ids_to_tokens(ids[-1]) == ASSISTANT_START
    assert tokenizer.convert_tokens_to_ids(ASSISTANT_END) in stop_token_ids(tokenizer)


def test_bad_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "conv.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [\n')
    with pytest.raises(ValueError, match=r"conv.jsonl:2: invalid JSON"):
        read_conversations(str(path))
    path.write_text('{"messages": [{"role": "robot", "content": "hi"}]}\n')
    with pytest.raises(ValueError, match=r"conv.jsonl:1: message 0"):
        read_conversations(str(path))


def test_epoch_batches_cover_each_example_once_with_little_padding():
    import random

    from rlpost.trainer import epoch_batches

    rng = random.Random(0)
    lengths = [rng.choice([20, 40, 60, 200]) + rng.randint(0, 9) for _ in range(1000)]
    batches = epoch_batches(lengths, 32, seed=0, epoch=3)
    assert batches == epoch_batches(lengths, 32, seed=0, epoch=3)  # a pure function: resume repeats it
    assert batches != epoch_batches(lengths, 32, seed=0, epoch=4)
    flat = [i for b in batches for i in b]
    assert len(batches) == 31 and all(len(b) == 32 for b in batches) and len(set(flat)) == len(flat) == 992

    def padding(bs):
        return 1 - sum(lengths[i] for b in bs for i in b) / sum(32 * max(lengths[i] for i in b) for b in bs)

    unbucketed = epoch_batches(lengths, 32, seed=0, epoch=3, window=1)
    assert padding(unbucketed) > 0.5 and padding(batches) < 0.15
    # Batch lengths are mixed over the epoch, not sorted short to long.
    widths = [max(lengths[i] for i in b) for b in batches]
    assert widths != sorted(widths)


def test_completions_decode_without_control_tokens_but_with_thinking(tokenizer):
    text = "<think>3 + 4 = 7</think>The answer is 7."
    ids = tokenizer.encode(f"{PYTHON_START}print(1){PYTHON_END}{text}{ASSISTANT_END}", add_special_tokens=False)
    assert decode_completions(tokenizer, [ids]) == ["print(1)" + text]
    assert decode_completions(tokenizer, []) == []  # no completion, no text (batch_decode says [""])
