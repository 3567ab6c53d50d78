"""Bad input to the training stages (sft, reflogp, dpo): a malformed row is a counted reject, a table or
model that cannot be trained on is a one-line error before the stage folder is emptied. No Ray Train
run: the row readers, the tokenised table and the stages' preflights, with a char-level micro model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hsdpo.config import ConfigError, InputError, config_from_dict, dump_config, with_overrides
from hsdpo.plan import Plan
from hsdpo.rundir import RunDir, StageResult
from hsdpo.stage import run_stage, write_rows

MAXLEN = 64
GOOD = {"pair_id": "g", "problem_id": "q1", "prompt": "Question: 1+2?\nAnswer: ", "chosen": "3 #### 3",
        "rejected": "4 #### 4", "weight": 1.0, "ref_chosen_logp": -5.0, "ref_rejected_logp": -6.0, "rejected_cut": False}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from hsdpo.model import TokenizerBuildConfig, build_model, build_tokenizer

    out = tmp_path_factory.mktemp("char_model")
    tok = build_tokenizer(["Question: 0123456789+-*/=?\nAnswer: #### abcdefghijklmnopqrstuvwxyz"], out,
                          cfg=TokenizerBuildConfig(kind="char"))
    build_model("micro", tok, max_position_embeddings=128).save_pretrained(out)
    return out


def _cfg(run_dir: Path, **sections):
    return config_from_dict({"run_dir": str(run_dir), "model": {"preset": "micro"},
                             "sft": {"max_length": MAXLEN}, "reflogp": {"max_length": MAXLEN},
                             "dpo": {"max_length": MAXLEN, "batch_size": 4, "micro_batch_size": 4}, **sections})


def _table(cfg, output: str, rows: list[dict], stage: str = "reflogp") -> None:
    """`rows` as the finished output `output` of `stage` (a manifest recording `cfg`)."""
    def body(out: str) -> StageResult:
        write_rows(rows, out + "/pairs.parquet")
        return StageResult(stage, output, out, rows={"pairs": len(rows)})

    run_stage(cfg, Plan(stage, output, (), ("seed",)), body=body)


def _cli(cfg, tmp_path: Path, capsys, *args: str) -> str:
    """`hsdpo <args>` on `cfg`: exit status 2 and the last stderr line."""
    from hsdpo.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert main([args[0], str(path), *args[1:]]) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# ---- rows -----------------------------------------------------------------------------------------

def test_dpo_rows_reject_non_text_sides_and_non_numbers_and_keep_one_pair_of_an_id(tmp_path):
    from hsdpo.train.dpo import dpo_rows

    cfg = _cfg(tmp_path)
    rd = RunDir(cfg.run_dir)
    # a column's type is the table's (and one folder's): a number where text goes is a whole column of them
    write_rows([{**GOOD, "pair_id": f"n{i}", "chosen": i} for i in range(2)], rd.path("typed", "a.parquet"))
    rows, rejects = dpo_rows(with_overrides(cfg, ["dpo.pairs_from=typed"]))
    assert rows == [] and rejects == [{"reason": "not_text", "row": "n0"}, {"reason": "not_text", "row": "n1"}]
    write_rows([{**GOOD, "pair_id": "p", "prompt": 7}], rd.path("typed_prompt", "a.parquet"))
    assert dpo_rows(with_overrides(cfg, ["dpo.pairs_from=typed_prompt"])) == ([], [{"reason": "not_text", "row": "p"}])

    write_rows([{**GOOD, "pair_id": "s", "weight": "1.5", "ref_chosen_logp": "-5"},
                {**GOOD, "pair_id": "x", "weight": "abc", "ref_chosen_logp": "-5"}], rd.path("strings", "a.parquet"))
    rows, rejects = dpo_rows(with_overrides(cfg, ["dpo.pairs_from=strings"]))
    assert [(r["pair_id"], r["weight"], r["ref_chosen_logp"]) for r in rows] == [("s", 1.5, -5.0)]  # as the loss reads them
    assert rejects == [{"reason": "non_finite", "row": "x"}]

    # one pair_id three times (a copy, another pair) and a bad row under the good one's id: one pair trains
    other = {**GOOD, "chosen": "5 #### 5"}
    write_rows([other, GOOD], rd.path("dups", "a.parquet"))
    write_rows([GOOD, {**GOOD, "pair_id": "h", "weight": -1.0}, {**GOOD, "pair_id": "h"}], rd.path("dups", "b.parquet"))
    rows, rejects = dpo_rows(with_overrides(cfg, ["dpo.pairs_from=dups"]))
    assert [(r["pair_id"], r["chosen"]) for r in rows] == [("g", GOOD["chosen"]), ("h", GOOD["chosen"])]
    assert sorted((r["row"], r["reason"]) for r in rejects) == [
        ("g", "duplicate_pair_id"), ("g", "duplicate_pair_id"), ("h", "negative_weight")]
    write_rows([other, GOOD, GOOD], rd.path("dups_b", "a.parquet"))  # the same pair kept, whatever the file order
    assert dpo_rows(with_overrides(cfg, ["dpo.pairs_from=dups_b"]))[0] == rows[:1]


def test_no_usable_pairs_names_the_rejects_and_all_zero_weights_is_refused(tmp_path):
    from hsdpo.train.dpo import training_rows

    cfg = _cfg(tmp_path)
    rd = RunDir(cfg.run_dir)
    no_ref = {k: v for k, v in GOOD.items() if not k.startswith("ref_")}  # dpo pointed at the pairs, not ref_logps
    write_rows([{**no_ref, "pair_id": f"p{i}"} for i in range(3)], rd.path("pairs", "a.parquet"))
    with pytest.raises(InputError, match=r"^dpo: no usable pairs in 'pairs' \(3 rejected: missing_ref_chosen_logp 3\)$"):
        training_rows(with_overrides(cfg, ["dpo.pairs_from=pairs"]))

    write_rows([{**GOOD, "pair_id": f"p{i}", "weight": 0.0} for i in range(3)], rd.path("zero", "a.parquet"))
    zero = with_overrides(cfg, ["dpo.pairs_from=zero"])
    with pytest.raises(InputError, match=r"^dpo: every training pair in 'zero' has weight 0: every step would be a zero"
                       r" step; give the pairs weights or set dpo.weighting=uniform$"):
        training_rows(zero)
    assert len(training_rows(with_overrides(zero, ["dpo.weighting=uniform"]))[0]) == 3  # the weights unread
    write_rows([{**GOOD, "pair_id": "w", "weight": 2.0}], rd.path("zero", "b.parquet"))  # one pair with weight: it trains
    assert len(training_rows(zero)[0]) == 4


def test_sft_rows_from_a_pairs_table_count_rows_without_text(tmp_path):
    from hsdpo.train.sft import sft_rows, training_rows

    cfg = _cfg(tmp_path)
    rd = RunDir(cfg.run_dir)
    # no problem_id column; a null prompt, a blank chosen
    write_rows([{"pair_id": "a", "prompt": "Q: 1?", "chosen": "1"}, {"pair_id": "b", "prompt": None, "chosen": "2"},
                {"pair_id": "c", "prompt": "Q: 3?", "chosen": " "}, {"pair_id": "d", "prompt": "Q: 1?", "chosen": "1"}],
               rd.path("mixed", "a.parquet"))
    rows, rejects = sft_rows(with_overrides(cfg, ["sft.data_from=mixed"]))
    assert [(r["prompt"], r["completion"]) for r in rows] == [("Q: 1?", "1")]  # d is a's text again
    assert sorted((r["row"], r["reason"]) for r in rejects) == [("b", "missing_prompt"), ("c", "empty_chosen")]
    write_rows([{"pair_id": "e", "prompt": "Q: 5?", "chosen": 5}], rd.path("typed", "a.parquet"))  # a number chosen
    assert sft_rows(with_overrides(cfg, ["sft.data_from=typed"])) == ([], [{"reason": "not_text", "row": "e"}])
    write_rows([{"pair_id": "b", "prompt": None, "chosen": "2"}, {"pair_id": "c", "prompt": "Q: 3?", "chosen": " "}],
               rd.path("none_usable", "a.parquet"))
    with pytest.raises(InputError, match=r"^sft: no training rows from 'none_usable' \(2 rejected: empty_chosen 1,"
                       r" missing_prompt 1\)$"):
        training_rows(with_overrides(cfg, ["sft.data_from=none_usable"]))


# ---- the tokenised table and the losses -----------------------------------------------------------

def test_an_empty_prompt_counts_the_completion_tokens_that_are_scored(model_dir):
    """No position predicts a row's first token: with an empty prompt that is the completion's first,
    and the loss divides by the tokens it scores (not one more); none scored is a zero loss, not NaN."""
    from hsdpo.model import load_model, load_tokenizer
    from hsdpo.train.config import DPOConfig, SFTConfig
    from hsdpo.train.losses import sft_loss
    from hsdpo.train.tokenize import LogpModel
    from hsdpo.train.worker import Task

    tok, model = load_tokenizer(str(model_dir)), load_model(str(model_dir), dtype="float32")
    rows = [{"prompt": "", "completion": "12"}, {"prompt": "Question: ", "completion": "12"}]
    for pack in (False, True):
        task = Task.from_rows("sft", SFTConfig(max_length=MAXLEN, packing=pack), rows, tok)
        for idx in ([0], [1], [0, 1]):
            b = task.batch(idx)
            assert task.denominators(idx)["tokens"] == task.scored(idx) == len(b.scored), (pack, idx)
    task = Task.from_rows("sft", SFTConfig(max_length=MAXLEN), rows, tok)
    loss, _ = task.micro_step(LogpModel(model, 16), [0, 1], task.denominators([0, 1]), 1 / 2, "cpu")
    logps, ntok = LogpModel(model, 16)(*task.batch([0, 1]).logp_args())
    assert loss.item() == pytest.approx(-logps.sum().item() / ntok.sum().item(), rel=1e-6)  # 5 tokens scored, not 6
    assert sft_loss(torch.zeros(2), torch.zeros(2)).item() == 0.0  # no completion token: not 0/0
    assert sft_loss(torch.zeros(1), torch.ones(1), denominator=0).item() == 0.0
    pairs = [{"prompt": "", "chosen": "1", "rejected": "2", "weight": 1.0, "ref_chosen_logp": -1.0,
              "ref_rejected_logp": -1.0}]
    task = Task.from_rows("dpo", DPOConfig(max_length=MAXLEN, nll_coef=1.0), pairs, tok)
    assert task.denominators([0])["chosen_tokens"] == 1  # "1" + eos, the "1" unscored
    loss, m = task.micro_step(LogpModel(model, 16), [0], task.denominators([0]), 1.0, "cpu")
    assert math.isfinite(loss.item()) and math.isfinite(m["chosen_nll"].item())


def test_a_file_that_is_not_parquet_in_an_input_is_one_line_naming_it(model_dir, tmp_path, capsys):
    from hsdpo.stage import read_rows

    cfg = _cfg(tmp_path / "run", dpo={"max_length": MAXLEN, "pairs_from": "ref_a", "init_from": str(model_dir)},
               reflogp={"max_length": MAXLEN, "model_from": str(model_dir)})
    _table(cfg, "pairs", [GOOD], stage="pairs")
    _table(cfg, "ref_a", [GOOD])
    rd = RunDir(cfg.run_dir)
    for folder, content in (("pairs", b""), ("ref_a", b"PAR1 a copy that stopped")):  # empty; cut short
        bad = rd.path(folder, "part-1.parquet")
        Path(bad).write_bytes(content)
        with pytest.raises(InputError, match=rf"^{bad}: not a readable Parquet file \(ArrowInvalid: .*\); re-run the"
                           r" stage that wrote it \(with --force\) or remove the file$"):
            read_rows(rd.path(folder))
    line = "hsdpo: {}: not a readable Parquet file (ArrowInvalid: "
    assert _cli(cfg, tmp_path, capsys, "reflogp").startswith(line.format(rd.path("pairs", "part-1.parquet")))
    assert _cli(cfg, tmp_path, capsys, "dpo").startswith(line.format(rd.path("ref_a", "part-1.parquet")))
    assert _cli(cfg, tmp_path, capsys, "sft", "sft.data_from=ref_a").startswith(
        line.format(rd.path("ref_a", "part-1.parquet")))
    assert rd.manifest("dpo") is None and rd.manifest("sft") is None and rd.manifest("ref_logps") is None


# ---- the model and the tokenizer -------------------------------------------------------------------

def test_a_tokenizer_without_eos_or_larger_than_the_models_vocab_is_one_line_before_the_stage(
        model_dir, tmp_path, capsys):
    from hsdpo.model import load_model, load_tokenizer

    cfg = _cfg(tmp_path / "run", dpo={"max_length": MAXLEN, "pairs_from": "ref_a"})
    _table(cfg, "pairs", [GOOD], stage="pairs")
    _table(cfg, "ref_a", [GOOD])
    rd = RunDir(cfg.run_dir)
    noeos = tmp_path / "noeos"
    tok = load_tokenizer(str(model_dir))
    load_model(str(model_dir), dtype="float32").save_pretrained(noeos)
    tok.eos_token = None
    tok.save_pretrained(noeos)
    small = tmp_path / "small"
    model = load_model(str(model_dir), dtype="float32")
    model.resize_token_embeddings(8)  # a model of another, smaller vocabulary
    model.save_pretrained(small)
    load_tokenizer(str(model_dir)).save_pretrained(small)
    top = max(load_tokenizer(str(model_dir)).get_vocab().values())
    for stage, key in (("dpo", "dpo.init_from"), ("reflogp", "reflogp.model_from")):
        assert _cli(cfg, tmp_path, capsys, stage, f"{key}={noeos}") == (
            f"hsdpo: {stage}: the tokenizer of {noeos} has no eos token (it ends every completion and pads the"
            " batches); give it one (eos_token in its tokenizer_config.json)")
        assert _cli(cfg, tmp_path, capsys, stage, f"{key}={small}") == (
            f"hsdpo: {stage}: the tokenizer of {small} has token ids up to {top} and the model {small} embeds 8"
            " (vocab_size): they are not one model's; give the model's own tokenizer")
    assert _cli(cfg, tmp_path, capsys, "sft", "sft.data_from=ref_a", f"model.name_or_path={small}",
                f"model.tokenizer={model_dir}").startswith(f"hsdpo: sft: the tokenizer of {model_dir} has token ids up to")
    assert rd.manifest("dpo") is None and rd.manifest("sft") is None and rd.manifest("ref_logps") is None


def test_a_model_folder_that_would_fail_every_worker_is_one_line_before_the_stage(model_dir, tmp_path, capsys):
    import json
    import shutil

    def broken(name: str, change) -> Path:
        out = tmp_path / name
        shutil.copytree(model_dir, out)
        change(out)
        return out

    def cut(d: Path) -> None:
        with open(d / "model.safetensors", "r+b") as fh:
            fh.truncate((d / "model.safetensors").stat().st_size - 100)

    def sharded(d: Path) -> None:
        (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))

    size = (model_dir / "model.safetensors").stat().st_size
    cases = [
        # what transformers builds without tokenizer.json encodes every text to nothing: reflogp wrote 0.0s
        (lambda d: (d / "tokenizer.json").unlink(), "{stage}: the tokenizer of {d} turns text into no tokens (is its"
         " tokenizer.json missing?); give the model's own tokenizer"),
        (lambda d: (d / "tokenizer.json").write_text("{not json"), "{stage}: the tokenizer of {d} does not load"
         " (JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        (lambda d: (d / "config.json").write_text("{}"), "{stage}: the config.json of {d} does not load (ValueError:"
         " Unrecognized model in {d}. Should have a `model_type` key in its config.json.)"),
        (lambda d: (d / "model.safetensors").unlink(), "model {d}: no weights (no model.safetensors,"
         " pytorch_model.bin or a sharded index of them)"),
        (cut, f"model {{d}}: its model.safetensors is cut short: {size - 100} bytes of {size}; copy or export it again"),
        (lambda d: (d / "model.safetensors").write_bytes(b""), "model {d}: its model.safetensors is not a safetensors"
         " file or cut short (0 bytes); copy or export it again"),
        (sharded, "model {d}: no model-00002-of-00002.safetensors, a shard its model.safetensors.index.json names"),
    ]
    cfg = _cfg(tmp_path / "run", dpo={"max_length": MAXLEN, "pairs_from": "ref_a"})
    _table(cfg, "pairs", [GOOD], stage="pairs")
    _table(cfg, "ref_a", [GOOD])
    for i, (change, line) in enumerate(cases):
        d = broken(f"m{i}", change)
        for stage, key in (("reflogp", "reflogp.model_from"), ("dpo", "dpo.init_from")):
            assert _cli(cfg, tmp_path, capsys, stage, f"{key}={d}") == "hsdpo: " + line.format(stage=stage, d=d)
        assert _cli(cfg, tmp_path, capsys, "sft", "sft.data_from=ref_a", f"model.name_or_path={d}") == (
            "hsdpo: " + line.format(stage="sft", d=d))
    rd = RunDir(cfg.run_dir)
    assert rd.manifest("dpo") is None and rd.manifest("sft") is None and rd.manifest("ref_logps") is None
    assert rd.manifest("ref_a") is not None


# ---- the reference log-probs -----------------------------------------------------------------------

def test_reflogp_scores_pairs_with_text_passes_duplicate_ids_on_and_refuses_a_table_without_pairs(
        model_dir, tmp_path, capsys):
    from hsdpo.train.reflogp import RefLogpActor, check_rows

    actor = RefLogpActor(str(model_dir), MAXLEN, 16, use_gpu=False)
    batch = pd.DataFrame([GOOD, {**GOOD, "pair_id": "n", "prompt": None}, {**GOOD, "pair_id": "m", "rejected": 4}])
    out = actor(batch.drop(columns=["ref_chosen_logp", "ref_rejected_logp"]))
    alone = actor(pd.DataFrame([GOOD]).drop(columns=["ref_chosen_logp", "ref_rejected_logp"]))
    assert np.isfinite(out["ref_chosen_logp"][0]) and out["ref_chosen_logp"][0] < 0
    assert out["ref_chosen_logp"][0] == alone["ref_chosen_logp"][0]
    assert out["ref_rejected_logp"][0] == alone["ref_rejected_logp"][0]
    assert out[["ref_chosen_logp", "ref_rejected_logp"]].iloc[1:].isna().all().all()  # dpo rejects those

    check_rows([GOOD, GOOD, {**GOOD, "pair_id": "b"}], [GOOD, {**GOOD, "pair_id": "b"}, GOOD])  # each id as often
    with pytest.raises(RuntimeError, match="reflogp: 2 pairs in, 1 rows out"):
        check_rows([GOOD, GOOD], [GOOD])

    cfg = _cfg(tmp_path / "run", reflogp={"max_length": MAXLEN, "model_from": str(model_dir)})
    _table(cfg, "pairs", [{k: v for k, v in GOOD.items() if k != "rejected"}], stage="pairs")
    path = RunDir(cfg.run_dir).path("pairs", "pairs.parquet")
    assert _cli(cfg, tmp_path, capsys, "reflogp") == (
        f"hsdpo: reflogp: {path} has no rejected column (reflogp.pairs_from holds pairs: pair_id, prompt, chosen,"
        " rejected)")
    assert RunDir(cfg.run_dir).manifest("ref_logps") is None


def test_dpo_refuses_reference_log_probs_of_another_max_length_from_any_reflogp_output(tmp_path):
    from hsdpo.train.dpo import run_dpo

    cfg = _cfg(tmp_path, reflogp={"max_length": 32})
    _table(cfg, "ref_other", [GOOD])  # its manifest records reflogp.max_length 32
    with pytest.raises(ConfigError, match=r"^dpo.pairs_from 'ref_other' holds reference log-probs of"
                       r" reflogp.max_length 32 and dpo.max_length is 64: reference and policy log-probs must cover"
                       r" the same tokens$"):
        run_dpo(with_overrides(cfg, ["dpo.pairs_from=ref_other", f"dpo.init_from={tmp_path}/no_model"]))


def test_dpo_refuses_reference_log_probs_scored_under_other_prompt_special_tokens(tmp_path, model_dir):
    """A reflogp output records the special tokens it put before each prompt (a Llama-style BOS; none
    for this tokenizer). One that differs from the policy tokenizer's, or that an older hsdpo wrote
    without the record while the tokenizer adds a BOS, is refused before the stage."""
    from hsdpo.rundir import write_json_atomic
    from hsdpo.train.dpo import check_reference

    cfg = with_overrides(_cfg(tmp_path), ["dpo.pairs_from=ref_other"])
    _table(cfg, "ref_other", [GOOD])
    check_reference(cfg, str(model_dir))  # no record: none were put there, as this tokenizer puts none
    rd = RunDir(cfg.run_dir)
    write_json_atomic(rd.path("ref_other", "_manifest.json"), {**rd.manifest("ref_other"), "prompt_specials": 1})
    with pytest.raises(InputError, match=r"^dpo.pairs_from 'ref_other' holds reference log-probs scored with 1 special"
                       r" token\(s\) before each prompt and the policy's tokenizer puts 0 there; score them again"):
        check_reference(cfg, str(model_dir))


def test_the_checkpoint_key_ignores_topology_but_not_the_precision_use_gpu_picks(tmp_path):
    from hsdpo.train.launch import checkpoint_root

    cfg = _cfg(tmp_path)

    def key(*overrides: str) -> str:
        c = with_overrides(cfg, list(overrides))
        return checkpoint_root(c, c.dpo, [])

    assert key("dpo.num_workers=2", "dpo.micro_batch_size=2", "dpo.log_every=5") == key()
    # precision auto: fp32 on CPU, bf16 on GPU, and DeepSpeed's fp32 states do not load into a bf16 engine
    assert key("dpo.use_gpu=true") != key()
    assert key("dpo.use_gpu=true", "dpo.precision=fp32") == key("dpo.precision=fp32")
    assert key("dpo.beta=0.3") != key()


def test_the_prompt_gets_the_bos_a_sampler_sees_and_keeps_it_when_cut():
    """A Llama-style tokenizer puts a BOS in front of a text; the samplers tokenise the prompt with it
    (`tokenizer(prompts)`), so training, the reference log-probs and DPO score under the same prefix.
    The completion gets no special token but the eos."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from hsdpo.train.tokenize import encode_batch, encode_pairs, lead_specials

    vocab = {"<s>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz :?\n0123456789+=#")}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="</s>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    plain = PreTrainedTokenizerFast(tokenizer_object=core.__class__.from_str(core.to_str()), eos_token="</s>",
                                    pad_token="</s>")
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    bos = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    assert (lead_specials(bos), lead_specials(plain)) == (1, 0)

    prompt, completion = "question: 1+2?\nanswer: ", "3 #### 3"
    (e,) = [encode_batch(bos, [prompt], [completion], 64)[0]]
    sampler_ids = bos([prompt])["input_ids"][0]  # hsdpo.sampling.hf.HFSampler.generate's call
    assert sampler_ids[0] == 0 and e.input_ids[:e.prompt_len] == sampler_ids
    assert e.input_ids[e.prompt_len:] == bos(completion, add_special_tokens=False)["input_ids"] + [1]
    (q,) = [encode_batch(plain, [prompt], [completion], 64)[0]]
    assert q.input_ids == e.input_ids[1:] and q.prompt_len == e.prompt_len - 1  # no BOS where none is added

    # cut: the BOS and the prompt's last max_length // 2 - 1 tokens, on both sides of a pair
    long = "question: " + "1+" * 40 + "2?\nanswer: "
    chosen, rejected = encode_pairs(bos, [{"prompt": long, "chosen": "3", "rejected": "4 " * 30}], 32)
    full = bos(long)["input_ids"]
    for side in (chosen[0], rejected[0]):
        assert side.truncated and side.prompt_len == 16
        assert side.input_ids[:16] == [0] + full[-15:]
