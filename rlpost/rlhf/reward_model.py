"""A reward model: a causal LM backbone with a scalar score head, and the rule that reads its score.

The folder is a plain HF folder that `AutoModelForSequenceClassification.from_pretrained(path)`
loads (`LlamaForSequenceClassification`, `num_labels=1`), plus the tokenizer and
`reward_card.json` (what it was trained on, its held-out metrics and the normalisation of its
scores).

The scoring rule, the same in training, evaluation and RL: the prompt (one user turn, or a list
of chat messages) and the response as the next assistant turn are rendered with the
backbone's own chat template; longer renderings keep their last `max_tokens` tokens (the end of
a dialogue is where the response is); the score is the head's value at the LAST token.
Batches are right-padded and need no attention mask (causal attention keeps padding out of the
real tokens), and the config's `pad_token_id` is a token the template never ends with, so
transformers' own pooling (the last non-pad token) reads the same position.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from rlpost.chat import prompt_messages, template_ids

CARD = "reward_card.json"
SCORE_RULE = (
    "the score head's value at the last token of prompt + response rendered as a chat with the "
    "reward model's own template (longer renderings keep their last max_tokens tokens)"
)


def render(tokenizer, prompt: str | list[dict], response: str, max_tokens: int) -> list[int]:
    """Token ids the score is read from (see the module docstring)."""
    messages = [*prompt_messages(prompt), {"role": "assistant", "content": response}]
    return template_ids(tokenizer, messages)[-max_tokens:]


def reward_model_from_lm(path: str | Path, tokenizer):
    """A sequence-classification model (new scalar head) on the backbone of the causal LM or
    reward model at `path`, with a pad id that transformers' pooling can rely on."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = pad_id(tokenizer)
    return model


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, or another id if a rendered turn ends with it: transformers reads a
    sequence-classification score at the rightmost token that is not the pad id."""
    last = render(tokenizer, "a", "b", 1 << 30)[-1]
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, 0):
        if candidate is not None and candidate != last:
            return candidate
    return 1


def keep_bottom_layers(model, layers: int) -> None:
    """Keep only the bottom `layers` transformer layers of the backbone (0 = all): a cheaper
    reward model from a large LM, whose middle layers already carry what a score needs."""
    backbone = model.base_model
    if 0 < layers < len(backbone.layers):
        backbone.layers = backbone.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]


def freeze_below(model, trainable_layers: int) -> int:
    """Train only the top `trainable_layers` transformer layers, the final norm and the head
    (0 = train everything). Returns the number of trainable parameters."""
    if trainable_layers > 0:
        backbone = model.base_model
        for p in model.parameters():
            p.requires_grad_(False)
        for module in [*backbone.layers[-trainable_layers:], backbone.norm, model.score]:
            for p in module.parameters():
                p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def sequence_scores(model, sequences: list[list[int]], pad: int) -> torch.Tensor:
    """Scores [B] of right-padded `sequences`, read at each one's last token."""
    lengths = torch.tensor([len(s) for s in sequences])
    input_ids = torch.full((len(sequences), int(lengths.max())), pad, dtype=torch.long)
    for i, s in enumerate(sequences):
        input_ids[i, : len(s)] = torch.tensor(s)
    device = next(model.parameters()).device
    hidden = model.base_model(input_ids=input_ids.to(device), use_cache=False).last_hidden_state
    last = hidden[torch.arange(len(sequences), device=device), lengths.to(device) - 1]
    return model.score(last).squeeze(-1).float()


@torch.no_grad()
def score_all(model, sequences: list[list[int]], pad: int, batch_size: int) -> list[float]:
    """Scores of many sequences in batches of similar length (less padding), in input order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    scores = [0.0] * len(sequences)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, value in zip(chunk, sequence_scores(model, [sequences[i] for i in chunk], pad).tolist()):
            scores[i] = value
    model.train(was_training)
    return scores


def read_card(path: str | Path) -> dict:
    card = Path(path) / CARD
    return json.loads(card.read_text()) if card.exists() else {}


class RewardScorer:
    """Scores (prompt, response) pairs with a saved reward model folder, by the module's rule."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32).to(device)
        self.card = read_card(path)
        self.max_tokens = int(self.card.get("max_tokens", self.model.config.max_position_embeddings))
        self.batch_size = batch_size
        self.pad = self.model.config.pad_token_id

    def score(self, prompts: list, responses: list[str]) -> list[float]:
        sequences = [render(self.tokenizer, p, r, self.max_tokens) for p, r in zip(prompts, responses)]
        return score_all(self.model, sequences, self.pad, self.batch_size)

    def normalized(self, scores: list[float]) -> list[float]:
        """(score - mean) / std with the card's statistics of the policy's own samples, so that a
        KL coefficient means the same against any reward model."""
        norm = self.card.get("normalization")
        if not norm:
            raise ValueError("this reward model's card has no normalization statistics")
        std = norm["std"] if norm["std"] > 0 and math.isfinite(norm["std"]) else 1.0
        return [(s - norm["mean"]) / std for s in scores]
