"""Direct preference optimisation: losses that train a policy straight from preferences, without a
reward model, as pure torch functions of sequence log-probabilities.

Every log-prob here is one number per response: the sum over its tokens of log p(token | prompt,
earlier tokens), under the policy being trained (π) or under the frozen reference model (r,
usually the SFT model the policy starts from). u = π - r is the policy's implicit reward, up to
the factor β and a per-prompt constant (Rafailov et al. 2023).

    dpo_sigmoid_loss, ipo_loss      per (chosen, rejected) pair; DPO_LOSSES names them by loss.type
    ranking_dpo_loss                a K-way ranking as all its untied pairs
    plackett_luce_dpo_loss          a K-way ranking as one listwise likelihood
    dpo_metrics                     the metrics TRL logs, under TRL's names

The pair losses return one loss per pair (the shape of their inputs); averaging is the caller's
job. The ranking losses return a scalar for one ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rlpost.algorithms.ranking_loss import untied_pairs


def _log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected) -> torch.Tensor:
    """h = (π_c - r_c) - (π_r - r_r), checking that the four tensors have one shape."""
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)}
    if len(shapes) != 1:
        raise ValueError(f"policy and reference log-probs of chosen and rejected need one shape, got {sorted(shapes)}")
    return (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)


def dpo_sigmoid_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """-log sigmoid(β·h) per pair, h = (π_c - r_c) - (π_r - r_r).

    Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model", Eq. 7: the Bradley–Terry likelihood of the preference with the implicit reward
    β·(π - r) in place of a reward model's score. β sets how far the policy may move from the
    reference: smaller β, weaker pull back to it.
    """
    h = _log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return -F.logsigmoid(beta * h)


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """(h - 1/(2β))² per pair, h = (π_c - r_c) - (π_r - r_r).

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences" (IPO), Eq. 17, with β in the role of the paper's τ. DPO's loss keeps falling as h
    grows, so on deterministic preferences it drives h to infinity and away from the reference;
    IPO regresses h onto the finite target 1/(2β) instead. TRL feeds this loss the mean log-prob
    per completion token (each sequence log-prob divided by its completion length) rather than
    the sum; pass those to train as TRL does.
    """
    h = _log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    return (h - 1 / (2 * beta)) ** 2


DPO_LOSSES = {
    "sigmoid": dpo_sigmoid_loss,
    "ipo": ipo_loss,
}


def _check_ranking(policy_logps: torch.Tensor, reference_logps: torch.Tensor, k: int) -> None:
    if policy_logps.dim() != 1 or policy_logps.numel() < 2:
        raise ValueError(f"log-probs must be 1-D with at least 2 responses, got shape {tuple(policy_logps.shape)}")
    if reference_logps.shape != policy_logps.shape:
        raise ValueError(f"policy log-probs {tuple(policy_logps.shape)} but reference {tuple(reference_logps.shape)}")
    if k != policy_logps.numel():
        raise ValueError(f"{policy_logps.numel()} log-probs but a ranking of {k}")


def ranking_dpo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    ranks: Sequence[int],
    *,
    beta: float,
    loss_type: str = "sigmoid",
) -> torch.Tensor:
    """The mean pair loss `DPO_LOSSES[loss_type]` over every untied pair (better, worse) of one
    ranking of K responses, ties skipped.

    `ranks` holds one tier per response, 0 = best (as in `rlpost.algorithms.ranking_loss`). A
    ranking turned into its K(K-1)/2 comparisons, as InstructGPT does for reward models (Ouyang
    et al. 2022), trains every comparison a person made from one forward pass per response. A
    ranking with no untied pair gives 0, still connected to `policy_logps`.
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss {loss_type!r}; valid losses: {', '.join(DPO_LOSSES)}")
    _check_ranking(policy_logps, reference_logps, len(ranks))
    better, worse = untied_pairs(ranks, policy_logps.device)
    if better.numel() == 0:
        return policy_logps.sum() * 0.0
    losses = DPO_LOSSES[loss_type](
        policy_logps[better], policy_logps[worse], reference_logps[better], reference_logps[worse], beta=beta
    )
    return losses.mean()


def plackett_luce_dpo_loss(
    policy_logps: torch.Tensor, reference_logps: torch.Tensor, order: Sequence[int], *, beta: float
) -> torch.Tensor:
    """-Σ_k log( exp(β·u_σk) / Σ_{j≥k} exp(β·u_σj) ), u = π - r, σ = `order`.

    Rafailov et al. 2023, Appendix A.3 ("Deriving the DPO Objective Under the Plackett-Luce
    Model"): the negative log-likelihood of the whole ranking, read as successive choices of the
    best of the responses left, with the implicit reward β·u as the choice score. `order` is a
    strict order, best first (a permutation of 0..K-1); for a ranking with ties draw one with
    `rlpost.algorithms.ranking_loss.tie_broken_order`. With K = 2 this is `dpo_sigmoid_loss`.
    Summed over the stages as the paper writes it (the last stage has probability 1).
    """
    _check_ranking(policy_logps, reference_logps, len(order))
    if sorted(order) != list(range(len(order))):
        raise ValueError(f"order must list each of 0..{len(order) - 1} once, got {list(order)}")
    index = torch.as_tensor(list(order), device=policy_logps.device)
    scores = beta * (policy_logps - reference_logps)[index]
    # log of the denominator at stage k: logsumexp over the suffix σ_k..σ_K
    suffix_logsumexp = torch.logcumsumexp(scores.flip(0), dim=0).flip(0)
    return -(scores - suffix_logsumexp).sum()


@torch.no_grad()
def dpo_metrics(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
) -> dict[str, float]:
    """Means over the pairs, under the names TRL's DPOTrainer logs: the implicit rewards
    β·(π - r) of the chosen and rejected responses, how often the chosen one's is higher, their
    difference, and the policy's log-probs of both."""
    h = _log_ratio_difference(policy_chosen, policy_rejected, reference_chosen, reference_rejected).float()
    chosen = beta * (policy_chosen - reference_chosen).float()
    rejected = beta * (policy_rejected - reference_rejected).float()
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
        "rewards/margins": (beta * h).mean().item(),  # = chosen - rejected
        "logps/chosen": policy_chosen.float().mean().item(),
        "logps/rejected": policy_rejected.float().mean().item(),
    }
