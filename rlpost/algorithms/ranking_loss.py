"""Losses that train a scalar reward model from one ranking of K responses to a prompt.

Every loss takes the model's scores for the K responses (a 1-D tensor) and the ranking as
`ranks`: one tier per response, 0 = best; response i beats response j iff ranks[i] < ranks[j],
equal ranks are ties. Each returns a scalar tensor for that one ranking; averaging over the
rankings of a batch is the caller's job.

A ranking in which every response is tied says nothing about the responses: every loss here is
0 for it, as a zero that is still connected to `scores` (so `backward()` on a batch made only of
such rankings works and gives a zero gradient).

`RANKING_LOSSES` names the losses a trainer may pick, all with the same signature
`fn(scores, ranks, *, margin, generator, centering=0.0) -> Tensor[]`; `centering` > 0 adds
`centering_penalty` over the ranking's untied pairs (for best_worst, over its one pair).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _check(scores: torch.Tensor, ranks: Sequence[int]) -> None:
    if scores.dim() != 1 or scores.numel() < 2:
        raise ValueError(f"scores must be 1-D with at least 2 responses, got shape {tuple(scores.shape)}")
    if len(ranks) != scores.numel():
        raise ValueError(f"{scores.numel()} scores but {len(ranks)} ranks")


def _no_preference(scores: torch.Tensor) -> torch.Tensor:
    # Zero, yet part of the graph: a batch of all-tied rankings can still be backpropagated.
    return scores.sum() * 0.0


def untied_pairs(ranks: Sequence[int], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair (better, worse) of the ranking with better ranked above worse, ties skipped:
    two index tensors, pairs in row-major order (by better index, then worse index)."""
    tiers = torch.as_tensor(list(ranks), device=device)
    better, worse = torch.nonzero(tiers.unsqueeze(1) < tiers.unsqueeze(0), as_tuple=True)
    return better, worse


def all_pairs_loss(scores: torch.Tensor, ranks: Sequence[int], margin: float = 0.0) -> torch.Tensor:
    """Mean Bradley–Terry loss over every untied pair of the ranking.

    Ouyang et al. 2022, "Training language models to follow instructions with human feedback"
    (InstructGPT): a ranking of K responses gives up to K(K-1)/2 comparisons, all trained from the
    same forward pass, each with
        -log sigmoid(s_i - s_j - margin)        for i ranked above j,
    averaged over the pairs. The margin (Touvron et al. 2023, "Llama 2") asks the better response
    to win by at least `margin`. Tied pairs are skipped; a ranking with no untied pair gives 0.
    """
    _check(scores, ranks)
    better, worse = untied_pairs(ranks, scores.device)
    if better.numel() == 0:
        return _no_preference(scores)
    return -F.logsigmoid(scores[better] - scores[worse] - margin).mean()


def tie_broken_order(ranks: Sequence[int], generator: random.Random) -> list[int]:
    """Response indices best → worst, each tier shuffled by `generator` (a uniform tie order)."""
    tiers: dict[int, list[int]] = {}
    for index, tier in enumerate(ranks):
        tiers.setdefault(tier, []).append(index)
    order = []
    for tier in sorted(tiers):
        members = tiers[tier]
        generator.shuffle(members)
        order.extend(members)
    return order


def plackett_luce_loss(scores: torch.Tensor, ranks: Sequence[int], generator: random.Random) -> torch.Tensor:
    """Negative log-likelihood of the whole ranking under the Plackett–Luce model, per choice stage.

    Plackett 1975, "The Analysis of Permutations"; Luce 1959; for reward models Zhu, Jordan and
    Jiao 2023, "Principled Reinforcement Learning with Human Feedback from Pairwise or K-wise
    Comparisons". The ranking π (best first) is read as K-1 successive choices of the best of
    the responses left:
        P(π) = prod_{t=1}^{K-1} exp(s_{π_t}) / sum_{u>=t} exp(s_{π_u})
        loss = -log P(π) / (K-1) = mean_t -(s_{π_t} - logsumexp(s_{π_t..π_K})).
    Ties are broken by a uniformly random order within each tier, drawn from `generator` on
    every call, so over epochs a tie is trained as the average of its consistent strict orders.
    With K = 2 and no tie this is all_pairs_loss with margin 0. All tied: 0.
    """
    _check(scores, ranks)
    if len(set(ranks)) == 1:
        return _no_preference(scores)
    order = torch.as_tensor(tie_broken_order(ranks, generator), device=scores.device)
    ordered = scores[order]
    # logsumexp over each suffix π_t..π_K, computed as a cumulative logsumexp from the end.
    suffix_logsumexp = torch.logcumsumexp(ordered.flip(0), dim=0).flip(0)
    # The last stage (one response left) has probability 1 and is not a choice.
    return -(ordered - suffix_logsumexp)[:-1].mean()


def best_worst_ranks(ranks: Sequence[int]) -> tuple[int, int]:
    """The one pair a ranking is reduced to: (first response of the best tier, last of the worst).

    The "one pair per prompt" baseline: it keeps what a preference-pair dataset would record and
    trains all_pairs_loss on that pair only.
    """
    best, worst = min(ranks), max(ranks)
    i_best = list(ranks).index(best)
    j_worst = len(ranks) - 1 - list(reversed(ranks)).index(worst)
    return i_best, j_worst


def centering_penalty(scores: torch.Tensor, ranks: Sequence[int], coef: float) -> torch.Tensor:
    """coef * mean over the ranking's untied pairs of (s_better + s_worse)**2: keeps rewards near 0.

    Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate but do not
    Eliminate Reward Hacking", and TRL's `center_rewards_coefficient`: pairwise losses only see
    score differences, so the reward's offset is free to drift; this auxiliary loss pins it (and
    makes rewards of separately trained models comparable). Its gradient on a pair is along
    (1, 1), orthogonal to s_better - s_worse, so for one pair it leaves the difference the
    ranking loss learns untouched, where a penalty on mean(s**2) would shrink it too. A ranking
    with no untied pair gives 0 (still connected to `scores`).
    """
    _check(scores, ranks)
    better, worse = untied_pairs(ranks, scores.device)
    if better.numel() == 0:
        return _no_preference(scores)
    return coef * (scores[better] + scores[worse]).pow(2).mean()


def _with_centering(loss: torch.Tensor, scores, ranks, centering: float) -> torch.Tensor:
    return loss + centering_penalty(scores, ranks, centering) if centering else loss


def _all_pairs(scores, ranks, *, margin, generator, centering=0.0):
    del generator  # deterministic: every untied pair is used
    return _with_centering(all_pairs_loss(scores, ranks, margin=margin), scores, ranks, centering)


def _plackett_luce(scores, ranks, *, margin, generator, centering=0.0):
    del margin  # a choice model has no margin
    return _with_centering(plackett_luce_loss(scores, ranks, generator), scores, ranks, centering)


def _best_worst(scores, ranks, *, margin, generator, centering=0.0):
    del generator  # the reduced pair is fixed by the ranking
    i_best, j_worst = best_worst_ranks(ranks)
    # the baseline sees one pair only, its centring included
    pair_scores, pair_ranks = scores[[i_best, j_worst]], [ranks[i_best], ranks[j_worst]]
    return _with_centering(all_pairs_loss(pair_scores, pair_ranks, margin=margin), pair_scores, pair_ranks, centering)


RANKING_LOSSES = {
    "all_pairs": _all_pairs,
    "plackett_luce": _plackett_luce,
    "best_worst": _best_worst,
}
