"""Model FLOPs utilisation: achieved model FLOP/s over the device's peak dense bf16 FLOP/s.

Peak figures are the vendors' dense (no sparsity) bf16 tensor-core numbers. A device not in the
table reports None: we never guess (CPU runs report None too).
"""

from __future__ import annotations

import re

import torch

# model words of torch.cuda.get_device_name() -> dense bf16 FLOP/s. A row matches when each of its
# words is a whole word of the name (split at spaces and dashes), first row first: "NVIDIA
# A100-SXM4-80GB" is an A100, while "NVIDIA L40" is not an L4, "NVIDIA GB200" not a B200 and
# "NVIDIA RTX A1000" not an A100 (all three report None)
PEAK_BF16: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("RTX 4090", 165e12),
]


def peak_flops_of(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device called `name`, or None for a device not in PEAK_BF16."""
    words = {w.lower() for w in re.split(r"[\s\-]+", name) if w}
    for key, flops in PEAK_BF16:
        if all(w.lower() in words for w in key.split()):
            return flops
    return None


def peak_flops(device: torch.device | str | None = None) -> float | None:
    if not torch.cuda.is_available():
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def head_flops_per_token(model: torch.nn.Module) -> float:
    """The LM head's share of `flops_per_token`: 6 x vocabulary x hidden. hsdpo applies the head only
    at scored positions (hsdpo.train.tokenize), so a step's FLOPs are
    `flops_per_token * tokens - head_flops_per_token * (tokens - scored)`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings().weight
    return 6.0 * (head.ds_numel if hasattr(head, "ds_numel") else head.numel())


def step_flops(model_flops: float, head_flops: float, tokens: int, scored: int) -> float:
    """Model FLOPs of a step of `tokens` (non-pad) tokens of which `scored` have their next token scored."""
    return model_flops * tokens - head_flops * (tokens - scored)


def flops_per_token(model: torch.nn.Module) -> float:
    """Training FLOPs per token, 6 x matmul parameters (forward 2, backward 4); attention scores
    (12 * layers * hidden * seq) are left out, so the figure is a slight under-estimate. The input
    embedding is a lookup, not a matmul; a tied LM head counts once (it is the embedding matrix)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    seen, total = set(), 0
    for p in base.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.ds_numel if hasattr(p, "ds_numel") else p.numel()
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    if head is not emb:
        total -= emb.ds_numel if hasattr(emb, "ds_numel") else emb.numel()
    return 6.0 * total
