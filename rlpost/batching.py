"""Batches for the training loop: each epoch's order of examples, and right-padded tensors.

The order is a pure function of (seed, epoch), so a run resumed from a checkpoint sees exactly
the batches the interrupted run would have seen.
"""

from __future__ import annotations

import random

import torch


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (ids, mask) pairs into [B, T] tensors; padding has mask 0.

    No attention mask is needed: with causal attention, right padding never influences the
    real tokens before it."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, mask) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        loss_mask[i, : len(mask)] = torch.tensor(mask)
    return input_ids, loss_mask


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, window: int = 8) -> list[list[int]]:
    """Example indices of every batch of one epoch; a pure function of (seed, epoch).

    The examples are shuffled, sorted by length within windows of `window` batches (so a
    batch holds examples of similar length and right padding stays small), and the batches
    are shuffled again so short and long ones alternate. The last partial batch is dropped."""
    rng = random.Random(f"{seed}/{epoch}")
    per_epoch = max(1, len(lengths) // batch_size)
    order = rng.sample(range(len(lengths)), len(lengths))[: per_epoch * batch_size]
    span = batch_size * window
    for start in range(0, len(order), span):
        order[start : start + span] = sorted(order[start : start + span], key=lengths.__getitem__)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches
