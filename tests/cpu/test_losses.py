"""The DPO and SFT losses against hand-computed values (see the worked example in losses.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hsdpo.train.losses import sft_loss, weighted_dpo_loss


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_worked_example_from_the_docstring():
    loss, m = weighted_dpo_loss(t(-1, -2), t(-2, -1), t(-1, -1), t(-1, -1), t(1, 3), beta=1.0)
    a, b = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    assert a == pytest.approx(0.313262, abs=1e-6) and b == pytest.approx(1.313262, abs=1e-6)
    assert loss.item() == pytest.approx((1 * a + 3 * b) / 4, abs=1e-12)
    assert loss.item() == pytest.approx(1.063262, abs=1e-6)
    assert m["dpo_loss_unweighted"].item() == pytest.approx((a + b) / 2)
    assert m["rewards_chosen"].item() == pytest.approx(-0.5)
    assert m["rewards_rejected"].item() == pytest.approx(-0.5)
    assert m["margins"].item() == pytest.approx(0.0)
    assert m["accuracy"].item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "pc, pr, rc, rr, beta, want",
    [
        ((0.0,), (0.0,), (0.0,), (0.0,), 0.1, math.log(2)),  # policy = reference: ln 2
        ((-3.0,), (-5.0,), (-4.0,), (-4.0,), 0.5, math.log(1 + math.exp(-1.0))),  # h = 1 - (-1) = 2, beta h = 1
        ((-5.0,), (-3.0,), (-4.0,), (-4.0,), 0.5, math.log(1 + math.exp(1.0))),
    ],
)
def test_single_pair_table(pc, pr, rc, rr, beta, want):
    loss, _ = weighted_dpo_loss(t(*pc), t(*pr), t(*rc), t(*rr), t(2.5), beta=beta)  # one pair: weight cancels
    assert loss.item() == pytest.approx(want, abs=1e-12)


def test_all_weights_one_is_plain_sigmoid_dpo():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(7, generator=g, dtype=torch.float64) * 5 for _ in range(4))
    loss, _ = weighted_dpo_loss(pc, pr, rc, rr, torch.ones(7, dtype=torch.float64), beta=0.2)
    plain = -F.logsigmoid(0.2 * ((pc - rc) - (pr - rr))).mean()
    assert loss.item() == plain.item()


def test_zero_weight_pair_gets_zero_gradient():
    pc = t(-1.0, -2.0, -3.0).requires_grad_()
    pr = t(-2.0, -1.0, -1.0).requires_grad_()
    loss, _ = weighted_dpo_loss(pc, pr, t(-1, -1, -1), t(-1, -1, -1), t(1.0, 0.0, 2.0), beta=0.3)
    loss.backward()
    assert pc.grad[1].item() == 0.0 and pr.grad[1].item() == 0.0
    assert pc.grad[0].item() != 0.0 and pc.grad[2].item() != 0.0


@pytest.mark.parametrize("denominator", [None, 0.0])
def test_all_zero_weights_give_a_zero_step_not_nan(denominator):
    pc = t(-1.0, -2.0).requires_grad_()
    pr = t(-2.0, -1.0).requires_grad_()
    loss, m = weighted_dpo_loss(pc, pr, t(-1, -1), t(-1, -1), t(0.0, 0.0), beta=0.3, denominator=denominator)
    loss.backward()
    assert loss.item() == 0.0 and m["dpo_loss"].item() == 0.0
    assert pc.grad.tolist() == [0.0, 0.0] and pr.grad.tolist() == [0.0, 0.0]
    assert math.isfinite(m["dpo_loss_unweighted"].item())


def test_nll_term_and_global_denominator():
    args = (t(-1.0), t(-2.0), t(-1.0), t(-1.0), t(2.0))
    base, _ = weighted_dpo_loss(*args, beta=1.0)
    with_nll, m = weighted_dpo_loss(*args, beta=1.0, nll_coef=0.5, chosen_nll=torch.tensor(3.0, dtype=torch.float64))
    assert with_nll.item() == pytest.approx(base.item() + 1.5)
    assert m["dpo_loss"].item() == pytest.approx(base.item())
    half, _ = weighted_dpo_loss(*args, beta=1.0, denominator=4.0)  # global weight sum 4, this micro-batch 2
    assert half.item() == pytest.approx(base.item() / 2)


def test_sft_loss_is_mean_nll_per_completion_token():
    # two examples: log-prob sums -6 over 3 tokens and -2 over 1 token -> 8 / 4 = 2
    assert sft_loss(t(-6.0, -2.0), t(3.0, 1.0)).item() == pytest.approx(2.0)
    assert sft_loss(t(-6.0, -2.0), t(3.0, 1.0), denominator=8.0).item() == pytest.approx(1.0)


@pytest.mark.parametrize("loss_type, smoothing, want", [("sigmoid", 0.1, 1.013262), ("robust", 0.1, 1.125762),
                                                       ("hinge", 0.0, 1.5), ("robust", 0.0, 1.063262)])
def test_label_noise_and_hinge_forms_of_the_worked_example(loss_type, smoothing, want):
    """The module docstring's figures; the robust loss without noise is plain sigmoid DPO."""
    loss, m = weighted_dpo_loss(t(-1, -2), t(-2, -1), t(-1, -1), t(-1, -1), t(1, 3), beta=1.0, loss_type=loss_type,
                                label_smoothing=smoothing)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert m["margins"].item() == 0 and m["accuracy"].item() == 0.5  # the margins are the loss's input, unchanged


def test_label_smoothing_equals_its_definition_and_keeps_ln2_at_the_reference():
    """Conservative DPO is (1 - e) of the pair's loss plus e of the flipped pair's; the robust form
    is that with the flipped term's sign reversed, over 1 - 2e. At zero margin both are ln 2."""
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(9, generator=g, dtype=torch.float64) * 3 for _ in range(4))
    w = torch.rand(9, generator=g, dtype=torch.float64)
    e = 0.2
    plain, _ = weighted_dpo_loss(pc, pr, rc, rr, w, beta=0.3)
    flipped, _ = weighted_dpo_loss(pr, pc, rr, rc, w, beta=0.3)
    smoothed, _ = weighted_dpo_loss(pc, pr, rc, rr, w, beta=0.3, label_smoothing=e)
    robust, _ = weighted_dpo_loss(pc, pr, rc, rr, w, beta=0.3, loss_type="robust", label_smoothing=e)
    assert smoothed.item() == pytest.approx(((1 - e) * plain + e * flipped).item(), rel=1e-12)
    assert robust.item() == pytest.approx((((1 - e) * plain - e * flipped) / (1 - 2 * e)).item(), rel=1e-12)
    for loss_type in ("sigmoid", "robust"):
        at_ref, _ = weighted_dpo_loss(pc, pr, pc, pr, w, loss_type=loss_type, label_smoothing=e)
        assert at_ref.item() == pytest.approx(math.log(2), rel=1e-12)
    with pytest.raises(ValueError, match="not hinge"):
        weighted_dpo_loss(pc, pr, rc, rr, w, loss_type="hinge", label_smoothing=e)


def test_ipo_worked_example_from_the_docstring():
    loss, m = weighted_dpo_loss(t(-1, -2), t(-2, -1), t(-1, -1), t(-1, -1), t(1, 3), beta=1.0, loss_type="ipo",
                                chosen_tokens=t(1, 2), rejected_tokens=t(2, 1))
    assert loss.item() == pytest.approx(0.75, abs=1e-12)
    assert m["dpo_loss_unweighted"].item() == pytest.approx(0.5)  # (0 + 1) / 2
    assert m["rewards_chosen"].item() == pytest.approx(-0.25) and m["rewards_rejected"].item() == pytest.approx(-0.25)
    assert m["margins"].item() == pytest.approx(0.0) and m["accuracy"].item() == 0.5


def test_ipo_is_its_definition_on_per_token_means():
    """(h - 1/(2β))² on mean log-probs, weighted; 1/(4β²) at the reference; a pair whose completions
    are twice as long at the same per-token log-probs scores the same; a zero-weight pair gets no
    gradient; without the token counts, or with label smoothing, a clear error."""
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(8, generator=g, dtype=torch.float64) * 20 for _ in range(4))
    nc, nr = (torch.randint(1, 40, (8,), generator=g) for _ in range(2))
    w = torch.rand(8, generator=g, dtype=torch.float64)
    w[3] = 0.0
    beta = 0.25
    h = (pc / nc - rc / nc) - (pr / nr - rr / nr)
    want = (w * (h - 1 / (2 * beta)) ** 2).sum() / w.sum()
    pc.requires_grad_()
    loss, m = weighted_dpo_loss(pc, pr, rc, rr, w, beta=beta, loss_type="ipo", chosen_tokens=nc, rejected_tokens=nr)
    assert loss.item() == pytest.approx(want.item(), rel=1e-12)
    assert m["margins"].item() == pytest.approx((beta * h).mean().item(), rel=1e-12)
    loss.backward()
    assert pc.grad[3].item() == 0.0 and pc.grad[0].item() != 0.0
    pc = pc.detach()
    twice, _ = weighted_dpo_loss(2 * pc, 2 * pr, 2 * rc, 2 * rr, w, beta=beta, loss_type="ipo",
                                 chosen_tokens=2 * nc, rejected_tokens=2 * nr)
    assert twice.item() == pytest.approx(loss.item(), rel=1e-12)
    at_ref, _ = weighted_dpo_loss(pc, pr, pc, pr, w, beta=beta, loss_type="ipo", chosen_tokens=nc, rejected_tokens=nr)
    assert at_ref.item() == pytest.approx(1 / (4 * beta**2), rel=1e-12)
    with pytest.raises(ValueError, match="loss_type ipo needs chosen_tokens and rejected_tokens"):
        weighted_dpo_loss(pc, pr, rc, rr, w, loss_type="ipo")
    with pytest.raises(ValueError, match="not ipo"):
        weighted_dpo_loss(pc, pr, rc, rr, w, loss_type="ipo", label_smoothing=0.1, chosen_tokens=nc, rejected_tokens=nr)
