"""Byte-level BPE tokenizer with chat, tool and thinking special tokens, saved as a Hugging Face
tokenizer (tokenizer.json + tokenizer_config.json with the chat template), so transformers'
`apply_chat_template` and vLLM's chat path produce the same ids as `render_conversation`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS = "<|bos|>"  # begin of text / document
EOS = "<|eos|>"  # end of text (pretraining documents)
PAD = "<|pad|>"
USER_START, USER_END = "<|user_start|>", "<|user_end|>"
ASSISTANT_START, ASSISTANT_END = "<|assistant_start|>", "<|assistant_end|>"
PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"  # model writes tool code
OUTPUT_START, OUTPUT_END = "<|output_start|>", "<|output_end|>"  # injected tool output
THINK_START, THINK_END = "<think>", "</think>"
SPECIAL_TOKENS = [
    BOS,
    EOS,
    PAD,
    USER_START,
    USER_END,
    ASSISTANT_START,
    ASSISTANT_END,
    PYTHON_START,
    PYTHON_END,
    OUTPUT_START,
    OUTPUT_END,
    THINK_START,
    THINK_END,
]

# System turns are rendered like user turns: the tiny models have no separate system role.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant_start|>{{ message['content'] }}<|assistant_end|>"
    "{% else %}"
    "<|user_start|>{{ message['content'] }}<|user_end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant_start|>{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> "PreTrainedTokenizerFast":
    """Train byte-level BPE on `texts` and save a transformers-loadable tokenizer in `out_dir`.

    Digits are split one per token (as in Llama 3 / nanochat) so arithmetic sees every digit.
    """
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=ASSISTANT_END,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[3:],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    # Generation ends at the end of the assistant turn; that is the tokenizer's eos.
    hf.save_pretrained(str(out_dir))
    return hf


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def decode_completions(tokenizer, token_ids: list[list[int]]) -> list[str]:
    """Completion texts without control tokens (turn ends, tool markers, padding) but with any
    <think> / </think> kept: rewards and reports must see a thinking block."""
    if not token_ids:  # batch_decode([]) gives [""], one text for no completion
        return []
    keep = {i for i in tokenizer.convert_tokens_to_ids([THINK_START, THINK_END]) if i is not None}
    keep = {i for i in keep if tokenizer.convert_ids_to_tokens(i) in (THINK_START, THINK_END)}
    drop = set(tokenizer.all_special_ids) - keep
    return tokenizer.batch_decode([[i for i in ids if i not in drop] for ids in token_ids])


def stop_token_ids(tokenizer) -> list[int]:
    """Ids that end a sampled assistant turn (eos and, for the tiny tokenizer, end of text)."""
    ids = {tokenizer.eos_token_id}
    for tok in (ASSISTANT_END, EOS):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)
