"""The `vllm` sampler backend (GPU production path): Ray's `ray.data.llm` vLLM processor.

Written against the public APIs pinned by the `vllm` extra (ray[llm] 2.60, which pins vllm 0.29.0):
`ray.data.llm.vLLMEngineProcessorConfig` + `build_processor`, with per-row
`vllm.SamplingParams` fields in a `sampling_params` column (temperature, top_p, max_tokens,
stop, include_stop_str_in_output, seed). Ray's own chat-template / tokenize / detokenize stages
are off: the prompt is already formatted text (hsdpo.prompts), and vLLM tokenizes it and applies
the stop strings itself; the completion is cut before the stop string here and excludes eos,
exactly as the `hf` backend's.

The processor's output lacks vLLM's `finish_reason`, so it is derived: "stop" when the text holds a
stop string, else "length" when the engine produced `max_tokens` tokens or the prompt and its
tokens filled `max_model_len` (when set), else "stop"; rows that fail carry `__inference_error__` (`should_continue_on_error`)
and become finish_reason "error" with the message in `error`. vLLM drops the prompt of a failed
row, so the preprocess keeps a copy (PROMPT_COPY) and the samples keep theirs. vLLM's
SamplingParams refuses a temperature above 2 and an empty stop string: the first is a one-line
error before any work (`check_temperature`), the second is dropped, as the `hf` backend does.
vLLM needs CUDA; without it installed, selecting the backend is a one-line error.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

import numpy as np

from hsdpo.config import ConfigError
from hsdpo.sampling.config import VLLM_MAX_TEMPERATURE, SampleConfig

if TYPE_CHECKING:
    from ray.data import Dataset

ERROR_COLUMN = "__inference_error__"
PROMPT_COPY = "hsdpo_prompt"


class VLLMNotInstalled(ConfigError):
    """The vllm backend was selected where vLLM is not installed."""


def require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise VLLMNotInstalled("sample.backend=vllm needs vLLM, which is not installed here: "
                               "pip install 'hsdpo[vllm]' on a CUDA machine (or use sample.backend=hf)")


def check_temperature(temperature: float, knob: str) -> None:
    """A temperature vLLM refuses (every row would fail) is a one-line error before any work."""
    if temperature > VLLM_MAX_TEMPERATURE:
        raise ConfigError(f"{knob}={temperature:g}: vLLM samples at temperatures up to {VLLM_MAX_TEMPERATURE:g} "
                          "(sample.backend=vllm)")


def engine_kwargs(cfg: SampleConfig, trust_remote_code: bool = False) -> dict[str, Any]:
    v = cfg.vllm
    kwargs: dict[str, Any] = dict(tensor_parallel_size=v.tensor_parallel_size, max_num_seqs=v.max_num_seqs,
                                  gpu_memory_utilization=v.gpu_memory_utilization, dtype=v.dtype)
    if trust_remote_code:  # model.trust_remote_code: the model's own code, in vLLM as in training
        kwargs["trust_remote_code"] = True
    if v.max_model_len is not None:
        kwargs["max_model_len"] = v.max_model_len
    return {**kwargs, **v.engine_kwargs}


def engine_pool(concurrency: int | tuple[int, int]) -> tuple[int, int]:
    """`sample.concurrency` as ray.data.llm's (min, max) engine replicas. An int n means n replicas, as
    in Ray Data's map_batches and the hf backend; ray.data.llm would read it as a pool autoscaling
    from 1 to n (one engine first, the others only once a backlog builds up)."""
    from hsdpo.rayutil import pool_bounds

    return pool_bounds(concurrency)


def sampling_params(cfg: SampleConfig, temperature: float) -> dict[str, Any]:
    """vllm.SamplingParams fields shared by every row (the row adds its own `seed`). The stop string
    stays in the output (`to_sample_columns` cuts it): the processor's output has no finish reason,
    and a stop string the last allowed token completed is then still seen as a stop."""
    stops = [s for s in cfg.stop_strings if s]
    return dict(temperature=temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens, stop=stops,
                **({"include_stop_str_in_output": True} if stops else {}))


def vllm_model_source(model_path: str) -> str:
    """What the processor loads: a hub id or local folder as is, and s3:// gs:// abfss:// folders as
    is too (ray.data.llm downloads those on each engine's node); a file:// URI is a local folder."""
    if model_path.startswith("file://"):
        return model_path[len("file://"):]
    scheme = model_path.split("://", 1)[0] if "://" in model_path else None
    if scheme not in (None, "s3", "gs", "abfss"):
        raise ConfigError(f"sample.backend=vllm loads models from a hub id, a local path or s3:// gs:// abfss://;"
                          f" {model_path!r} is on {scheme}://")
    return model_path


def apply_vllm(ds: "Dataset", model_path: str, cfg: SampleConfig, *, temperature: float,
               columns: list[str], trust_remote_code: bool = False) -> "Dataset":
    """Rows with `prompt` and `seed` -> the same rows plus `completion, finish_reason, num_tokens, error`."""
    require_vllm()
    processor = build_vllm_processor(model_path, cfg, temperature, trust_remote_code)
    return processor(ds).map_batches(to_sample_columns, batch_format="numpy",
                                     fn_kwargs={"max_tokens": cfg.max_new_tokens, "columns": columns,
                                                "max_model_len": engine_kwargs(cfg).get("max_model_len"),
                                                "stop_strings": [s for s in cfg.stop_strings if s]})


def build_vllm_processor(model_path: str, cfg: SampleConfig, temperature: float, trust_remote_code: bool = False):
    """The `ray.data.llm` processor: our engine settings, one vLLM engine stage (Ray's chat-template,
    tokenize and detokenize stages off), each row's `vllm.SamplingParams` fields with its own seed.
    Building it needs Ray only; running it needs vLLM on a GPU."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=vllm_model_source(model_path),
        engine_kwargs=engine_kwargs(cfg, trust_remote_code),
        batch_size=cfg.batch_size,
        concurrency=engine_pool(cfg.concurrency),
        accelerator_type=cfg.vllm.accelerator_type,
        should_continue_on_error=True,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )
    shared = sampling_params(cfg, temperature)
    return build_processor(
        config,
        preprocess=lambda row: {**row, PROMPT_COPY: row["prompt"],
                                "sampling_params": {**shared, "seed": int(row["seed"])}},
    )


def to_sample_columns(batch: dict[str, np.ndarray], max_tokens: int, columns: list[str],
                      max_model_len: int | None = None, stop_strings: list[str] | None = None) -> dict[str, np.ndarray]:
    """The processor's output columns -> the samples schema (the hf backend's): the text cut at its
    first stop string (kept in vLLM's output, `sampling_params`), which makes the row a "stop" even
    where that string came with the last allowed token."""
    n = len(batch["prompt"])
    errors = [str(e or "") for e in batch.get(ERROR_COLUMN, [""] * n)]
    texts = batch.get("generated_text", np.array([""] * n, dtype=object))
    counts = np.asarray(batch.get("num_generated_tokens", np.zeros(n)), dtype=np.int64)
    prompt_tokens = np.asarray(batch.get("num_input_tokens", np.zeros(n)), dtype=np.int64)
    full = counts >= max_tokens
    if max_model_len is not None:
        full |= prompt_tokens + counts >= max_model_len
    out = {c: batch[c] for c in columns}
    if PROMPT_COPY in batch and "prompt" in out:
        out["prompt"] = batch[PROMPT_COPY]
    completions, stopped = [], []
    for t, e in zip(texts, errors):
        text = "" if e or t is None else str(t)
        cut = min((i for i in (text.find(s) for s in stop_strings or ()) if i >= 0), default=-1)
        completions.append(text[:cut] if cut >= 0 else text)
        stopped.append(cut >= 0)
    out["completion"] = np.array(completions, dtype=object)
    out["finish_reason"] = np.array(["error" if e else ("length" if f and not hit else "stop")
                                     for f, e, hit in zip(full, errors, stopped)], dtype=object)
    out["num_tokens"] = np.where([bool(e) for e in errors], 0, counts).astype(np.int64)
    out["error"] = np.array(errors, dtype=object)
    return out
