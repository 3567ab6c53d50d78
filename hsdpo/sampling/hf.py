"""The `hf` sampler backend: a callable class for `Dataset.map_batches` that decodes a batch of
prompts with `transformers` `generate` (CPU or one GPU). No Ray import: the same class runs as a
plain object (benchmarks/gpu_sampling.py) and as a Ray Data actor (hsdpo.sampling.pipeline).

    sampler = HFSampler("runs/demo/sft/model", temperature=1.0, max_new_tokens=64)
    out = sampler({"prompt": np.array(["Question: ...\\nAnswer: "], dtype=object), "seed": np.array([7])})
    out["completion"], out["finish_reason"], out["num_tokens"], out["error"]

Reproducibility. Each row carries its own `seed`; the sampled token at step t is
`argmax(logits / T + Gumbel(hash(seed, t, token)))` over the top-p nucleus (the Gumbel-max trick:
an exact draw from softmax(logits / T) restricted to the nucleus). The noise is a pure function of
(seed, step, token id), so a row's completion does not depend on which batch, actor or retry
decodes it, nor on the global torch RNG. It is bit-identical whenever the same rows are batched
together on the same device; across batch compositions only the model's float rounding (padding
changes the matmul shapes) can flip a near-tie. Temperature 0 is greedy.

Decoding is only what this class is given: the checkpoint's `generation_config.json` (a repetition
penalty, suppressed tokens, its own sampling defaults) is not applied, as in the `vllm` backend;
its eos ids do end a sample, besides the tokenizer's, as they do in vLLM.

Outputs per row: `completion` (generated text without the prompt, eos and stop string),
`finish_reason` ("stop": eos or a stop string; "length": max_new_tokens reached; "error"),
`num_tokens` (generated tokens, eos/stop tokens included) and `error` ("" or the message). A batch
that raises is retried row by row, so one bad row costs its own sample, never the job. A prompt
that fills the model's context (`max_position_embeddings`) is an "error" row without decoding
(vLLM refuses it too), so one hostile question cannot pad a whole batch to its length.

The context also bounds each row's new tokens, as vLLM's `max_model_len` does: a row gets at most
`min(max_new_tokens, context - its prompt length)`, and one the context cut is "length". No position
at or past the context is ever computed. `generate` numbers each left-padded row's positions from
its own first real token, so the rows are decoded in groups of equal budget: the rows with room for
`max_new_tokens` (all of them, in the usual batch) decode together exactly as without the cap, and
each shorter budget is its own `generate` call sized to it.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

# splitmix64 constants as signed int64 (torch int64 arithmetic wraps).
_C1 = 0xBF58476D1CE4E5B9 - 2**64
_C2 = 0x94D049BB133111EB - 2**64
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 finaliser on int64 tensors (logical right shifts via masks)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _C1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _C2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def gumbel_noise(seeds: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [B, V], a pure function of (seed_b, step, token id)."""
    step_key = ((step + 1) * _C2 + 2**63) % 2**64 - 2**63  # wrapped to int64 in Python
    base = _mix64(seeds.to(torch.int64) * _GOLDEN + step_key)  # [B]
    tokens = torch.arange(vocab, device=seeds.device, dtype=torch.int64)  # [V]
    bits = _mix64(base[:, None] ^ (tokens[None, :] * _GOLDEN))  # [B, V]
    u = (((bits >> 40) & 0xFFFFFF).to(torch.float32) + 0.5) * (1.0 / 2**24)  # uniform in (0, 1)
    return -torch.log(-torch.log(u))


class SeededSampling:
    """Logits processor for greedy `generate`: turns argmax into a per-row seeded sample."""

    def __init__(self, seeds: torch.Tensor, prompt_len: int, temperature: float, top_p: float):
        self.seeds, self.prompt_len, self.temperature, self.top_p = seeds, prompt_len, temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature <= 0:
            return scores
        logits = scores.float() / self.temperature  # [B, V]
        if self.top_p < 1.0:
            logits = _top_p_mask(logits, self.top_p)
        step = input_ids.shape[1] - self.prompt_len
        return logits + gumbel_noise(self.seeds, step, logits.shape[-1])


def _top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """-inf outside the smallest set of tokens whose probability reaches top_p (the top token stays)."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p  # mass before this token already >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _token_ids(*ids: Any) -> list[int]:
    """Token ids from ints, lists of ints and Nones, in order, each once."""
    out: list[int] = []
    for x in ids:
        for i in x if isinstance(x, (list, tuple)) else [x]:
            if isinstance(i, int) and i >= 0 and i not in out:
                out.append(i)
    return out


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class CompletionStops:
    """A `generate` stopping criterion: a row is done once a stop string appears in the text it has
    generated. transformers' own `StopStringCriteria` matches the end of the whole sequence, prompt
    included, so a stop string that starts in the prompt (`" Question:"` after a prompt ending in a
    space) ended a row on text the model never wrote; vLLM, too, looks at the generated text only.
    Transformers' check (on the device, every step) finds the candidates; a row it flags is
    confirmed on its last `window` generated tokens, decoded (a stop string of c characters spans
    at most c tokens)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_len: int):
        from transformers import StopStringCriteria

        self.tokenizer, self.stops, self.prompt_len = tokenizer, list(stops), prompt_len
        self.window = max(len(x) for x in self.stops) + 2
        self.candidates = StopStringCriteria(tokenizer, self.stops)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        hit = self.candidates(input_ids, scores)
        if not bool(hit.any()):
            return hit
        rows = hit.nonzero().squeeze(-1).tolist()
        tails = input_ids[rows, self.prompt_len:][:, -self.window:].tolist()
        texts = self.tokenizer.batch_decode(tails)  # special tokens kept: a stop string may be one (`<|im_end|>`)
        for row, text in zip(rows, texts):
            if not any(x in text for x in self.stops):
                hit[row] = False
        return hit


class HFSampler:
    """Loads the model and tokenizer once; each call decodes one batch (numpy columns in and out).

    Needs columns `prompt` (str) and `seed` (int); adds `completion, finish_reason, num_tokens,
    error`; every other column passes through. Never drops or adds rows.
    """

    def __init__(self, model_path: str, *, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256,
                 stop_strings: Sequence[str] = (), device: str | None = None, dtype: str = "auto",
                 torch_threads: int | None = None, trust_remote_code: bool = False,
                 crash_once_marker: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from hsdpo.rundir import fetch_dir

        model_path = fetch_dir(model_path)  # a URI: this node's cached copy
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=_resolve_dtype(dtype, self.device), trust_remote_code=trust_remote_code
        ).to(self.device).eval()
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.stop_strings = [s for s in stop_strings if s]
        self.crash_once_marker = crash_once_marker
        # `generate` fills each setting it is not given from the checkpoint's generation config
        shipped, self.model.generation_config = self.model.generation_config, GenerationConfig()
        self.eos_ids = _token_ids(self.tokenizer.eos_token_id, shipped.eos_token_id)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        context = getattr(self.model.config, "max_position_embeddings", None)
        self.context = context if isinstance(context, int) and context > 0 else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._maybe_crash()
        prompts = [str(p) for p in batch["prompt"]]
        seeds = [int(s) for s in batch["seed"]]
        try:
            results = self.generate(prompts, seeds)
        except Exception:  # noqa: BLE001 - retry row by row so a bad row only costs itself
            results = [self._generate_one(p, s) for p, s in zip(prompts, seeds)]
        out = dict(batch)
        out["completion"] = np.array([r[0] for r in results], dtype=object)
        out["finish_reason"] = np.array([r[1] for r in results], dtype=object)
        out["num_tokens"] = np.array([r[2] for r in results], dtype=np.int64)
        out["error"] = np.array([r[3] for r in results], dtype=object)
        return out

    def _generate_one(self, prompt: str, seed: int) -> tuple[str, str, int, str]:
        try:
            return self.generate([prompt], [seed])[0]
        except Exception as err:  # noqa: BLE001
            return "", "error", 0, f"{type(err).__name__}: {err}"[:500]

    @torch.inference_mode()
    def generate(self, prompts: list[str], seeds: list[int]) -> list[tuple[str, str, int, str]]:
        """(completion, finish_reason, num_tokens, error) per prompt."""
        ids = self.tokenizer(prompts)["input_ids"]
        results: list[tuple[str, str, int, str] | None] = [None] * len(prompts)
        by_budget: dict[int, list[int]] = {}  # new tokens a row may get -> its rows, in batch order
        for i, x in enumerate(ids):
            if self.context is None:
                by_budget.setdefault(self.max_new_tokens, []).append(i)
            elif len(x) >= self.context:
                what = "is longer than" if len(x) > self.context else "leaves no room for a new token in"
                results[i] = ("", "error", 0, f"prompt of {len(x)} tokens {what} the model's context ({self.context})")
            else:
                by_budget.setdefault(min(self.max_new_tokens, self.context - len(x)), []).append(i)
        for budget, rows in by_budget.items():
            for i, result in zip(rows, self._decode([ids[i] for i in rows], [seeds[i] for i in rows], budget)):
                results[i] = result
        return results

    def _decode(self, ids: list[list[int]], seeds: list[int], max_new_tokens: int) -> list[tuple[str, str, int, str]]:
        """One `generate` call over rows whose prompts all leave room for `max_new_tokens` in the
        context: a row's positions count from its first real token, so the last one computed is its
        prompt length + max_new_tokens - 2."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        input_ids, mask = self._pad_left(ids)
        prompt_len = input_ids.shape[1]
        seeds_t = torch.tensor(seeds, dtype=torch.int64, device=self.device)
        gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                                   eos_token_id=self.eos_ids or None, pad_token_id=self.pad_id)
        sampling = SeededSampling(seeds_t, prompt_len, self.temperature, self.top_p)
        stops = StoppingCriteriaList([CompletionStops(self.tokenizer, self.stop_strings, prompt_len)]
                                     if self.stop_strings else [])
        out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg,
                                  logits_processor=LogitsProcessorList([sampling]), stopping_criteria=stops)
        return [self._finish(row) for row in out[:, prompt_len:].cpu().numpy()]  # [B, T_new]

    def _pad_left(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input ids and attention mask (a tokenizer without a pad token pads too)."""
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            if x:
                input_ids[row, width - len(x):] = torch.tensor(x, dtype=torch.long)
                mask[row, width - len(x):] = 1
        return input_ids.to(self.device), mask.to(self.device)

    def _finish(self, tokens: np.ndarray) -> tuple[str, str, int, str]:
        """Cut one row's new tokens at eos / padding / stop string; count what was generated."""
        eos = np.flatnonzero(np.isin(tokens, self.eos_ids))
        if eos.size:
            n, text_tokens, hit_eos = int(eos[0]) + 1, tokens[: eos[0]], True
        else:
            n = len(tokens)
            while n and tokens[n - 1] == self.pad_id:  # finished rows are padded after a stop string
                n -= 1
            text_tokens, hit_eos = tokens[:n], False
        text = self.tokenizer.decode(text_tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop_strings) if i >= 0), default=-1)
        if cut >= 0:
            if hit_eos and tokens[n - 1] == self.pad_id:  # the stop string ended the row, padded with eos
                n -= 1
            return text[:cut], "stop", n, ""
        return text, "stop" if hit_eos else "length", n, ""

    def _maybe_crash(self) -> None:
        marker = self.crash_once_marker
        if marker and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(1)


def describe(sampler: HFSampler) -> dict[str, Any]:
    """Parameter count and device, for logs and benchmark reports."""
    return {"params": sum(p.numel() for p in sampler.model.parameters()), "device": sampler.device,
            "dtype": str(next(sampler.model.parameters()).dtype).replace("torch.", "")}
