"""The `sample` stage on CPU: a random micro Qwen2 (tiny_model_dir) on 20 real GSM8K problems, the
HF sampler in Ray Data actors, the real MathVerifier in the same stream. Checks row counts, the
schema, per-row seed reproducibility, a killed-and-restarted sampler actor, and the vLLM error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hsdpo.config import ConfigError, config_from_dict
from hsdpo.data.stage import run_data
from hsdpo.sampling.pipeline import SampleCountError, check_counts, row_seed
from hsdpo.sampling.stage import run_sample
from hsdpo.stage import read_rows
from hsdpo.verifier.batch import VERDICT_COLUMNS

N, PROBLEMS = 4, 20
SAMPLE_COLUMNS = {"problem_id", "sample_id", "prompt", "completion", "finish_reason", "num_tokens", "question",
                  "gold_answer", "gold_solution", "source", "gold_steps", "seed", "error"}


def make_cfg(tmp_path, data_dir, model_dir, **sample):
    return config_from_dict({
        "run_dir": str(tmp_path / "run"),
        "data": {"sources": [{"name": "gsm8k", "path": str(data_dir / "gsm8k" / "train.jsonl"), "limit": PROBLEMS}]},
        "sample": {"model_from": str(model_dir), "n": N, "max_new_tokens": 24, "batch_size": 16,
                   "torch_threads": 1, **sample},
    })


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, data_dir, tiny_model_dir, ray_local):
    cfg = make_cfg(tmp_path_factory.mktemp("sample"), data_dir, tiny_model_dir)
    run_data(cfg)
    result = run_sample(cfg)
    return cfg, result, read_rows(result.path)


def test_sample_writes_n_rows_per_problem_with_verdicts(sampled):
    cfg, result, rows = sampled
    assert len(rows) == PROBLEMS * N == result.rows["samples"]
    assert SAMPLE_COLUMNS | set(VERDICT_COLUMNS) <= set(rows[0])
    by_problem: dict[str, list[int]] = {}
    for r in rows:
        by_problem.setdefault(r["problem_id"], []).append(r["sample_id"])
    assert len(by_problem) == PROBLEMS and all(sorted(v) == list(range(N)) for v in by_problem.values())
    for r in rows:
        assert r["finish_reason"] in ("stop", "length") and r["error"] == ""
        assert 1 <= r["num_tokens"] <= 24
        assert r["prompt"] == "Question: " + r["question"].strip() + "\nAnswer: "
        assert r["seed"] == row_seed(cfg.seed, r["problem_id"], r["sample_id"])
        assert isinstance(r["correct"], bool) and 0.0 <= r["wrongness"] <= 1.0
        assert r["finish_reason"] == "stop" or r["num_tokens"] == 24
    assert result.metrics["tokens"] == sum(r["num_tokens"] for r in rows)
    assert result.metrics["tokens_per_s"] > 0 and result.metrics["solutions_per_s"] > 0
    # different seeds sample different text; the manifest carries the figures
    assert len({r["completion"] for r in rows}) > PROBLEMS
    manifest = json.loads((Path(result.path) / "_manifest.json").read_text())
    assert manifest["rows"]["samples"] == 80 and "tokens_per_s" in manifest["metrics"]


def test_sampler_is_reproducible_per_row_across_batches(sampled, tiny_model_dir):
    """The same (prompt, seed) gives the same completion alone or inside another batch."""
    from hsdpo.sampling.hf import HFSampler

    _, _, rows = sampled
    rows = sorted(rows, key=lambda r: (r["problem_id"], r["sample_id"]))[:6]
    sampler = HFSampler(str(tiny_model_dir), temperature=1.0, max_new_tokens=24,
                        stop_strings=["\nQuestion:", "\n### Instruction:"], torch_threads=1)
    batch = {"prompt": np.array([r["prompt"] for r in rows], dtype=object), "seed": np.array([r["seed"] for r in rows])}
    together = sampler(batch)["completion"]
    alone = sampler({k: v[3:4] for k, v in batch.items()})["completion"]
    assert list(together) == [r["completion"] for r in rows]
    assert alone[0] == together[3]


def test_killed_sampler_actor_still_writes_exactly_n_rows(tmp_path, data_dir, tiny_model_dir, ray_local):
    marker = tmp_path / "crashed"
    cfg = make_cfg(tmp_path, data_dir, tiny_model_dir, crash_once_marker=str(marker), verify=False,
                   max_restarts=2, max_task_retries=2)
    run_data(cfg)
    result = run_sample(cfg)
    assert marker.exists(), "the sampler actor never crashed"
    rows = read_rows(result.path)
    assert len(rows) == PROBLEMS * N
    assert len({(r["problem_id"], r["sample_id"]) for r in rows}) == PROBLEMS * N


@pytest.mark.parametrize("overrides, says", [
    (["sample.num_gpus=1"], "sample: 1 sampler actor needs 1 GPU and this local Ray has 0; lower sample.concurrency"),
    (["sample.concurrency=[5, 6]"], "sample: 5 sampler actors need 5 CPUs and this local Ray has 4;"),
    (["sample.verify_concurrency=5"], "sample: 5 verifier actors need 5 CPUs and this local Ray has 4;"),
    # each pool fits, both together leave no room for the fan-out task before them
    (["sample.concurrency=2", "sample.verify_concurrency=2"],
     "sample: 2 sampler actors and 2 verifier actors hold 4 of this local Ray's 4 CPUs, which leaves less than the"
     " 0.25 its tasks need, and the stage would wait forever; lower sample.concurrency,"),
])
def test_an_actor_pool_larger_than_the_local_ray_is_refused_and_the_samples_stay(sampled, overrides, says):
    """Ray Data would wait forever for actors no node can hold; the refusal comes before the stage
    folder is emptied (forced: the verifier pool's size is a RUN_ONLY setting, which alone would
    leave the finished stage current and skipped)."""
    from hsdpo.config import InputError, with_overrides
    from hsdpo.rundir import RunDir

    cfg, result, rows = sampled
    rd = RunDir(cfg.run_dir)
    before = rd.manifest("samples")
    with pytest.raises(InputError) as err:
        run_sample(with_overrides(cfg, overrides), force=True)
    assert str(err.value).startswith(says) and str(err.value).endswith("or join a cluster (ray.address)")
    assert rd.manifest("samples") == before and len(read_rows(result.path)) == len(rows)


def test_run_only_settings_keep_finished_samples_and_others_do_not(sampled):
    from hsdpo.config import with_overrides
    from hsdpo.plan import plan
    from hsdpo.stage import config_hash

    cfg, result, _ = sampled
    assert run_sample(with_overrides(cfg, ["sample.verify_concurrency=5", "sample.max_restarts=0"])).skipped
    assert config_hash(with_overrides(cfg, ["sample.n=3"]), plan(cfg, "sample")) != config_hash(cfg, plan(cfg, "sample"))


def test_a_table_read_on_the_driver_gives_every_actor_of_a_pool_whole_batches(ray_local):
    """Pairs and stored samples reach their actor pools as blocks of whole batches, about four an
    actor, in order (one block, as `read_parquet` makes of a one-file table, kept all but one actor
    of a pool idle)."""
    import pyarrow as pa

    from hsdpo.rayutil import table_dataset

    table = pa.table({"i": list(range(100))})
    for batch, pool, sizes in ((4, 2, [16] * 6 + [4]), (3, 1, [27] * 3 + [19]), (4, (1, 8), [4] * 25),
                               (200, 4, [100])):
        blocks = [b["i"].tolist() for b in table_dataset(table, batch, pool).iter_batches(batch_size=None,
                                                                                          batch_format="numpy")]
        assert [len(b) for b in blocks] == sizes, (batch, pool)
        assert sum(blocks, []) == list(range(100))


def test_a_verifier_change_verifies_the_stored_samples_again_without_sampling(sampled, tmp_path, capfd, monkeypatch):
    """Only how samples are verified changed (a verifier setting, sample.verify, the verifier's
    version): the stage reads its stored completions back and verifies them again. The rows are the
    same samples, their verdicts those of the new settings, the manifest keeps how they were made;
    a change to what is sampled (sample.n) samples anew."""
    import shutil

    import hsdpo.stage
    import hsdpo.status
    from hsdpo.config import with_overrides
    from hsdpo.rundir import RunDir
    from hsdpo.sampling.stage import reusable_samples
    from hsdpo.status import step_status
    from hsdpo.verifier import VerifierConfig, verify

    cfg, result, rows = sampled
    shutil.copytree(cfg.run_dir, tmp_path / "run")  # a run dir of its own: the module's stays as it is
    cfg = with_overrides(cfg, [f"run_dir={tmp_path / 'run'}"])
    assert run_sample(cfg).skipped
    stored = RunDir(cfg.run_dir).manifest("samples")
    loose = with_overrides(cfg, ["verifier.tau_absurdity=1.0", "verifier.tau_numeric=1.0"])
    st = step_status(loose, "sample", set())
    assert st.state == "stale" and st.why.endswith("(the stored samples are verified again, no sampling)"), st.why
    assert reusable_samples(with_overrides(loose, ["sample.n=3"])) is None
    capfd.readouterr()
    res = run_sample(loose)
    assert "verifying the 80 stored samples again, no sampling" in capfd.readouterr().err
    assert not res.skipped and res.metrics["reverified"] == 1 and res.rows["samples"] == len(rows)
    manifest = RunDir(cfg.run_dir).manifest("samples")
    assert manifest["generation_key"] == stored["generation_key"] and manifest["sampled_at"] == stored["finished_at"]
    assert manifest["metrics"]["tokens_per_s"] == stored["metrics"]["tokens_per_s"]
    key = lambda r: (r["problem_id"], r["sample_id"])  # noqa: E731
    again = sorted(read_rows(res.path), key=key)
    before = sorted(rows, key=key)
    assert [(key(r), r["completion"], r["seed"]) for r in again] == [(key(r), r["completion"], r["seed"]) for r in before]
    vcfg = VerifierConfig(tau_absurdity=1.0, tau_numeric=1.0)
    for r in again:
        v = verify(r["completion"], r["gold_answer"], r["question"], finish_reason=r["finish_reason"], cfg=vcfg)
        assert (r["hard_negative"], r["correct"]) == (v.hard_negative, v.correct)
    assert sum(r["hard_negative"] for r in again) > sum(r["hard_negative"] for r in before)
    assert run_sample(loose).skipped  # current now

    raw = run_sample(with_overrides(loose, ["sample.verify=false"]))  # drops the verdicts, keeps the samples
    assert raw.metrics["reverified"] == 1 and not set(VERDICT_COLUMNS) & set(read_rows(raw.path)[0])
    monkeypatch.setattr(hsdpo.stage, "VERIFIER_VERSION", hsdpo.stage.VERIFIER_VERSION + 1)
    monkeypatch.setattr(hsdpo.status, "VERIFIER_VERSION", hsdpo.stage.VERIFIER_VERSION)
    st = step_status(loose, "sample", set())
    v = hsdpo.stage.VERIFIER_VERSION
    assert st.why == "config changed: sample.verify false -> true (the stored samples are verified again, no sampling)"
    raw_cfg = with_overrides(loose, ["sample.verify=false"])
    assert step_status(raw_cfg, "sample", set()).why == \
        f"the verifier changed (version {v - 1} -> {v}) (the stored samples are verified again, no sampling)"
    assert RunDir(cfg.run_dir).manifest("samples")["verifier_version"] == v - 1


def test_check_counts_raises_on_lost_or_duplicated_rows():
    check_counts(["a", "a", "b", "b"], [0, 1, 1, 0], ["a", "b"], 2)
    with pytest.raises(SampleCountError, match="1 missing"):
        check_counts(["a", "a", "b"], [0, 1, 0], ["a", "b"], 2)
    with pytest.raises(SampleCountError, match="1 duplicated"):
        check_counts(["a", "a", "a", "b", "b"], [0, 1, 1, 0, 1], ["a", "b"], 2)


def test_vllm_backend_without_vllm_is_a_one_line_error(tmp_path, data_dir, tiny_model_dir):
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed; tests/gpu/test_vllm.py runs the real backend")
    cfg = make_cfg(tmp_path, data_dir, tiny_model_dir, backend="vllm")
    with pytest.raises(ConfigError) as err:
        run_sample(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "pip install 'hsdpo[vllm]'" in msg


def test_failed_generation_is_a_flagged_row_not_a_crash(tiny_model_dir):
    from hsdpo.sampling.hf import HFSampler

    sampler = HFSampler(str(tiny_model_dir), max_new_tokens=4, torch_threads=1)
    real = sampler.generate

    def flaky(prompts, seeds):
        if any("BAD" in p for p in prompts):
            raise RuntimeError("boom")
        return real(prompts, seeds)

    sampler.generate = flaky
    out = sampler({"prompt": np.array(["Question: 1\nAnswer: ", "BAD", "Question: 2\nAnswer: "], dtype=object),
                   "seed": np.array([1, 2, 3]), "problem_id": np.array(["a", "b", "c"], dtype=object)})
    assert list(out["finish_reason"]) == ["length", "error", "length"]
    assert out["error"][1] == "RuntimeError: boom" and out["completion"][1] == "" and out["num_tokens"][1] == 0
    assert list(out["problem_id"]) == ["a", "b", "c"]


def _model_copy(src: Path, dst: Path, generation: dict | None = None, drop_pad: bool = False) -> Path:
    """The tiny model folder with its generation config or tokenizer changed."""
    import shutil

    shutil.copytree(src, dst)
    if generation:
        gen = json.loads((dst / "generation_config.json").read_text())
        (dst / "generation_config.json").write_text(json.dumps({**gen, **generation}))
    if drop_pad:
        tok = json.loads((dst / "tokenizer_config.json").read_text())
        tok.pop("pad_token", None)
        (dst / "tokenizer_config.json").write_text(json.dumps(tok))
    return dst


PROMPTS = np.array(["Question: Tom has 3 apples and buys 4 more. How many?\nAnswer: ", "Question: 2+2?\nAnswer: ",
                    "Question: A box holds 12 eggs. How many in 5 boxes?\nAnswer: "], dtype=object)


def test_checkpoint_generation_config_does_not_change_decoding(tiny_model_dir, tmp_path):
    """A repetition penalty, suppressed tokens and the like shipped in generation_config.json are not
    applied (vLLM, given its SamplingParams, does not apply them either): the draw stays the one the
    row's seed makes."""
    from hsdpo.sampling.hf import HFSampler

    shipped = _model_copy(tiny_model_dir, tmp_path / "m", {"repetition_penalty": 5.0, "no_repeat_ngram_size": 2,
                                                           "suppress_tokens": list(range(2, 200)), "top_k": 3})
    batch = {"prompt": PROMPTS, "seed": np.array([1, 2, 3])}
    for temperature in (0.0, 1.0):
        plain = HFSampler(str(tiny_model_dir), temperature=temperature, max_new_tokens=12, torch_threads=1)(batch)
        other = HFSampler(str(shipped), temperature=temperature, max_new_tokens=12, torch_threads=1)(batch)
        assert list(other["completion"]) == list(plain["completion"])
        assert list(other["num_tokens"]) == list(plain["num_tokens"])


def test_a_tokenizer_without_a_pad_token_counts_the_same_tokens(tiny_model_dir, tmp_path):
    """Without a pad token the eos token pads; a row a stop string ended is not counted one token
    longer for the eos-looking padding after it."""
    from hsdpo.sampling.hf import HFSampler

    no_pad = _model_copy(tiny_model_dir, tmp_path / "m", drop_pad=True)
    batch = {"prompt": PROMPTS, "seed": np.array([1, 2, 3])}
    kw = dict(temperature=1.0, max_new_tokens=12, torch_threads=1, stop_strings=["e"])
    plain = HFSampler(str(tiny_model_dir), **kw)
    padded_with_eos = HFSampler(str(no_pad), **kw)
    assert padded_with_eos.pad_id in padded_with_eos.eos_ids and plain.pad_id not in plain.eos_ids
    a, b = plain(batch), padded_with_eos(batch)
    assert "stop" in list(a["finish_reason"]) and min(a["num_tokens"]) < max(a["num_tokens"])  # some row padded
    for k in ("completion", "finish_reason", "num_tokens"):
        assert list(b[k]) == list(a[k])


def test_a_stop_string_that_starts_in_the_prompt_does_not_end_the_row(tiny_model_dir):
    """The prompt ends in "Answer: "; a stop string of that space and the row's first generated token
    would end the row there if the prompt counted (transformers' stop_strings read the whole
    sequence). Only generated text stops a row, as in vLLM: the row decodes as it does without the
    stop string, cut where that text comes again inside it."""
    from hsdpo.sampling.hf import HFSampler

    kw = dict(temperature=1.0, max_new_tokens=12, torch_threads=1)
    free = HFSampler(str(tiny_model_dir), **kw)
    generated: list[list[int]] = []
    finish = free._finish
    free._finish = lambda tokens: (generated.append(tokens.tolist()), finish(tokens))[1]  # what it generated
    assert str(PROMPTS[0]).endswith(" ")
    for seed in range(1, 200):  # a seed whose first generated token is whole printable text
        generated.clear()
        unstopped = free({"prompt": PROMPTS[:1], "seed": np.array([seed])})
        first = free.tokenizer.decode(generated[0][:1])
        if first.strip() and first.isprintable() and "\ufffd" not in first and not first.startswith(" "):
            break
    else:
        pytest.fail("no seed gave a printable first token")
    stop = " " + first
    text = unstopped["completion"][0]
    out = HFSampler(str(tiny_model_dir), stop_strings=[stop], **kw)({"prompt": PROMPTS[:1], "seed": np.array([seed])})
    assert out["completion"][0] == (text[: text.find(stop)] if stop in text else text)
    if stop not in text:
        assert (out["finish_reason"][0], out["num_tokens"][0]) == (unstopped["finish_reason"][0],
                                                                   unstopped["num_tokens"][0])


def test_a_prompt_longer_than_the_context_is_an_error_row_and_the_others_decode(tiny_model_dir):
    """vLLM refuses such a prompt too; here it is never padded into (or decoded with) the batch."""
    from hsdpo.sampling.hf import HFSampler

    sampler = HFSampler(str(tiny_model_dir), temperature=1.0, max_new_tokens=6, torch_threads=1)
    hostile = "Question: " + "1 + 1 = 2, " * 400 + "\nAnswer: "
    out = sampler({"prompt": np.array([PROMPTS[0], hostile, PROMPTS[1]], dtype=object), "seed": np.array([1, 2, 3])})
    assert list(out["finish_reason"]) == ["length", "error", "length"] and out["num_tokens"][1] == 0
    assert out["error"][1].startswith("prompt of ") and out["error"][1].endswith("longer than the model's context (512)")
    alone = sampler({"prompt": PROMPTS[:1], "seed": np.array([1])})
    assert alone["completion"][0] == out["completion"][0]


def test_the_context_cuts_each_row_at_its_own_length_as_vllm_does(tiny_model_dir, tmp_path):
    """With a 64-token context, rows whose prompt + max_new_tokens does not fit stop at the context
    ("length", context - prompt tokens), each at its own length in a batch of mixed prompt lengths; no
    position at or past the context is computed; a prompt that fills the context is an error row; the
    rows with room decode as they do without the others."""
    from transformers import AutoTokenizer

    from hsdpo.model import build_model
    from hsdpo.sampling.hf import HFSampler

    context, max_new = 64, 16
    small = tmp_path / "ctx64"
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.save_pretrained(small)
    build_model("micro", tok, max_position_embeddings=context).save_pretrained(small)
    sampler = HFSampler(str(small), temperature=1.0, max_new_tokens=max_new, torch_threads=1)
    positions: list[int] = []
    sampler.model.model.register_forward_pre_hook(
        lambda _m, _a, kw: positions.append(int(kw["position_ids"].max())), with_kwargs=True)

    def n_tokens(prompt):
        return len(sampler.tokenizer(prompt)["input_ids"])

    def long_prompt(n):  # digits are single tokens: pad a question up to n prompt tokens
        body = "Question: 12 + 7?"
        while n_tokens(body + "\nAnswer: ") < n:
            body += "1"
        prompt = body + "\nAnswer: "
        assert n_tokens(prompt) == n
        return prompt

    short = [str(p) for p in PROMPTS[:2]]
    lengths = {p: n_tokens(p) for p in short}
    assert all(n + max_new <= context for n in lengths.values())
    cut = [long_prompt(context - 9), long_prompt(context - 3)]
    full = long_prompt(context)
    prompts = [cut[0], short[0], full, cut[1], short[1]]
    out = sampler({"prompt": np.array(prompts, dtype=object), "seed": np.arange(1, 6)})
    assert max(positions) < context
    assert list(out["finish_reason"]) == ["length", "length", "error", "length", "length"]
    assert [out["num_tokens"][i] for i in (0, 3)] == [9, 3]
    assert out["error"][2] == f"prompt of {context} tokens leaves no room for a new token in the model's context (64)"
    assert out["num_tokens"][1] == out["num_tokens"][4] == max_new
    alone = sampler({"prompt": np.array(short, dtype=object), "seed": np.array([2, 5])})
    assert [out["completion"][1], out["completion"][4]] == list(alone["completion"])
    cut_alone = sampler({"prompt": np.array(cut[1:], dtype=object), "seed": np.array([4])})
    assert cut_alone["completion"][0] == out["completion"][3] and cut_alone["num_tokens"][0] == 3


def test_no_problems_in_the_split_is_one_line_and_the_samples_stay(sampled):
    from hsdpo.config import InputError, with_overrides
    from hsdpo.rundir import RunDir

    cfg, result, rows = sampled
    rd = RunDir(cfg.run_dir)
    before = rd.manifest("samples")
    with pytest.raises(InputError) as err:
        run_sample(with_overrides(cfg, ["sample.split=validation"]), force=True)
    assert str(err.value) == "sample: no problems in split 'validation' of problems/"
    assert rd.manifest("samples") == before and len(read_rows(result.path)) == len(rows)


def test_failed_verification_is_a_flagged_row_not_a_crash():
    from hsdpo.sampling.pipeline import VerifyRows

    verifier = VerifyRows({})
    real = verifier.inner

    def flaky(batch):
        if any(c == "BAD" for c in batch["completion"]):
            raise RuntimeError("verifier down")
        return real(batch)

    verifier.inner = flaky
    batch = {"completion": np.array(["2+2 = 4\n#### 4", "BAD"], dtype=object),
             "gold_answer": np.array(["4", "4"], dtype=object), "error": np.array(["", ""], dtype=object)}
    out = verifier(batch)
    assert list(out["correct"]) == [True, False]
    assert out["flags"][1] == "verifier_error" and out["error"][1].startswith("verify: RuntimeError")
    assert set(VERDICT_COLUMNS) <= set(out)
    # no answer: None, as verify() gives it (a missing answer casts no majority vote), found by no rule
    assert list(out["pred_answer"]) == ["4", None] and list(out["answer_rule"]) == ["hash", "none"]


def test_vllm_output_maps_to_the_samples_schema():
    from hsdpo.sampling.vllm import ERROR_COLUMN, to_sample_columns

    batch = {"problem_id": np.array(["a", "b", "c"], dtype=object), "prompt": np.array(["p"] * 3, dtype=object),
             "generated_text": np.array(["x #### 1", "y", ""], dtype=object),
             "num_generated_tokens": np.array([5, 8, 0]), "generated_tokens": np.array([[1], [2], [3]]),
             ERROR_COLUMN: np.array(["", "", "CUDA error"], dtype=object)}
    out = to_sample_columns(batch, max_tokens=8, columns=["problem_id", "prompt"])
    assert set(out) == {"problem_id", "prompt", "completion", "finish_reason", "num_tokens", "error"}
    assert list(out["finish_reason"]) == ["stop", "length", "error"]
    assert list(out["num_tokens"]) == [5, 8, 0] and out["error"][2] == "CUDA error"
    batch["generated_text"] = np.array(["x #### 1", None, None], dtype=object)  # no text: an empty completion
    assert list(to_sample_columns(batch, max_tokens=8, columns=["problem_id"])["completion"]) == ["x #### 1", "", ""]


def test_vllm_finish_reason_and_prompt_follow_the_engine():
    """A row the context (`max_model_len`) cut is "length", as vLLM reports it; a failed row keeps its
    prompt, which vLLM's error row drops."""
    from hsdpo.sampling.vllm import ERROR_COLUMN, PROMPT_COPY, to_sample_columns

    batch = {"prompt": np.array(["p", "p", ""], dtype=object), PROMPT_COPY: np.array(["p", "p", "q"], dtype=object),
             "generated_text": np.array(["a", "b", ""], dtype=object), "num_generated_tokens": np.array([5, 3, 0]),
             "num_input_tokens": np.array([10, 13, 0]), ERROR_COLUMN: np.array(["", "", "ValueError: x"], dtype=object)}
    out = to_sample_columns(batch, max_tokens=8, columns=["prompt"], max_model_len=16)
    assert list(out["finish_reason"]) == ["stop", "length", "error"] and list(out["prompt"]) == ["p", "p", "q"]
    assert list(to_sample_columns(batch, max_tokens=8, columns=["prompt"])["finish_reason"]) == ["stop", "stop", "error"]
    # the stop string stays in vLLM's text (include_stop_str_in_output) and is cut here: a row whose
    # last allowed token completed it is a "stop", as vLLM itself reports it
    batch["generated_text"] = np.array(["a\nQuestion: more", "b\nQuestion:", ""], dtype=object)
    batch["num_generated_tokens"] = np.array([8, 8, 0])
    out = to_sample_columns(batch, max_tokens=8, columns=["prompt"], stop_strings=["\nQuestion:"])
    assert list(out["completion"]) == ["a", "b", ""] and list(out["finish_reason"]) == ["stop", "stop", "error"]


def test_vllm_settings_it_would_refuse_row_by_row_are_caught_first():
    """vLLM's SamplingParams raises on a temperature above 2 and on an empty stop string: the first
    is a config error, the second is dropped (as the hf backend drops it)."""
    from hsdpo.sampling.config import SampleConfig
    from hsdpo.sampling.vllm import sampling_params

    with pytest.raises(ConfigError, match="temperature 2.5: vLLM samples at temperatures up to 2"):
        config_from_dict({}, ["sample.backend=vllm", "sample.temperature=2.5"])
    assert config_from_dict({}, ["sample.temperature=2.5"]).sample.temperature == 2.5  # the hf backend takes it
    assert sampling_params(SampleConfig(stop_strings=["", "\nQuestion:"]), 1.0)["stop"] == ["\nQuestion:"]
    for knob in ("sample.dtype=bf16", "sample.vllm.dtype=fp8"):  # not a traceback in each actor
        with pytest.raises(ConfigError, match="Input should be 'auto'"):
            config_from_dict({}, [knob])


@pytest.mark.parametrize("overrides", [["sample.limit=-1"], ["sample.limit=0"], ["sample.temperature=inf"]])
def test_bad_sample_settings_are_one_line_config_errors(overrides):
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, overrides)
    assert " at sample." in str(err.value) and "\n" not in str(err.value)
    assert config_from_dict({}).sample.limit is None and config_from_dict({}, ["sample.limit=3"]).sample.limit == 3


def test_vllm_processor_builds_from_our_config_with_rays_llm_api(ray_local, tiny_model_dir):
    """Ray's `ray.data.llm` (no vLLM needed to build it) takes our settings as they are: one engine
    stage, our engine kwargs (tensor parallelism included), `concurrency` engine replicas, and
    per-row seeded sampling params."""
    from hsdpo.sampling.config import SampleConfig
    from hsdpo.sampling.vllm import build_vllm_processor

    cfg = SampleConfig(max_new_tokens=48, top_p=0.95, concurrency=2,
                       vllm={"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "max_model_len": 1024,
                             "engine_kwargs": {"enforce_eager": True}})
    processor = build_vllm_processor(str(tiny_model_dir), cfg, temperature=0.7)
    assert processor.list_stage_names() == ["vLLMEngineStage"]  # Ray's own text stages off: vLLM tokenizes
    stage = processor.get_stage_by_name("vLLMEngineStage")
    engine = stage.fn_constructor_kwargs["engine_kwargs"]
    assert stage.fn_constructor_kwargs["model"] == str(tiny_model_dir)
    assert {k: engine[k] for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len",
                                   "enforce_eager")} == {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5,
                                                         "max_model_len": 1024, "enforce_eager": True}
    assert stage.fn_constructor_kwargs["should_continue_on_error"] is True
    pool = stage.map_batches_kwargs["compute"]
    assert (pool.min_size, pool.max_size) == (2, 2)  # concurrency 2 = two engines, not an autoscaler from 1
    autoscaled = build_vllm_processor(str(tiny_model_dir), cfg.model_copy(update={"concurrency": (1, 3)}), 1.0)
    pool = autoscaled.get_stage_by_name("vLLMEngineStage").map_batches_kwargs["compute"]
    assert (pool.min_size, pool.max_size) == (1, 3)
    row = processor.preprocess({"prompt": "Question: 1+1?\nAnswer: ", "seed": 7})
    params = next(iter(row.values()))["sampling_params"]
    assert params == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 48, "stop": list(cfg.stop_strings),
                      "include_stop_str_in_output": True, "seed": 7}


def test_vllm_model_source_from_a_uri_run_dir():
    from hsdpo.config import ConfigError
    from hsdpo.sampling.vllm import vllm_model_source

    assert vllm_model_source("file:///runs/x/sft/model") == "/runs/x/sft/model"
    for source in ("s3://b/runs/x/sft/model", "gs://b/m", "Qwen/Qwen2.5-1.5B", "/local/model"):
        assert vllm_model_source(source) == source  # ray.data.llm downloads the bucket ones itself
    with pytest.raises(ConfigError, match="hdfs://"):
        vllm_model_source("hdfs://nn/runs/x/sft/model")


def test_pairs_from_real_samples(sampled):
    """`pairs` on the verified samples: a random model is never right, so every pair falls back to gold."""
    from hsdpo.pairs_stage import run_pairs

    cfg, _, samples = sampled
    result = run_pairs(cfg)
    pairs = read_rows(result.path)
    assert result.rows["problems"] == PROBLEMS
    assert len(pairs) == result.rows["pairs"] == sum(result.rows[f"pairs: {k}"] for k in ("hard", "easy", "gold"))
    texts = {(r["problem_id"], r["completion"]) for r in samples}
    for p in pairs:
        assert (p["problem_id"], p["rejected"]) in texts and p["rejected_correct"] is False
        assert p["prompt"].startswith("Question: ") and p["weight"] > 0
    if pairs:
        assert sum(p["weight"] for p in pairs) / len(pairs) == pytest.approx(1.0)
