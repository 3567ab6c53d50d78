"""Tokenisation, masking and sequence log-probs shared by SFT, reference log-probs and DPO.

An example is `prompt + completion + eos` (no eos for a rejected completion cut at its first
error: it is a prefix, see hsdpo.pairs), prompt and completion tokenised separately and
concatenated (no merge across the boundary; TRL does the same). The prompt gets the tokenizer's
special tokens, as the samplers (HF and vLLM) tokenise it: a BOS in front for Llama-style
tokenizers, nothing for Qwen's; the completion gets none. Loss and log-probs cover the
completion tokens (and eos) only. An example longer than `max_length` is truncated: the prompt keeps
its leading special tokens and at most its last `max_length // 2` tokens in all, the completion is
cut on the right; `truncated` counts it.
Where one side of a pair must cut the prompt, the other side cuts it too (`encode_pairs`).
`encode_batch` is that rule for a batch of examples (one tokenizer call for its prompts, one for its
completions), and the only one: the trainer's table (`tokenize_rows`, made once by Ray
Data tasks before training starts, see launch.py) and the reference stage all go through it, so
policy and reference score the same tokens. A table is held as flat int32 arrays (`Sequences`).

`sequence_logps` never materialises the full `[B, T, V]` fp32 logits, and never computes logits
that nothing reads: the LM head and log-softmax run only at the positions whose next token is scored
(completion tokens; not the prompt, not padding), gathered into one `[M, H]` block and cut into
chunks, each under activation checkpointing by default, so backward recomputes one chunk's logits
at a time (`recompute=False`, config `logp_recompute`, keeps them instead: faster, more memory).
On GSM8K the formatted question is 47 % of a question + solution (by characters), so this skips
about half of the head's work on real tokens and all of it on padding (at Qwen2.5-1.5B's vocabulary
of 152k the head is 15 % of the model's matmul FLOPs and most of its element-wise traffic).

Batches are right-padded, and the decoder runs without an attention mask: under the causal mask
no real token attends to the padding after it, so every scored log-prob is the same as with the
mask (padding positions change, and nothing reads them). The attention then takes the plain causal
kernel (flash attention on GPUs, where a padding mask forces a masked one), no `[B, 1, T, T]` mask
is built, and transformers does not read the mask back from the device to decide whether it may
skip it (two device reads a forward, each a wait for the GPU to drain; one remains, its check of
the position ids for packed sequences).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.checkpoint import checkpoint

from hsdpo.stage import flag


@dataclass
class Encoded:
    input_ids: list[int]
    prompt_len: int
    truncated: bool


@dataclass
class Sequences:
    """Encoded examples in flat arrays: example i is `ids[offsets[i]:offsets[i + 1]]`, its first
    `prompt_len[i]` tokens the prompt. A worker holds the whole training table this way: 4 bytes a
    token, where lists of Python ints take about 26 (395k MetaMathQA-sized rows: 0.35 GB against
    2.3 GB a worker, docs/benchmarks.md)."""

    ids: np.ndarray  # [total] int32
    offsets: np.ndarray  # [N + 1] int64
    prompt_len: np.ndarray  # [N] int64
    truncated: np.ndarray  # [N] bool

    def __len__(self) -> int:
        return len(self.prompt_len)

    def __getitem__(self, i: int) -> Encoded:
        return Encoded(self.ids[self.offsets[i]:self.offsets[i + 1]].tolist(), int(self.prompt_len[i]),
                       bool(self.truncated[i]))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def columns(self, prefix: str) -> dict[str, pa.Array]:
        """Arrow columns `<prefix>ids` (list<int32>), `<prefix>prompt_len`, `<prefix>truncated`."""
        ids = pa.ListArray.from_arrays(pa.array(self.offsets, pa.int32()), pa.array(self.ids, pa.int32()))
        return {f"{prefix}ids": ids, f"{prefix}prompt_len": pa.array(self.prompt_len),
                f"{prefix}truncated": pa.array(self.truncated)}

    @classmethod
    def from_columns(cls, table: pa.Table, prefix: str) -> "Sequences":
        col = table[f"{prefix}ids"]
        lengths = pc.list_value_length(col).to_numpy()
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(pc.list_flatten(col).to_numpy().astype(np.int32, copy=False), offsets,
                   table[f"{prefix}prompt_len"].to_numpy().astype(np.int64),
                   table[f"{prefix}truncated"].to_numpy().astype(bool))


def encode_batch(tokenizer: Any, prompts: Sequence[str], completions: Sequence[str], max_length: int,
                 eos: bool | Sequence[bool] = True) -> Sequences:
    """`prompt + completion (+ eos)` for each example, prompt and completion tokenised apart (one
    batched call each) and truncated as the module docstring says. `eos` False for a completion that
    is a prefix (a rejected sample cut at its first error)."""
    n = len(prompts)
    eos = [eos] * n if isinstance(eos, bool) else list(eos)
    return _join(_prompt_tokens(tokenizer, prompts), _with_eos(tokenizer, _tokens(tokenizer, completions), eos),
                 max_length, keep=lead_specials(tokenizer))


def _tokens(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []


def _prompt_tokens(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Prompts as a sampler feeds them to the model: with the tokenizer's special tokens."""
    return tokenizer(list(prompts))["input_ids"] if len(prompts) else []


def lead_specials(tokenizer: Any) -> int:
    """How many special tokens the tokenizer puts in front of a text (1 for a BOS, 0 for Qwen's)."""
    plain = tokenizer("1", add_special_tokens=False)["input_ids"]
    full = tokenizer("1")["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return i
    return 0


def _with_eos(tokenizer: Any, completions: list[list[int]], eos: Sequence[bool]) -> list[list[int]]:
    return [c + [tokenizer.eos_token_id] if e else c for c, e in zip(completions, eos)]


def _join(ps: list[list[int]], cs: list[list[int]], max_length: int,
          cut_prompt: Sequence[bool] | None = None, keep: int = 0) -> Sequences:
    """Token lists joined and truncated (module docstring); `cut_prompt[i]` cuts example i's prompt
    as a truncated example's is cut even where its own completion fits (the other side of a pair
    that needs it: both sides then see one prompt). A cut prompt keeps its first `keep` tokens (the
    tokenizer's leading special tokens, `lead_specials`)."""
    n = len(ps)
    half = max_length // 2
    keep = min(keep, half - 1)
    seqs, prompt_len, truncated = [], np.zeros(n, np.int64), np.zeros(n, bool)
    for i, (p, c) in enumerate(zip(ps, cs)):
        if len(p) + len(c) > max_length or (cut_prompt is not None and cut_prompt[i]):
            p = p[:keep] + p[len(p) - (half - keep):] if len(p) > half else p
        if len(p) + len(c) > max_length:
            truncated[i] = True
            c = c[: max_length - len(p)]
        elif len(p) < len(ps[i]):
            truncated[i] = True  # its prompt was cut for the other side
        seqs.append(p + c)
        prompt_len[i] = len(p)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(seqs), np.int32, int(offsets[-1]))
    return Sequences(ids, offsets, prompt_len, truncated)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T] 1 on real tokens
    loss_mask: torch.Tensor  # [B, T] 1 on completion tokens (the labels), aligned with input_ids
    scored: torch.Tensor  # [M] flat positions b*T + t whose next token is scored (loss_mask[b, t+1] = 1)
    # packed (`collate_rows(pack=...)`): several examples a row, each with positions from 0
    position_ids: torch.Tensor | None = None  # [B, T]; the padding after a row's last example counts from 0 too
    owner: torch.Tensor | None = None  # [M] the example each scored position belongs to
    counts: torch.Tensor | None = None  # [N] scored positions an example (its completion tokens)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(*(None if t is None else to_device(t, device) for t in (
            self.input_ids, self.attention_mask, self.loss_mask, self.scored, self.position_ids, self.owner, self.counts)))

    def logp_args(self) -> tuple[torch.Tensor | None, ...]:
        """The arguments of `LogpModel.forward` / `sequence_logps` after the model."""
        return (self.input_ids, self.loss_mask, self.scored, self.position_ids, self.owner, self.counts)

    @property
    def examples(self) -> int:
        return self.input_ids.shape[0] if self.counts is None else self.counts.shape[0]


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device` without making the host wait: CUDA drains the stream before a copy
    from pageable memory (so a batch built mid-step would idle the GPU until the host catches up);
    from pinned memory the copy is queued like a kernel. Anything else is a plain `.to`."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def scored_positions(loss_mask: torch.Tensor) -> torch.Tensor:
    """Flat indices b*T + t of the positions t whose next token is scored. Computed where the mask
    is built (on the host), so the device never waits on a data-dependent shape."""
    nxt = torch.zeros_like(loss_mask, dtype=torch.bool)
    nxt[:, :-1] = loss_mask[:, 1:].bool()
    return nxt.reshape(-1).nonzero().squeeze(-1)


def collate(examples: list[Encoded], pad_id: int, pad_to: int | None = None) -> Batch:
    """Examples as one right-padded batch (`collate_rows` over a table of just these)."""
    lengths = np.array([len(e.input_ids) for e in examples], np.int64)
    offsets = np.zeros(len(examples) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(e.input_ids for e in examples), np.int32, int(offsets[-1]))
    seqs = Sequences(ids, offsets, np.array([e.prompt_len for e in examples], np.int64),
                     np.array([e.truncated for e in examples], bool))
    return collate_rows([(seqs, np.arange(len(examples)))], pad_id, pad_to)


def collate_rows(parts: list[tuple[Sequences, np.ndarray]], pad_id: int, pad_to: int | None = None,
                 pack: int | None = None) -> Batch:
    """Rows `idx` of each `(table, idx)` in `parts`, in that order, as one right-padded batch: a few
    array operations a table over its flat token array, where a row at a time through Python lists
    took 3-6x the host time of every micro-step's batch (benchmarks/collate.py).

    `pack` (a row capacity in tokens, e.g. max_length): the examples are laid end to end instead,
    in the rows `pack_layout` balances, each example with positions from 0,
    so the decoder attends within an example only (transformers builds the block-diagonal causal
    mask from the position ids). Example order is kept for the log-probs (`Batch.owner`)."""
    parts = [(s, np.asarray(i, np.int64)) for s, i in parts]
    lengths = np.concatenate([s.offsets[i + 1] - s.offsets[i] for s, i in parts])
    prompt = np.concatenate([s.prompt_len[i] for s, i in parts])
    if pack is not None:
        row, start = pack_layout(lengths, pack)
        fill = np.zeros(int(row.max(initial=-1)) + 1, np.int64)
        np.maximum.at(fill, row, start + lengths)
    else:
        row, start, fill = np.arange(len(lengths)), np.zeros(len(lengths), np.int64), lengths
    width = max(int(fill.max(initial=0)), pad_to or 0)
    ids = np.full((len(fill), width), pad_id, np.int64)
    e0 = 0
    for s, i in parts:
        n = s.offsets[i + 1] - s.offsets[i]
        within = _ranges(n)  # each token's place in its example
        rows, starts = row[e0:e0 + len(i)], start[e0:e0 + len(i)]
        ids[np.repeat(rows, n), np.repeat(starts, n) + within] = s.ids[np.repeat(s.offsets[i], n) + within]
        e0 += len(i)
    cols = np.arange(width)
    attn = torch.from_numpy((cols < fill[:, None]).astype(np.int64))
    if pack is None:
        mask = torch.from_numpy(((cols >= prompt[:, None]) & (cols < lengths[:, None])).astype(np.int64))
        return Batch(torch.from_numpy(ids), attn, mask, scored_positions(mask))
    # example e covers row[e], columns [start, start + length); its completion from start + prompt on
    tok_row, within = np.repeat(row, lengths), _ranges(lengths)
    tok_col = np.repeat(start, lengths) + within
    mask = np.zeros((len(fill), width), np.int64)
    mask[tok_row, tok_col] = within >= np.repeat(prompt, lengths)
    pos = cols - fill[:, None]  # the padding after a row's last example: 0, 1, ... (a segment of its own)
    pos[tok_row, tok_col] = within
    # scored: t in [max(prompt, 1) - 1, length - 2] of each example, as `scored_positions` on its own row
    first = np.maximum(prompt, 1) - 1
    counts = np.maximum(lengths - 1 - first, 0)
    scored = np.repeat(row * width + start + first, counts) + _ranges(counts)
    return Batch(torch.from_numpy(ids), attn, torch.from_numpy(mask), torch.from_numpy(scored),
                 torch.from_numpy(pos), torch.from_numpy(np.repeat(np.arange(len(lengths)), counts)),
                 torch.from_numpy(counts))


def _ranges(n: np.ndarray) -> np.ndarray:
    """0..n[0]-1, 0..n[1]-1, ... concatenated."""
    return np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)


def pack_layout(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, start column) of each example: the examples in R rows, longest first into the least
    filled row (LPT), for the R that computes the fewest tokens (R x the fullest row) with no row
    over `capacity` (or over the longest example, where that is longer). Ties go to the first row,
    so a layout is the same on every rank and every run."""
    import heapq

    lengths = np.asarray(lengths, np.int64)
    order = np.argsort(-lengths, kind="stable")
    total, longest = int(lengths.sum()), int(lengths.max(initial=0))
    limit = max(capacity, longest)
    best: tuple[int, np.ndarray, np.ndarray] | None = None
    for rows in range(max(1, -(-total // limit)), len(lengths) + 1):
        if best is not None and rows * longest >= best[0]:
            break  # no layout of more rows computes fewer tokens
        heap = [(0, r) for r in range(rows)]  # (fill, row): the least filled row, the first of equals
        row, start = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64)
        for e in order:
            fill, r = heapq.heappop(heap)
            row[e], start[e] = r, fill
            heapq.heappush(heap, (fill + int(lengths[e]), r))
        width = max(f for f, _ in heap)
        if width <= limit and (best is None or rows * width < best[0]):
            best = (rows * width, row, start)
    if best is None:  # no examples
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return best[1], best[2]


def _chunk_logps(lm_head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()  # [R, V] for one chunk of rows only
    return torch.gather(logits.log_softmax(-1), -1, targets.unsqueeze(-1)).squeeze(-1)  # [R]


def scored_logps(decoder: torch.nn.Module, lm_head: torch.nn.Module, input_ids: torch.Tensor,
                 scored: torch.Tensor, chunk: int, chunk_fn=_chunk_logps, recompute: bool = True,
                 position_ids: torch.Tensor | None = None, sequences: int | None = None) -> torch.Tensor:
    """Log-prob of the next token at each position of `scored` (flat b*T + t), `[M]` fp32. Chunks hold
    `chunk` positions per sequence on average (chunk x B rows), the memory bound of a position chunk
    over the whole batch (`sequences` of them; default one a row). `chunk_fn` may be `_chunk_logps`
    compiled: one kernel reads a chunk's bf16 logits once for the upcast, log-softmax and gather,
    where eager writes and re-reads fp32 copies.
    With `recompute`, a chunk's forward runs again in backward (activation checkpointing), so only one
    chunk's logits live at a time; without, autograd keeps every chunk's log-softmax."""
    # right padding needs no mask (module doc); packed rows get theirs from the position ids (no KV cache:
    # transformers reads packing from the positions only without one, and a scoring pass never needs it)
    hidden = decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state  # [B, T, H]
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, scored)  # [M, H]
    targets = input_ids.reshape(-1).index_select(0, scored + 1)  # [M]: t+1 stays in row b (t < T-1)
    rows = max(1, chunk * (input_ids.shape[0] if sequences is None else sequences))
    pieces = []
    for s in range(0, h.shape[0], rows):
        hc, tc = h[s:s + rows], targets[s:s + rows]
        if recompute and torch.is_grad_enabled():
            pieces.append(checkpoint(chunk_fn, lm_head, hc, tc, use_reentrant=False))
        else:
            pieces.append(chunk_fn(lm_head, hc, tc))
    return torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)


def split_model(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder stack, LM head) of a causal LM, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor, chunk: int = 128,
                   chunk_fn=_chunk_logps, scored: torch.Tensor | None = None, recompute: bool = True,
                   position_ids: torch.Tensor | None = None, owner: torch.Tensor | None = None,
                   counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs [B] fp32, completion tokens [B]) of a right-padded batch (`collate`).
    `scored` is the batch's `Batch.scored`; without it, it is derived from `loss_mask` here (a device
    sync on a GPU). A packed batch (`collate_rows(pack=...)`) also passes its `position_ids`, `owner`
    and `counts`, and gets one sum an example, in example order."""
    if scored is None:
        scored = scored_positions(loss_mask)
    decoder, lm_head = split_model(model)
    n = None if counts is None else counts.shape[0]
    logps = scored_logps(decoder, lm_head, input_ids, scored, chunk, chunk_fn, recompute, position_ids, n)  # [M]
    if owner is None:
        sums = logps.new_zeros(input_ids.shape[0]).index_add(0, scored // input_ids.shape[1], logps)
        return sums, loss_mask[:, 1:].sum(-1).to(sums.dtype)
    return logps.new_zeros(n).index_add(0, owner, logps), counts.to(logps.dtype)


class LogpModel(torch.nn.Module):
    """What DeepSpeed wraps: forward returns sequence log-probs, so every parameter access goes
    through module calls (ZeRO-3 gathers on them) and the engine owns the whole computation."""

    def __init__(self, model: torch.nn.Module, chunk: int, compile_backend: str | None = None, recompute: bool = True):
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.recompute = recompute
        self.chunk_fn = torch.compile(_chunk_logps, backend=compile_backend) if compile_backend else _chunk_logps

    def forward(self, input_ids: torch.Tensor, loss_mask: torch.Tensor, scored: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, owner: torch.Tensor | None = None,
                counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(self.model, input_ids, loss_mask, self.chunk, self.chunk_fn, scored, self.recompute,
                              position_ids, owner, counts)


def pair_examples(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> list[tuple[Encoded, Encoded]]:
    """(chosen, rejected) encodings; a rejected marked `rejected_cut` (a prefix) gets no eos."""
    chosen, rejected = encode_pairs(tokenizer, rows, max_length)
    return [(chosen[i], rejected[i]) for i in range(len(rows))]


def encode_pairs(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[Sequences, Sequences]:
    """(chosen, rejected) of each pair, truncated as `encode_batch` does, except that a pair whose one
    side must cut the prompt cuts it on both: the two log-probs then condition on the same prompt
    (cut apart, a long chosen and a short rejected would be compared under different contexts)."""
    ps = _prompt_tokens(tokenizer, [r["prompt"] for r in rows])
    chosen = _with_eos(tokenizer, _tokens(tokenizer, [r["chosen"] for r in rows]), [True] * len(rows))
    rejected = _with_eos(tokenizer, _tokens(tokenizer, [r["rejected"] for r in rows]),
                         [not flag(r.get("rejected_cut")) for r in rows])
    cut = [len(p) + max(len(c), len(r)) > max_length for p, c, r in zip(ps, chosen, rejected)]
    keep = lead_specials(tokenizer)
    return _join(ps, chosen, max_length, cut, keep), _join(ps, rejected, max_length, cut, keep)


# what tokenize_rows reads of a row (besides `_idx`)
INPUT_COLUMNS = {"sft": ("prompt", "completion"),
                 "dpo": ("prompt", "chosen", "rejected", "rejected_cut", "weight", "ref_chosen_logp", "ref_rejected_logp")}
DPO_KEEP = ("_idx", "weight", "ref_chosen_logp", "ref_rejected_logp")


def tokenize_rows(kind: str, tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> pa.Table:
    """The training table of `rows` as a worker holds it: the token columns of each side
    (`Sequences.columns`: `ids...` for SFT, `chosen_ids...` and `rejected_ids...` for DPO), and the
    columns the loss reads besides (`_idx`; DPO's `weight` and reference log-probs)."""
    if kind == "dpo":
        chosen, rejected = encode_pairs(tokenizer, rows, max_length)
        cols, keep = {**chosen.columns("chosen_"), **rejected.columns("rejected_")}, DPO_KEEP
    else:
        cols = encode_batch(tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows],
                            max_length).columns("")
        keep = ("_idx",)
    for k in keep:
        if rows and k in rows[0]:
            cols[k] = pa.array([r[k] for r in rows])
    return pa.table(cols)


def pair_batch(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> Batch:
    """Pairs encoded (`encode_pairs`) as one batch `[2B, T]`, chosen then rejected: one forward for
    both, cut from the encoded arrays directly (`collate_rows`)."""
    chosen, rejected = encode_pairs(tokenizer, rows, max_length)
    idx = np.arange(len(rows))
    return collate_rows([(chosen, idx), (rejected, idx)], tokenizer.pad_token_id)
