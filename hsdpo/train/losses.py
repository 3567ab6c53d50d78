"""Losses: verifier-weighted DPO (sigmoid, its label-noise forms, hinge and IPO; + optional NLL) and
token-level SFT. Pure tensor math.

Worked example (the test asserts it). beta = 1, two pairs, weights w = (1, 3):

    pair 1: pi_c=-1, pi_r=-2, ref_c=-1, ref_r=-1  ->  h1 = (-1 - -1) - (-2 - -1) = 1
    pair 2: pi_c=-2, pi_r=-1, ref_c=-1, ref_r=-1  ->  h2 = (-2 - -1) - (-1 - -1) = -1
    -log sigma(1)  = log(1 + e^-1) = 0.313262
    -log sigma(-1) = log(1 + e^1)  = 1.313262
    loss = (1 * 0.313262 + 3 * 1.313262) / (1 + 3) = 4.253048 / 4 = 1.063262
    rewards: chosen = beta (pi_c - ref_c) = (0, -1), rejected = (-1, 0); accuracy = (1 + 0) / 2

`loss_type` and `label_smoothing` change the per-pair loss of the margin m = beta * h (the same two
pairs, m = (1, -1), weights (1, 3)):

    sigmoid, label_smoothing e = 0.1 (conservative DPO: a label is wrong with probability e):
        -(1 - e) log sigma(m) - e log sigma(-m) = -log sigma(m) + e m  ->  (0.413262, 1.213262)
        loss = (0.413262 + 3 * 1.213262) / 4 = 1.013262
    robust, e = 0.1 (Chowdhury et al. 2024, unbiased under label noise e):
        (-(1 - e) log sigma(m) + e log sigma(-m)) / (1 - 2e)  ->  (0.188262, 1.438262)
        loss = (0.188262 + 3 * 1.438262) / 4 = 1.125762
    hinge (SLiC): max(0, 1 - m)  ->  (0, 2); loss = (0 + 3 * 2) / 4 = 1.5

IPO (Azar et al. 2023) regresses h onto 1 / (2 beta) rather than pushing it up without bound, and,
as TRL's IPO does, takes h from log-probs averaged over each completion's tokens, not summed (the
rewards are then beta times those averages). The same pairs, beta = 1, the chosen completions of
(1, 2) tokens and the rejected of (2, 1):

    pair 1: means pi_c=-1, pi_r=-2/2=-1, ref_c=-1, ref_r=-1/2  ->  h1 = 0 - (-0.5) = 0.5
    pair 2: means pi_c=-2/2=-1, pi_r=-1, ref_c=-1/2, ref_r=-1  ->  h2 = -0.5 - 0 = -0.5
    (h - 1 / (2 beta))^2  ->  (0, 1); loss = (0 + 3 * 1) / 4 = 0.75

A rule-based verifier mislabels some pairs (a lucky final answer, a slip it cannot parse), which
is what the two label-noise forms are for. At m = 0 (the policy is still the reference) the sigmoid
and robust losses are ln 2 for any e, the hinge 1, IPO 1 / (4 beta^2).

`denominator` lets a data-parallel step divide by the weight sum of the *global* batch rather than
of the micro-batch, so that micro-batching and worker count leave the gradient unchanged. A zero
denominator (every pair weighs 0) divides by 1 instead: zero loss and zero gradient, not 0/0 = NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_dpo_loss(
    policy_chosen_logps: torch.Tensor,  # [B] summed completion log-probs
    policy_rejected_logps: torch.Tensor,  # [B]
    ref_chosen_logps: torch.Tensor,  # [B]
    ref_rejected_logps: torch.Tensor,  # [B]
    weights: torch.Tensor,  # [B] >= 0
    beta: float = 0.1,
    nll_coef: float = 0.0,
    chosen_nll: torch.Tensor | None = None,  # scalar: mean NLL per chosen token
    denominator: torch.Tensor | float | None = None,  # default: weights.sum()
    loss_type: str = "sigmoid",  # "sigmoid", "robust", "hinge" or "ipo" (module docstring)
    label_smoothing: float = 0.0,  # e: the assumed rate of flipped labels (sigmoid, robust)
    chosen_tokens: torch.Tensor | None = None,  # [B] completion tokens behind each sum (ipo only)
    rejected_tokens: torch.Tensor | None = None,  # [B]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`Σ w_i · −log σ(β[(π_c − ρ_c) − (π_r − ρ_r)]) / Σ w_i + nll_coef · chosen_nll` (the sigmoid
    loss; `loss_type`, `label_smoothing`, IPO's token counts: the module docstring).

    Metrics are detached tensors (no host sync): per-pair losses are averaged unweighted
    (`dpo_loss_unweighted`) and weighted (`dpo_loss`), rewards/margins/accuracy unweighted."""
    if loss_type == "ipo":  # per-token means of every log-prob sum
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("loss_type ipo needs chosen_tokens and rejected_tokens (it averages log-probs per token)")
        chosen_n = chosen_tokens.to(policy_chosen_logps.dtype).clamp_min(1)
        rejected_n = rejected_tokens.to(policy_rejected_logps.dtype).clamp_min(1)
        policy_chosen_logps, ref_chosen_logps = policy_chosen_logps / chosen_n, ref_chosen_logps / chosen_n
        policy_rejected_logps, ref_rejected_logps = policy_rejected_logps / rejected_n, ref_rejected_logps / rejected_n
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)  # [B]
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)  # [B]
    margins = chosen_rewards - rejected_rewards  # [B]
    per_pair = pair_losses(margins, loss_type, label_smoothing, beta)  # [B]
    weights = weights.to(per_pair.dtype)
    denom = weights.sum() if denominator is None else torch.as_tensor(denominator, dtype=per_pair.dtype,
                                                                      device=per_pair.device)
    denom = torch.where(denom == 0, torch.ones_like(denom), denom)  # all weights 0: a zero step, not NaN
    dpo = (weights * per_pair).sum() / denom
    loss = dpo
    if nll_coef and chosen_nll is not None:
        loss = loss + nll_coef * chosen_nll
    metrics = {
        "dpo_loss": dpo.detach(),
        "dpo_loss_unweighted": per_pair.detach().mean(),
        "rewards_chosen": chosen_rewards.detach().mean(),
        "rewards_rejected": rejected_rewards.detach().mean(),
        "margins": margins.detach().mean(),
        "accuracy": (margins.detach() > 0).to(per_pair.dtype).mean(),
    }
    return loss, metrics


def pair_losses(margins: torch.Tensor, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                beta: float = 0.1) -> torch.Tensor:
    """The per-pair loss of each margin m = β h (module docstring; `beta` is read by ipo only)."""
    e = label_smoothing
    if not 0 <= e < 0.5:
        raise ValueError(f"label_smoothing {e} must be in [0, 0.5)")
    if e and loss_type in ("hinge", "ipo"):
        raise ValueError(f"label_smoothing applies to the sigmoid and robust losses, not {loss_type}")
    if loss_type == "sigmoid":
        return -(1 - e) * F.logsigmoid(margins) - e * F.logsigmoid(-margins) if e else -F.logsigmoid(margins)
    if loss_type == "robust":
        return (-(1 - e) * F.logsigmoid(margins) + e * F.logsigmoid(-margins)) / (1 - 2 * e)
    if loss_type == "hinge":
        return F.relu(1 - margins)
    if loss_type == "ipo":  # (h - 1/(2β))² with h = m / β
        return ((margins - 0.5) / beta) ** 2
    raise ValueError(f"unknown loss_type {loss_type!r} (sigmoid, robust, hinge, ipo)")


def sft_loss(
    token_logps: torch.Tensor,  # [B] summed log-probs of the completion tokens
    num_tokens: torch.Tensor,  # [B] completion tokens per example
    denominator: torch.Tensor | float | None = None,  # default: num_tokens.sum()
) -> torch.Tensor:
    """Mean negative log-likelihood per completion token (prompt tokens never count). A batch without a
    completion token (a zero denominator) divides by 1: zero loss and gradient, not 0/0 = NaN."""
    denom = torch.as_tensor(num_tokens.sum() if denominator is None else denominator, dtype=token_logps.dtype,
                            device=token_logps.device)
    return -token_logps.sum() / torch.where(denom == 0, torch.ones_like(denom), denom)
