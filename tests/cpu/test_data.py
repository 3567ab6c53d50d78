"""Data sources on the real shared files, the synthetic generator, rejects, and resumable stages."""

from __future__ import annotations

import codecs
import json
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest

from hsdpo.config import load_config
from hsdpo.data.config import SourceConfig, SyntheticConfig
from hsdpo.data.sources import load_source
from hsdpo.data.stage import load_problems, run_data
from hsdpo.data.synthetic import generate
from hsdpo.rundir import RunDir
from hsdpo.stage import read_rows


def test_gsm8k_train_and_test_load_with_every_answer(data_dir):
    for split, expected in [("train", 7473), ("test", 1319)]:
        rows, rejects = load_source(SourceConfig(name="gsm8k", path=str(data_dir / "gsm8k" / f"{split}.jsonl"), split=split), 0)
        assert len(rows) == expected and rejects == []
        raw = [json.loads(line) for line in (data_dir / "gsm8k" / f"{split}.jsonl").read_text().splitlines()]
        # independent check: the text after '####' is the gold answer
        assert [r["gold_answer"] for r in rows] == [a["answer"].split("####")[-1].strip() for a in raw]
        assert len({r["problem_id"] for r in rows}) == expected
        assert all(r["num_steps"] >= 1 for r in rows)


def test_math500_loads_with_every_answer(data_dir):
    rows, rejects = load_source(SourceConfig(name="math", path=str(data_dir / "math500" / "test.jsonl"), split="test"), 0)
    assert len(rows) == 500 and rejects == []
    raw = [json.loads(line) for line in (data_dir / "math500" / "test.jsonl").read_text().splitlines()]
    assert [r["gold_answer"] for r in rows] == [a["answer"].rsplit("The answer is:", 1)[1].strip() for a in raw]
    assert rows[0]["gold_answer"] == r"\left( 3, \frac{\pi}{2} \right)"


def test_math500_in_the_hubs_layout_takes_the_answer_field(data_dir, tmp_path):
    """The hub's MATH-500 rows are `problem`, `solution` (no `The answer is:` line) and `answer`.
    Rebuilt from the local file: every gold answer is the row's own, also where the solution's
    prose says "the answer is" before its box (7 of the 500)."""
    raw = [json.loads(line) for line in (data_dir / "math500" / "test.jsonl").read_text().splitlines()]
    hub = []
    for r in raw:
        solution, _, answer = r["answer"].rpartition("The answer is:")
        hub.append({"problem": r["question"], "solution": solution.strip(), "answer": answer.strip()})
    path = tmp_path / "math500_hub.jsonl"
    path.write_text("".join(json.dumps(h) + "\n" for h in hub))
    rows, rejects = load_source(SourceConfig(name="math", path=str(path), split="test"), 0)
    assert rejects == [] and [r["gold_answer"] for r in rows] == [h["answer"] for h in hub]
    assert [r["gold_solution"] for r in rows] == [h["solution"] for h in hub]


def test_metamathqa_local_json_in_hub_format(tmp_path):
    recs = [
        {"query": "What is 2+3?", "response": "2+3=5\nThe answer is: 5", "type": "GSM_Rephrased"},
        {"query": "Find x.", "response": "So $x=\\boxed{\\frac{1}{2}}$.\nThe answer is: \\frac{1}{2}", "type": "MATH_AnsAug"},
        {"query": "", "response": "The answer is: 1", "type": "GSM_SV"},
        {"query": "No answer?", "response": "I do not know.", "type": "GSM_SV"},
        {"response": "The answer is: 3", "type": "GSM_SV"},
    ]
    path = tmp_path / "mm.json"
    path.write_text(json.dumps(recs))
    rows, rejects = load_source(SourceConfig(name="metamathqa", path=str(path)), 0)
    assert [r["gold_answer"] for r in rows] == ["5", "\\frac{1}{2}"]
    assert [r["source"] for r in rows] == ["metamathqa/GSM_Rephrased", "metamathqa/MATH_AnsAug"]
    assert sorted(r["reason"] for r in rejects) == ["empty_text", "missing_field:query", "unparseable_gold"]


def test_a_source_file_on_a_uri_reads_like_a_local_one(data_dir):
    import fsspec

    uri = "memory://data-bucket/gsm8k/test.jsonl"  # stands in for s3:// or gs://
    lines = (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:20]
    with fsspec.open(uri, "w") as f:
        f.write("\n".join(lines[:10] + ["{not json"] + lines[10:]) + "\n")
    rows, rejects = load_source(SourceConfig(name="gsm8k", path=uri), 0)
    local = [json.loads(line) for line in lines]
    assert [r["question"] for r in rows] == [r["question"] for r in local]
    assert [r["reason"] for r in rejects] == ["bad_json"]
    missing = "memory://data-bucket/none.jsonl"
    with pytest.raises(FileNotFoundError, match=f"^data file not found: {missing}$"):
        load_source(SourceConfig(name="gsm8k", path=missing), 0)


def _recheck(solution: str) -> bool:
    """Independent of the generator: every <<a op b=c>> holds, chained, and #### is the last result."""
    results = []
    for expr, result in re.findall(r"<<([^=>]+)=([^>]+)>>", solution):
        m = re.fullmatch(r"(\d+)([-+*/])(\d+)", expr)
        if not m:
            return False
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        value = {"+": Fraction(a + b), "-": Fraction(a - b), "*": Fraction(a * b), "/": Fraction(a, b)}[op]
        if value != Fraction(result) or (results and a != results[-1]) or value < 0:
            return False
        results.append(value)
    return bool(results) and Fraction(solution.rsplit("####", 1)[1].strip()) == results[-1]


def test_synthetic_is_deterministic_and_always_right():
    cfg = SyntheticConfig(num_problems=10_000, min_steps=1, max_steps=4, max_value=50, ops=["add", "sub", "mul", "div", "double", "half"])
    a, b = list(generate(cfg, 7)), list(generate(cfg, 7))
    assert a == b and a != list(generate(cfg, 8))
    assert all(_recheck(p["answer"]) for p in a)
    assert {p["num_steps"] for p in a} == {1, 2, 3, 4}
    assert all(p["answer"].count("<<") == p["num_steps"] for p in a)


def test_synthetic_respects_knobs():
    cfg = SyntheticConfig(num_problems=500, min_steps=2, max_steps=2, max_value=9, ops=["add"])
    for p in generate(cfg, 0):
        assert p["num_steps"] == 2 and "+" in p["answer"] and "-" not in p["answer"]
        assert all(int(n) <= 9 for n in re.findall(r"(?:has|gets) (\d+)", p["question"]))


def _recipe(tmp_path: Path, data_dir: Path, extra: str = "") -> Path:
    bad = tmp_path / "bad.jsonl"
    if not bad.exists():  # written again, it would be a changed data file (its mtime), and problems/ stale
        bad.write_text(
            '{"question": "Q1?", "answer": "1+1=<<1+1=2>>2\\n#### 2"}\n'
            "{not json\n"
            '{"question": "Q2?"}\n'
            '{"question": "Q3?", "answer": "no final answer here"}\n'
            '[1, 2]\n'
        )
    p = tmp_path / "recipe.yaml"
    p.write_text(
        f"""run_dir: {tmp_path / 'run'}
data:
  sources:
    - {{name: gsm8k, path: {data_dir / 'gsm8k' / 'test.jsonl'}, split: test, limit: 50}}
    - {{name: gsm8k, path: {bad}, split: train}}
    - {{name: synthetic, split: train, synthetic: {{num_problems: 300}}}}
{extra}"""
    )
    return p


def test_data_stage_writes_problems_rejects_and_manifest(tmp_path, data_dir):
    cfg = load_config(_recipe(tmp_path, data_dir))
    res = run_data(cfg)
    assert res.rows == {"problems": 351, "test": 50, "train": 301}
    assert res.rejects == {"bad_json": 1, "missing_field:answer": 1, "unparseable_gold": 1, "not_an_object": 1}
    rd = RunDir(cfg.run_dir)
    m = rd.manifest("problems")
    assert m["status"] == "complete" and m["rows"]["problems"] == 351 and m["config"]["run_dir"] == cfg.run_dir
    rejects = read_rows(rd.path("problems", "_rejects"))
    assert sorted(r["reason"] for r in rejects) == sorted(res.rejects)
    assert len(load_problems(cfg, split="test")) == 50
    # current -> skipped; a changed data section -> re-run; --force -> re-run
    assert run_data(cfg).skipped
    assert not run_data(cfg, force=True).skipped


def test_changed_config_reruns(tmp_path, data_dir):
    cfg = load_config(_recipe(tmp_path, data_dir))
    run_data(cfg)
    assert run_data(load_config(_recipe(tmp_path, data_dir), ["dpo.beta=0.3"])).skipped  # dpo is not an input
    assert not run_data(load_config(_recipe(tmp_path, data_dir), ["seed=5"])).skipped


KILL_SCRIPT = r"""
import os, signal, sys
import hsdpo.stage as stage
from hsdpo.config import load_config
from hsdpo.data.stage import run_data
real = stage.write_rows
def write_then_die(rows, path, schema=None):
    # write a truncated file as a half-finished write would, then die without cleanup
    n = real(rows[: len(rows) // 2], path, schema)
    os.kill(os.getpid(), signal.SIGKILL)
import hsdpo.data.stage as ds
ds.write_rows = write_then_die
run_data(load_config(sys.argv[1]))
"""


def test_killed_stage_reruns_to_exactly_clean_rows(tmp_path, data_dir):
    recipe = _recipe(tmp_path, data_dir)
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(recipe)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    cfg = load_config(recipe)
    rd = RunDir(cfg.run_dir)
    assert rd.manifest("problems") is None  # killed: no manifest
    assert (tmp_path / "run" / "_locks" / "problems.json").exists()  # nor a release of its lock: taken over below
    assert 0 < len(read_rows(rd.path("problems"))) < 351  # the partial write is there
    assert not run_data(cfg).skipped
    clean = load_config(recipe, [f"run_dir={tmp_path / 'clean'}"])
    run_data(clean)
    key = lambda r: r["problem_id"]
    assert sorted(read_rows(rd.path("problems")), key=key) == sorted(read_rows(RunDir(clean.run_dir).path("problems")), key=key)


def test_missing_data_file_is_one_line_error_and_keeps_the_previous_problems(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(f"run_dir: {tmp_path}/run\ndata: {{sources: [{{name: synthetic, synthetic: {{num_problems: 20}}}}]}}\n")
    assert subprocess.run([sys.executable, "-m", "hsdpo.cli", "data", str(p)], capture_output=True).returncode == 0
    before = RunDir(f"{tmp_path}/run").manifest("problems")
    p.write_text(f"run_dir: {tmp_path}/run\ndata: {{sources: [{{name: gsm8k, path: {tmp_path}/none.jsonl}}]}}\n")
    proc = subprocess.run([sys.executable, "-m", "hsdpo.cli", "data", str(p)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"hsdpo: data file not found: {tmp_path}/none.jsonl (data.sources.0.path)"
    assert RunDir(f"{tmp_path}/run").manifest("problems") == before and before["status"] == "complete"


def test_an_unloadable_hub_dataset_is_one_line(monkeypatch):
    """No network and nothing cached: one InputError naming the source and the way out, not a traceback."""
    import datasets
    from huggingface_hub import constants

    from hsdpo.config import InputError
    from hsdpo.data.config import SourceConfig
    from hsdpo.data.sources import read_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError) as err:
        next(read_hub(SourceConfig(name="gsm8k", split="train", hub_id="hsdpo-test/no-such-dataset")))
    text = str(err.value)
    assert text.startswith("data source gsm8k: hub dataset hsdpo-test/no-such-dataset (split train) cannot be loaded")
    assert text.endswith("a local copy goes in its path") and "\n" not in text


def test_a_row_whose_num_steps_is_no_whole_number_is_a_counted_reject(tmp_path):
    sol = '"answer": "1+1=<<1+1=2>>2\\n#### 2"'
    steps = ['"many"', "NaN", "[2]", "2.5", "-1", "true", "1e400", str(2**64), '"3"', "2.0", "0", "null"]
    lines = [f'{{"question": "Q{i}?", {sol}, "num_steps": {s}}}' for i, s in enumerate(steps)]
    lines += ['{"question": "Q\\ud800?", ' + sol + "}", '"\\ud800"']  # lone surrogates: no Parquet string
    path = tmp_path / "steps.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows, rejects = load_source(SourceConfig(name="gsm8k", path=str(path)), 0)
    assert [r["num_steps"] for r in rows] == [3, 2, 1, 1]
    assert [r["reason"] for r in rejects] == ["bad_num_steps"] * 8 + ["bad_text", "not_an_object"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run_dir: {tmp_path}/run\ndata: {{sources: [{{name: gsm8k, path: {path}}}]}}\n")
    res = run_data(load_config(recipe))
    assert res.rows["problems"] == 4 and res.rejects == {"bad_num_steps": 8, "bad_text": 1, "not_an_object": 1}
    assert len(read_rows(RunDir(f"{tmp_path}/run").path("problems", "_rejects"))) == 10


def test_a_line_not_in_utf8_is_a_counted_reject_and_a_byte_order_mark_is_allowed(tmp_path):
    good = '{"question": "Q%d?", "answer": "1+1=<<1+1=2>>2\\n#### 2"}'
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + (good % 0).encode() + b"\n" + (good % 1).encode("utf-16")
                     + b"\n" + (good % 2).replace("Q", "Q\u00e9").encode("latin-1") + b"\n" + (good % 3).encode())
    rows, rejects = load_source(SourceConfig(name="gsm8k", path=str(path)), 0)
    assert [r["question"] for r in rows] == ["Q0?", "Q3?"]
    assert [r["reason"] for r in rejects] == ["bad_encoding"] * 2
    assert rejects[1]["row"].startswith("line 3: not UTF-8 at byte 15: ")  # where the latin-1 é is
    array = tmp_path / "array.json"
    array.write_bytes(codecs.BOM_UTF8 + b" \n" * 40_000 + f"[{good % 0}]".encode())
    assert [r["question"] for r in load_source(SourceConfig(name="gsm8k", path=str(array)), 0)[0]] == ["Q0?"]


def _fails_and_keeps(tmp_path, capsys, sources: str) -> str:
    """Run `hsdpo data` on a run dir with complete problems/; return its one stderr line after
    checking that the previous problems/ and manifest are untouched."""
    from hsdpo.cli import main

    p = tmp_path / "r.yaml"
    rd = RunDir(f"{tmp_path}/run")
    if rd.manifest("problems") is None:
        p.write_text(f"run_dir: {tmp_path}/run\ndata: {{sources: [{{name: synthetic, synthetic: {{num_problems: 20}}}}]}}\n")
        assert main(["data", str(p)]) == 0
    before, rows = rd.manifest("problems"), read_rows(rd.path("problems"))
    capsys.readouterr()
    p.write_text(f"run_dir: {tmp_path}/run\ndata: {{sources: {sources}}}\n")
    assert main(["data", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert rd.manifest("problems") == before and read_rows(rd.path("problems")) == rows and len(rows) == 20
    return err[-1]


def test_an_unreadable_source_or_no_usable_problem_is_one_line_and_keeps_the_previous_problems(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"question": "Q?", "answer": "#### 1"},\n')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('[{"question": "Combien font 1+1 ?", "answer": "Réponse #### 2"}]'.encode("latin-1"))
    parquet = tmp_path / "problems.parquet"
    pd.DataFrame({"question": ["Q?"], "answer": ["#### 1"]}).to_parquet(parquet)
    useless = tmp_path / "useless.jsonl"
    useless.write_bytes(b'{"question": "Q\xff?"}\nnot json\n')
    assert _fails_and_keeps(tmp_path, capsys, f"[{{name: gsm8k, path: {broken}}}]") == \
        f"hsdpo: data file {broken} is not valid JSON: Expecting value at line 2"
    assert _fails_and_keeps(tmp_path, capsys, f"[{{name: gsm8k, path: {deep}}}]") == \
        f"hsdpo: data file {deep} is not usable JSON: nested too deeply"
    assert _fails_and_keeps(tmp_path, capsys, f"[{{name: gsm8k, path: {latin1}}}]") == \
        f"hsdpo: data file {latin1} is not UTF-8: byte 48 is 0xe9"
    assert _fails_and_keeps(tmp_path, capsys, f"[{{name: gsm8k, path: {parquet}}}]") == \
        f"hsdpo: data file {parquet} is Parquet; sources are JSON or JSONL (one object a line)"
    assert _fails_and_keeps(tmp_path, capsys, f"[{{name: gsm8k, path: {useless}}}]") == \
        "hsdpo: data: no usable problems: 2 rows rejected (1 bad_encoding, 1 bad_json); check data.sources"


def test_sources_of_one_format_split_and_seed_get_ids_of_their_own(tmp_path, data_dir):
    lines = (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(lines[:3]) + "\n")
    b.write_text("\n".join(lines[3:5]) + "\n")
    p = tmp_path / "r.yaml"
    p.write_text(f"run_dir: {tmp_path}/run\ndata: {{sources: [{{name: gsm8k, path: {a}}}, {{name: gsm8k, path: {b}}},"
                 f" {{name: gsm8k, path: {b}, seed: 1}}, {{name: gsm8k, path: {b}}}]}}\n")
    run_data(load_config(p))
    ids = [r["problem_id"] for r in read_rows(RunDir(f"{tmp_path}/run").path("problems"))]
    # the first of a kind and a source of its own seed keep the ids they had
    assert ids == [f"gsm8k-train-0-{i:07d}" for i in range(3)] + [f"gsm8k-train-0-s1-{i:07d}" for i in range(2)] + \
        [f"gsm8k-train-1-{i:07d}" for i in range(2)] + [f"gsm8k-train-0-s3-{i:07d}" for i in range(2)]
