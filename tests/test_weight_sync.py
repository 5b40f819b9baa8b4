"""The weight-sync wire format as pure functions: the engines' dtype, the specs (tied weights sent
once), the bucket plan, and a broadcast packed and unpacked through an in-memory group."""

from __future__ import annotations

import pytest
import torch

from rlpost.distributed.weight_sync import (
    WeightGroup,
    broadcast_weights,
    engine_dtype,
    plan_buckets,
    receive_broadcast,
    weight_specs,
)
from rlpost.model import random_llama


def tiny_llama(tie: bool):
    return random_llama(vocab_size=64, tie_word_embeddings=tie)


def test_engine_dtype_falls_back_to_float32_without_bf16_arithmetic():
    assert engine_dtype("bfloat16", bf16_native=True) == "bfloat16"
    assert engine_dtype("bfloat16", bf16_native=False) == "float32"
    assert engine_dtype("float32", bf16_native=True) == "float32"


def test_specs_list_tied_weights_once_in_the_engines_dtype():
    tied = tiny_llama(tie=True).state_dict()
    specs = weight_specs(tied, torch.bfloat16)
    # The output embedding is the input embedding's memory: the engine ties them itself.
    assert [name for name, _, _ in specs] == [name for name in tied if name != "lm_head.weight"]
    assert {dt for _, _, dt in specs} == {"bfloat16"}
    assert specs[0] == ("model.embed_tokens.weight", (64, 16), "bfloat16")
    # Without a dtype each tensor keeps its own; copies of a tied weight are separate tensors.
    assert {dt for _, _, dt in weight_specs(tied)} == {"float32"}
    copies = {name: t.clone() for name, t in tied.items()}
    assert [name for name, _, _ in weight_specs(copies)] == list(tied)
    untied = tiny_llama(tie=False).state_dict()
    assert [name for name, _, _ in weight_specs(untied)] == list(untied)


def test_buckets_keep_order_align_offsets_and_respect_the_size():
    specs = [("a", (10,), "float32"), ("b", (3, 5), "bfloat16"), ("c", (100,), "float32"), ("d", (), "float32")]
    buckets = plan_buckets(specs, bucket_bytes=256)
    # a (40 B) and b (30 B) each take 64 aligned bytes; c (400 B) is over the size, alone.
    assert [[spec[0] for spec, _ in entries] for entries, _ in buckets] == [["a", "b"], ["c"], ["d"]]
    assert [[offset for _, offset in entries] for entries, _ in buckets] == [[0, 64], [0], [0]]
    assert [size for _, size in buckets] == [128, 448, 64]
    assert [spec for entries, _ in buckets for spec, _ in entries] == specs


class _Wire:
    """An in-memory stand-in for a gloo group: the sender's buffers are kept, the receiver reads
    them back in order."""

    def __init__(self):
        self.sent: list[torch.Tensor] = []
        self.read = 0

    def comm(self, sender: bool):
        wire = self

        class Comm:
            def broadcast(self, tensors, _opts):
                if sender:
                    wire.sent.append(tensors[0].clone())
                else:
                    tensors[0].copy_(wire.sent[wire.read])
                    wire.read += 1
                return type("Work", (), {"wait": lambda self: None})()

        return Comm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_broadcast_sends_each_tensor_once_cast_to_the_engines_dtype(dtype):
    weights = tiny_llama(tie=True).state_dict()
    specs = weight_specs(weights, dtype)
    wire = _Wire()
    sender = WeightGroup(0, 2, "gloo", torch.device("cpu"), wire.comm(sender=True), store=None)
    receiver = WeightGroup(1, 2, "gloo", torch.device("cpu"), wire.comm(sender=False), store=None)
    bucket_bytes = 1024  # several buckets; the embedding, larger than one, goes alone
    broadcast_weights(sender, weights, specs, bucket_bytes)
    received = {name: t.clone() for name, t in receive_broadcast(receiver, specs, bucket_bytes)}

    assert len(wire.sent) == len(plan_buckets(specs, bucket_bytes)) > 2
    assert list(received) == [name for name, _, _ in specs]
    for name, t in received.items():
        assert t.dtype == dtype
        assert torch.equal(t, weights[name].to(dtype)), name
    # Bytes on the wire: the payload in the engines' dtype, plus alignment only.
    payload = sum(weights[name].numel() * dtype.itemsize for name, _, _ in specs)
    assert payload <= sum(b.numel() for b in wire.sent) < payload + 64 * len(specs)


def test_broadcast_refuses_weights_that_do_not_match_the_specs():
    sender = WeightGroup(0, 2, "gloo", torch.device("cpu"), comm=None, store=None)
    with pytest.raises(ValueError, match="do not match"):
        broadcast_weights(sender, {"w": torch.zeros(2)}, [("w", (3,), "bfloat16")])


def test_reload_warnings_are_dropped_only_for_layers_that_are_never_sent():
    import logging

    from rlpost.distributed.engine import _ReloadWarningFilter

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("vllm", logging.WARNING, __file__, 1, msg, None, None)

    keep = _ReloadWarningFilter().filter
    assert not keep(record("RotaryEmbedding: Failed to load weights"))
    assert not keep(record("ParallelLMHead: Failed to load weights"))  # tied: sent as the embedding
    assert keep(record("QKVParallelLinear: Failed to load weights"))
    assert keep(record("ParallelLMHead: Delayed processing"))
