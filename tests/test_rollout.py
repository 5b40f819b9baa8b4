"""RolloutWorker against transformers on the same tiny random Llama, through Ray actors.

What is checked: vLLM greedy ids equal transformers greedy ids; the returned logprobs are those
of the sampled tokens; after a weight sync (a dict through the object store, buckets put into
the object store by this process as the learner would, and gloo broadcast from this process as
rank 0) vLLM's greedy output equals transformers' on the new weights and differs from before.

The engines run in Ray actors so this test process never imports vLLM (in-process vLLM would
patch torch and create a torch.distributed world here, under other tests' feet).
"""

import pytest
import torch

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
pytest.importorskip("vllm")

from rlpost.cache import cache_env  # noqa: E402
from rlpost.distributed.cluster import make_actor  # noqa: E402
from rlpost.distributed.engine import rollout_env  # noqa: E402
from rlpost.distributed.rollout import RolloutWorker  # noqa: E402
from rlpost.distributed.weight_sync import (  # noqa: E402
    broadcast_weights,
    create_weight_group,
    fetch_buckets,
    free_port,
    plan_buckets,
    put_buckets,
    weight_specs,
)
from rlpost.model import random_llama  # noqa: E402

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "one two three four five six seven eight nine ten",
    "policy gradients push up the logprob of good samples",
    "weights move from the learner to the rollout engine",
    "Answer: 42. The sum of 17 and 25 is 42.",
]
PROMPTS = [[5, 17, 33, 8], [100, 3, 3, 250, 7, 9, 61], [42], [7, 7, 7, 7, 8, 120], [64, 65, 66]]
NEW_TOKENS = 24
EOS_ID = 1


def build_tiny_model(out_dir: str, tie: bool, seed: int = 0) -> str:
    """A random LlamaForCausalLM (+ byte-level BPE tokenizer) saved as a plain HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<bos>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    hf_tok.save_pretrained(out_dir)

    # Wider init than the default 0.02 so the random model's next-token distributions are
    # peaked: near-ties would make greedy comparisons hinge on the last float bit.
    model = random_llama(len(hf_tok), 256, layers=4, heads=4, seed=seed, intermediate_size=672,
                         max_position_embeddings=512, tie_word_embeddings=tie, bos_token_id=0,
                         eos_token_id=EOS_ID, pad_token_id=2, initializer_range=0.1)  # fmt: skip
    model.save_pretrained(out_dir)
    return out_dir


def load_hf(path: str):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def hf_greedy(model, prompts=PROMPTS, max_new_tokens=NEW_TOKENS):
    from transformers import GenerationConfig

    cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=EOS_ID, pad_token_id=2)
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        outs.append(out[0, len(p) :].tolist())
    return outs


@torch.no_grad()
def hf_token_logprobs(model, prompt, generated, temperature=1.0):
    """log p(generated[i] | prompt + generated[:i]) under the HF model."""
    ids = torch.tensor([prompt + generated])
    logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(generated)[:, None])[:, 0]


def vllm_greedy(worker, prompts=PROMPTS, max_new_tokens=NEW_TOKENS):
    out = ray.get(worker.generate.remote(prompts, n=1, max_new_tokens=max_new_tokens, temperature=0.0))
    return [group[0].token_ids for group in out]


def perturb(model, seed: int):
    """Two SGD steps of language modelling on random tokens: a real, nontrivial update."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    model.train()
    for _ in range(2):
        batch = torch.randint(3, model.config.vocab_size, (8, 32), generator=g)
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def state_dict_for_sync(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_llama")
    return {
        "tied": build_tiny_model(str(root / "tied"), tie=True),
        "untied": build_tiny_model(str(root / "untied"), tie=False, seed=1),
    }


def start_worker(model_path: str):
    actor = make_actor(RolloutWorker, num_cpus=1, env={**cache_env(), **rollout_env(kv_cache_gib=0.25)}).remote(
        model_path, dtype="float32", enforce_eager=True, max_model_len=256, kv_cache_gib=0.25
    )
    ray.get(actor.ready.remote())
    return actor


@pytest.fixture(scope="module")
def tied(ray_cluster, model_dirs):
    """(rollout actor, HF twin): every test keeps the twin's weights equal to the engine's."""
    actor = start_worker(model_dirs["tied"])
    yield actor, load_hf(model_dirs["tied"])
    ray.kill(actor)


# ------------------------------------------------------------------------------------ tests


def test_greedy_matches_transformers(tied):
    worker, policy = tied
    assert vllm_greedy(worker) == hf_greedy(policy)


def test_stop_token_ends_sample_and_is_kept(tied):
    worker, policy = tied
    full = hf_greedy(policy, PROMPTS[:1])[0]
    stop = full[5]
    cut = full[: full.index(stop) + 1]
    out = ray.get(
        worker.generate.remote(PROMPTS[:1], n=1, max_new_tokens=NEW_TOKENS, temperature=0.0, stop_token_ids=[stop])
    )
    sample = out[0][0]
    assert sample.token_ids == cut
    assert sample.finish_reason == "stop"
    assert len(sample.logprobs) == len(cut)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_match_transformers(tied, temperature):
    worker, policy = tied
    out = ray.get(worker.generate.remote(PROMPTS, n=4, max_new_tokens=16, temperature=temperature, seed=7))
    assert len(out) == len(PROMPTS) and all(len(group) == 4 for group in out)
    distinct = 0
    for prompt, group in zip(PROMPTS, out):
        distinct += len({tuple(s.token_ids) for s in group}) > 1
        for s in group:
            assert len(s.logprobs) == len(s.token_ids) > 0
            assert s.finish_reason in ("stop", "length")
            # Logprobs are those of the distribution sampled from (temperature applied).
            ref = hf_token_logprobs(policy, prompt, s.token_ids, temperature)
            torch.testing.assert_close(torch.tensor(s.logprobs), ref, atol=1e-3, rtol=0)
    assert distinct >= len(PROMPTS) - 1, "samples of one prompt should differ at temperature > 0"
    # Same seed, same samples.
    again = ray.get(worker.generate.remote(PROMPTS, n=4, max_new_tokens=16, temperature=temperature, seed=7))
    assert [[s.token_ids for s in g] for g in again] == [[s.token_ids for s in g] for g in out]


def test_weight_sync_object_store(tied):
    worker, policy = tied
    before = vllm_greedy(worker)
    perturb(policy, seed=1)
    seconds = ray.get(worker.update_weights.remote(state_dict_for_sync(policy)))
    print(f"object-store sync: {seconds * 1000:.1f} ms")
    assert seconds > 0
    after = vllm_greedy(worker)
    assert after == hf_greedy(policy)
    assert after != before


def test_weight_sync_object_store_buckets(tied):
    """The learner's object-store path: the weights put into the object store bucket by bucket
    (the tied output embedding once), the engine reading them by their refs."""
    worker, policy = tied
    before = vllm_greedy(worker)
    perturb(policy, seed=2)
    state = policy.state_dict()
    refs = put_buckets(state, plan_buckets(weight_specs(state), bucket_bytes=1 << 20))
    assert len(refs) > 2
    seconds = ray.get(worker.update_weights.remote(refs))
    print(f"object-store sync by {len(refs)} buckets: {seconds * 1000:.1f} ms")
    after = vllm_greedy(worker)
    assert after == hf_greedy(policy)
    assert after != before
    # In an engine dtype of bf16 the buckets read back as the weights cast to it.
    for name, tensor in fetch_buckets(put_buckets(state, plan_buckets(weight_specs(state, torch.bfloat16)))):
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, state[name].to(torch.bfloat16)), name


def sync_by_broadcast(worker, policy, group, dtype=None):
    state = state_dict_for_sync(policy)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    # The receiver must be waiting while rank 0 broadcasts: submit first, then send.
    ref = worker.receive_weights.remote(weight_specs(state))
    broadcast_weights(group, state)
    return ray.get(ref)


def test_weight_sync_collective_gloo(tied):
    worker, policy = tied
    port = free_port()
    ref = worker.init_weight_group.remote("127.0.0.1", port, 1, 2, "gloo")
    group = create_weight_group("127.0.0.1", port, 0, 2, backend="gloo")  # this process = learner
    ray.get(ref)
    assert not torch.distributed.is_initialized()  # the default world was left alone

    for step in range(2):  # the group is reused across steps
        before = vllm_greedy(worker)
        perturb(policy, seed=10 + step)
        seconds = sync_by_broadcast(worker, policy, group)
        print(f"gloo broadcast sync {step}: {seconds * 1000:.1f} ms")
        assert seconds > 0
        after = vllm_greedy(worker)
        assert after == hf_greedy(policy)
        assert after != before
    ray.get(worker.close_weight_group.remote())
    group.close()


def test_weight_sync_untied_lm_head(ray_cluster, model_dirs):
    """Untied models carry their own lm_head.weight; both transports must update it."""
    worker = start_worker(model_dirs["untied"])
    policy = load_hf(model_dirs["untied"])
    try:
        assert vllm_greedy(worker) == hf_greedy(policy)

        before = vllm_greedy(worker)
        perturb(policy, seed=3)
        ray.get(worker.update_weights.remote(state_dict_for_sync(policy)))
        after = vllm_greedy(worker)
        assert after == hf_greedy(policy) and after != before

        # Only the head changes: proves lm_head.weight itself reaches the engine.
        with torch.no_grad():
            policy.lm_head.weight.add_(torch.randn_like(policy.lm_head.weight) * 0.2)
        port = free_port()
        ref = worker.init_weight_group.remote("127.0.0.1", port, 1, 2, "gloo")
        group = create_weight_group("127.0.0.1", port, 0, 2)
        ray.get(ref)
        seconds = sync_by_broadcast(worker, policy, group)
        print(f"gloo broadcast sync (untied): {seconds * 1000:.1f} ms")
        head_only = vllm_greedy(worker)
        assert head_only == hf_greedy(policy) and head_only != after
        group.close()

        # And through the object store's buckets.
        with torch.no_grad():
            policy.lm_head.weight.add_(torch.randn_like(policy.lm_head.weight) * 0.2)
        state = policy.state_dict()
        ray.get(worker.update_weights.remote(put_buckets(state, plan_buckets(weight_specs(state)))))
        by_buckets = vllm_greedy(worker)
        assert by_buckets == hf_greedy(policy) and by_buckets != head_only
    finally:
        ray.kill(worker)
