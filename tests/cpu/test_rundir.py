"""Run directories on a URI: model folders are fetched to a local cache and stage folders are written
locally, then copied. fsspec's `memory://` filesystem stands in for an object store in the unit
tests (no real folders, keys only); a local S3 server (moto) with the real s3fs and pyarrow clients
checks a stage, a model and a Ray Train run with its checkpoints on S3; the smoke pipeline test runs
every stage against a `file://` run dir."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import fsspec
import pytest

from hsdpo.rundir import fetch_dir, local_dir, push_dir


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("HSDPO_CACHE", str(root))
    return root


@pytest.fixture
def bucket() -> str:
    return f"memory://bucket-{uuid.uuid4().hex[:8]}"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(1000))
    (src / "sub" / "deeper" / "x.txt").write_text("x")
    return src


def test_push_then_fetch_round_trips_a_nested_folder_once_a_machine(tmp_path, cache, bucket):
    src = _folder(tmp_path)
    assert sorted(push_dir(str(src), f"{bucket}/run/sft/model")) == ["config.json", "sub/deeper/x.txt", "sub/weights.bin"]
    local = fetch_dir(f"{bucket}/run/sft/model")
    assert Path(local).is_relative_to(cache) and _tree(Path(local)) == _tree(src)
    (Path(local) / "marker").write_text("kept")  # a second fetch of the same files reuses the copy
    assert fetch_dir(f"{bucket}/run/sft/model") == local and (Path(local) / "marker").exists()
    assert not [p for p in (cache / "fetched").iterdir() if ".part-" in p.name]  # no download left behind


def test_a_rewritten_folder_is_fetched_anew(tmp_path, cache, bucket):
    src = _folder(tmp_path)
    push_dir(str(src), f"{bucket}/m")
    first = fetch_dir(f"{bucket}/m")
    (src / "config.json").write_text('{"a": 2, "b": 3}')  # a re-run stage wrote another model
    push_dir(str(src), f"{bucket}/m")
    second = fetch_dir(f"{bucket}/m")
    assert second != first and (Path(second) / "config.json").read_text() == '{"a": 2, "b": 3}'


def test_local_paths_pass_through_and_a_missing_uri_names_itself(tmp_path, cache, bucket):
    assert fetch_dir(str(tmp_path)) == str(tmp_path)
    assert fetch_dir("Qwen/Qwen2.5-1.5B") == "Qwen/Qwen2.5-1.5B"  # hub ids are not URIs
    with pytest.raises(FileNotFoundError, match=f"{bucket}/nothing"):
        fetch_dir(f"{bucket}/nothing")


def test_local_dir_copies_a_finished_block_and_nothing_of_a_failed_one(bucket):
    fs = fsspec.filesystem("memory")
    with local_dir(f"{bucket}/done") as d:
        Path(d, "model").mkdir()
        Path(d, "model", "w.bin").write_bytes(b"123")
    assert fs.cat(f"{bucket}/done/model/w.bin") == b"123" and not os.path.exists(d)
    with pytest.raises(RuntimeError):
        with local_dir(f"{bucket}/failed") as d:
            Path(d, "half.bin").write_bytes(b"1")
            raise RuntimeError("training died")
    assert not fs.exists(f"{bucket}/failed/half.bin") and not os.path.exists(d)


def test_a_model_on_a_uri_loads_and_generates(tiny_model_dir, cache, bucket):
    from hsdpo.model import load_model, load_tokenizer, resolve_model_path

    push_dir(str(tiny_model_dir), f"{bucket}/run/sft/model")
    path = resolve_model_path(f"{bucket}/run", "sft")
    assert path == f"{bucket}/run/sft/model"
    tok, model = load_tokenizer(path), load_model(path, dtype="float32")
    ids = tok("Question: 1 + 2?\nAnswer: ", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3


def test_processes_fetching_at_once_download_once(tmp_path, cache, monkeypatch):
    """Four fetchers of one model (say the trainer ranks of a node) at once: one download, one copy."""
    from concurrent.futures import ThreadPoolExecutor

    from fsspec.implementations.local import LocalFileSystem

    src = _folder(tmp_path)
    downloads = []
    real_get_file = LocalFileSystem.get_file

    def counted(self, rpath, lpath, **kw):
        downloads.append(rpath)
        return real_get_file(self, rpath, lpath, **kw)

    monkeypatch.setattr(LocalFileSystem, "get_file", counted)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: fetch_dir(f"file://{src}"), range(4)))
    assert len(set(got)) == 1 and _tree(Path(got[0])) == _tree(src)
    assert len(downloads) == 3  # each of the three files once
    assert sorted(p.name for p in (cache / "fetched").iterdir() if p.is_dir()) == [Path(got[0]).name]


# ---- a real S3 protocol: s3fs against a local S3 server (moto) -------------------------------------

@pytest.fixture(scope="module")
def s3_bucket(tmp_path_factory):
    """An S3 endpoint on localhost, reached the way a user reaches MinIO or any S3-compatible store:
    credentials and AWS_ENDPOINT_URL_S3 in the environment."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "HSDPO_CACHE": str(tmp_path_factory.mktemp("s3cache"))}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        # fsspec caches filesystem instances with their session: one an earlier test made under other
        # credentials must not serve these tests, nor theirs later ones
        fsspec.filesystem("s3").clear_instance_cache()
        fsspec.filesystem("s3").mkdir("hsdpo-test")
        yield "s3://hsdpo-test"
        fsspec.filesystem("s3").clear_instance_cache()
    server.stop()


def test_a_stage_on_s3_writes_its_manifest_last_and_is_skipped_when_current(s3_bucket):
    from hsdpo.config import config_from_dict
    from hsdpo.data.stage import run_data
    from hsdpo.rundir import RunDir
    from hsdpo.stage import read_rows

    cfg = config_from_dict({"run_dir": f"{s3_bucket}/run-data",
                            "data": {"sources": [{"name": "synthetic", "synthetic": {"num_problems": 12}}]}})
    first = run_data(cfg)
    assert not first.skipped and first.rows["problems"] == 12
    manifest = RunDir(cfg.run_dir).manifest("problems")
    assert manifest["status"] == "complete" and manifest["rows"]["problems"] == 12
    assert len(read_rows(RunDir(cfg.run_dir).path("problems"))) == 12
    assert run_data(cfg).skipped  # complete and current, read back from the bucket


def test_a_model_round_trips_through_s3(tiny_model_dir, s3_bucket):
    from hsdpo.model import load_model, load_tokenizer, resolve_model_path

    with local_dir(f"{s3_bucket}/run-model/sft/model") as d:  # as the trainer's rank 0 writes it
        for f in tiny_model_dir.iterdir():
            Path(d, f.name).write_bytes(f.read_bytes())
    path = resolve_model_path(f"{s3_bucket}/run-model", "sft")
    assert path == f"{s3_bucket}/run-model/sft/model"
    local = fetch_dir(path)
    assert _tree(Path(local)) == _tree(tiny_model_dir) and fetch_dir(path) == local
    tok, model = load_tokenizer(path), load_model(path, dtype="float32")
    ids = tok("Question: 1 + 2?\nAnswer: ", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id).shape[1] > 2
    with local_dir(path) as d:  # a re-run stage rewrites the model
        Path(d, "config.json").write_text((tiny_model_dir / "config.json").read_text() + " ")
    assert fetch_dir(path) != local  # a changed file is fetched anew


TRAIN_ON_S3 = """
import json, ray
from hsdpo.config import config_from_dict
from hsdpo.data.stage import run_data
from hsdpo.train.sft import run_sft
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True, object_store_memory=256 * 2**20)
cfg = config_from_dict({"run_dir": RUN_DIR,
    "model": {"preset": "micro", "build_tokenizer": {"kind": "char"}, "max_position_embeddings": 128},
    "data": {"sources": [{"name": "synthetic", "synthetic": {"num_problems": 16}}]},
    "sft": {"steps": 3, "batch_size": 4, "micro_batch_size": 4, "max_length": 64, "lr": 3e-3,
            "checkpoint_every": 1, "fail_at_step": 2, "max_failures": 1}})
run_data(cfg)
r = run_sft(cfg)
print("RESULT " + json.dumps({"steps": r.metrics["steps"], "skipped": r.skipped}))
"""


def test_ray_train_checkpoints_on_s3_and_a_worker_failure_resumes_from_the_bucket(s3_bucket, tmp_path):
    """Ray Train's own storage (pyarrow's S3 client, found through the same environment) holds the
    checkpoints; rank 0 raises once at step 2 and the run resumes from the step-1 checkpoint read
    back from the bucket. Its own Ray, in a subprocess, so the workers inherit the S3 environment."""
    import subprocess
    import sys

    from hsdpo.model import load_model, load_tokenizer

    run_dir = f"{s3_bucket}/run-train"
    script = tmp_path / "train_on_s3.py"
    script.write_text(f"RUN_DIR = {run_dir!r}\n" + TRAIN_ON_S3)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert result and result[-1] == 'RESULT {"steps": 3, "skipped": false}', proc.stdout[-3000:]
    assert "resumed at step 1" in proc.stdout + proc.stderr  # from the checkpoint in the bucket
    fs = fsspec.filesystem("s3")
    left = [p for p in fs.find(f"{s3_bucket}/run-train/_checkpoints") if not p.endswith("/")]
    assert left == []  # checkpoints removed after the run
    path = f"{run_dir}/sft/model"
    tok, model = load_tokenizer(path), load_model(path, dtype="float32")
    ids = tok("Question: 1 + 2?\nAnswer: ", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id).shape[1] > 2


# ---- one writer a stage: the stage lock ----------------------------------------------------------

def _synthetic(run_dir: str, n: int = 12):
    from hsdpo.config import config_from_dict

    return config_from_dict({"run_dir": run_dir, "data": {"sources": [{"name": "synthetic", "synthetic": {"num_problems": n}}]}})


def test_a_second_run_of_a_stage_is_refused_while_the_first_holds_it_and_its_output_is_kept(tmp_path):
    """The second run is another process (the CLI, as a second `ray job submit` would start it): one
    line naming the holder, exit 2, the folder and manifest the first wrote untouched."""
    import subprocess
    import sys

    from hsdpo.data.stage import run_data
    from hsdpo.rundir import RunDir
    from hsdpo.stagelock import stage_lock

    run = tmp_path / "run"
    run_data(_synthetic(str(run)))
    before = RunDir(str(run)).manifest("problems")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run_dir: {run}\ndata: {{sources: [{{name: synthetic, synthetic: {{num_problems: 30}}}}]}}\n")
    with stage_lock(str(run), "problems"):
        proc = subprocess.run([sys.executable, "-m", "hsdpo.cli", "data", str(recipe)], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith(f"hsdpo: problems in {run} is being written by another run (host ")
        assert f"pid {os.getpid()}" in line and f"or remove {run}/_locks/problems.json if that run is gone" in line
        assert RunDir(str(run)).manifest("problems") == before
    assert not (run / "_locks" / "problems.json").exists()  # released
    proc = subprocess.run([sys.executable, "-m", "hsdpo.cli", "data", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert RunDir(str(run)).manifest("problems")["rows"]["problems"] == 30


def test_a_stage_that_fails_releases_its_lock(tmp_path):
    from hsdpo.plan import Plan
    from hsdpo.rundir import StageResult
    from hsdpo.stage import run_stage

    def body(out: str) -> StageResult:
        raise RuntimeError("boom")

    cfg = _synthetic(str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match="boom"):
        run_stage(cfg, Plan("data", "problems", (), ("data",)), body=body)
    assert not (tmp_path / "run" / "_locks" / "problems.json").exists()


def test_a_ctrl_c_just_after_the_lock_is_created_still_releases_it(tmp_path, monkeypatch):
    """The interrupt lands inside the create, after the file is in place (the window the Ctrl-C test
    hits on a loaded machine): the lock is removed on the way out; a busy lock is left to its holder."""
    from hsdpo import stagelock

    create = stagelock._create

    def then_interrupted(fs, p, data):
        assert create(fs, p, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(stagelock, "_create", then_interrupted)
    lock = tmp_path / "run" / "_locks" / "problems.json"
    with pytest.raises(KeyboardInterrupt):
        with stagelock.stage_lock(str(tmp_path / "run"), "problems"):
            pass
    assert not lock.exists()
    monkeypatch.setattr(stagelock, "_create", create)
    with stagelock.stage_lock(str(tmp_path / "run"), "problems"):
        held = lock.read_bytes()
        with pytest.raises(stagelock.StageBusy):
            with stagelock.stage_lock(str(tmp_path / "run"), "problems"):
                pass
        assert lock.read_bytes() == held  # the refused run leaves the holder's lock
    assert not lock.exists()


def test_an_output_that_is_another_stages_folder_is_refused_and_that_folder_kept(tmp_path):
    from hsdpo.config import ConfigError, with_overrides
    from hsdpo.data.stage import run_data
    from hsdpo.plan import Plan
    from hsdpo.rundir import RunDir, StageResult
    from hsdpo.stage import run_stage

    run = tmp_path / "run"
    cfg = _synthetic(str(run))
    run_data(cfg)
    before, files = RunDir(str(run)).manifest("problems"), _tree(run / "problems")
    ran = []

    def body(out: str) -> StageResult:
        ran.append(out)
        return StageResult("reflogp", "problems", out)

    # reflogp.output=problems used to replace the problems with log-probs (and re-make both forever)
    with pytest.raises(ConfigError, match=rf"^reflogp.output 'problems' holds the output of data \({run}/problems\); set"
                       r" reflogp.output to another folder, or remove that one to replace it$"):
        run_stage(cfg, Plan("reflogp", "problems", (), ("seed",)), body=body, force=True)
    assert ran == [] and RunDir(str(run)).manifest("problems") == before and _tree(run / "problems") == files
    run_data(with_overrides(cfg, ["data.sources.0.synthetic.num_problems=5"]))  # the stage that wrote it may
    assert RunDir(str(run)).manifest("problems")["rows"]["problems"] == 5


CTRL_C = r"""
import json, signal, subprocess, sys, time
from pathlib import Path
lock, recipe = Path(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGINT, signal.SIG_DFL)  # inherited by the CLI, as from a terminal
proc = subprocess.Popen([sys.executable, "-m", "hsdpo.cli", "data", recipe], stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE, text=True)
t0 = time.monotonic()
while not lock.exists() and proc.poll() is None and time.monotonic() - t0 < 60:
    time.sleep(0.01)
held, running = lock.exists(), proc.poll() is None
proc.send_signal(signal.SIGINT)
_, err = proc.communicate(timeout=60)
print(json.dumps({"held": held, "running": running, "rc": proc.returncode, "err": err}))
"""


def test_ctrl_c_during_a_stage_is_one_line_and_puts_the_previous_output_back(tmp_path):
    """The CLI is started and sent SIGINT by a helper process that gives it the default SIGINT
    disposition: a test run started in the background (`make test &`, some CI runners) ignores
    SIGINT, every process it starts inherits that, and Python then never raises KeyboardInterrupt.
    The helper records whether the stage held its lock and was still running when the signal went,
    so a failure says which went wrong."""
    import json
    import subprocess
    import sys

    from hsdpo.data.stage import run_data
    from hsdpo.rundir import RunDir

    run = tmp_path / "run"
    run_data(_synthetic(str(run)))
    before = RunDir(str(run)).manifest("problems")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run_dir: {run}\ndata: {{sources: [{{name: synthetic, synthetic: {{num_problems: 300000}}}}]}}\n")
    lock = run / "_locks" / "problems.json"
    helper = subprocess.run([sys.executable, "-c", CTRL_C, str(lock), str(recipe)], capture_output=True, text=True,
                            timeout=180)
    assert helper.stdout.strip(), helper.stderr
    got = json.loads(helper.stdout.strip().splitlines()[-1])
    assert got["held"] and got["running"], got  # the signal went while the stage ran
    assert got["rc"] == 130, got["err"]
    assert got["err"].strip().splitlines()[-1] == ("hsdpo: interrupted; run the command again to go on (a training"
                                                   " stage resumes from its latest checkpoint)")
    assert RunDir(str(run)).manifest("problems") == before and not lock.exists()


def test_an_argument_that_is_not_utf8_is_one_line_before_anything_runs(tmp_path, capsys):
    from hsdpo.cli import main

    # Python keeps the byte as a surrogate; Ray's init failed encoding the command line
    assert main(["data", str(tmp_path / "none.yaml"), f"run_dir={tmp_path}/r\udcff"]) == 2
    assert capsys.readouterr().err.strip() == (f"hsdpo: argument {f'run_dir={tmp_path}/r'.encode() + bytes([255])!r}"
                                               " is not UTF-8 text; give paths and values in UTF-8")
    assert not (tmp_path / "r\udcff").exists()


def _lock_file(run: Path, holder: dict) -> Path:
    import json

    p = run / "_locks" / "problems.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(holder))
    return p


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, capfd):
    """Same host, process gone: taken over at once. Another host: taken over once its heartbeat is
    older than STALE_S, refused before."""
    import socket
    import subprocess
    import sys
    import time

    from hsdpo.data.stage import run_data
    from hsdpo.stagelock import STALE_S, StageBusy, _pid_namespace

    run = tmp_path / "run"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    # the same host name in another pid namespace (a container on the host network): its pids are
    # not this one's to look up, so only its heartbeat tells
    here = {"host": socket.gethostname(), "pid": int(gone.stdout), "token": "t", "started": now, "heartbeat": now}
    lock = _lock_file(run, {**here, "pidns": "pid:[1]"})
    with pytest.raises(StageBusy):
        run_data(_synthetic(str(run)))
    _lock_file(run, {**here, "pidns": _pid_namespace()})
    assert not run_data(_synthetic(str(run))).skipped
    assert "has exited" in capfd.readouterr().err and not lock.exists()

    _lock_file(run, {"host": "another-node", "pid": 1, "token": "t", "started": now, "heartbeat": now - 30})
    with pytest.raises(StageBusy, match="host another-node, pid 1"):
        run_data(_synthetic(str(run), 20))
    _lock_file(run, {"host": "another-node", "pid": 1, "token": "t", "started": now, "heartbeat": now - STALE_S - 5})
    assert run_data(_synthetic(str(run), 20)).rows["problems"] == 20
    assert "its last heartbeat is over" in capfd.readouterr().err and not lock.exists()


@pytest.mark.parametrize("where", ["local", "local without hard links", "s3"])
def test_of_runs_starting_at_once_exactly_one_takes_the_lock(where, tmp_path, request, monkeypatch):
    """Eight threads race for one lock through the store's exclusive create (a hard link locally,
    O_EXCL where the filesystem has no hard links, If-None-Match on S3): one holds it, seven are
    refused."""
    import threading

    from hsdpo.stagelock import StageBusy, stage_lock

    if where == "local without hard links":
        def no_links(src, dst):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_links)
    run = str(tmp_path / "run") if where != "s3" else f"{request.getfixturevalue('s3_bucket')}/race-{uuid.uuid4().hex[:6]}"
    start, held, outcomes = threading.Barrier(8), threading.Event(), []

    def contend() -> None:
        start.wait()
        try:
            with stage_lock(run, "pairs"):
                outcomes.append("held")
                held.wait(5)
        except StageBusy:
            outcomes.append("busy")
            if outcomes.count("busy") == 7:
                held.set()

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["busy"] * 7 + ["held"]
    fs, p = fsspec.core.url_to_fs(f"{run}/_locks/pairs.json")
    assert not fs.exists(p)


def test_a_holder_renews_its_lock_while_it_runs(tmp_path, monkeypatch):
    import json
    import time

    from hsdpo import stagelock

    monkeypatch.setattr(stagelock, "HEARTBEAT_S", 0.05)
    lock = tmp_path / "run" / "_locks" / "sft.json"
    with stagelock.stage_lock(str(tmp_path / "run"), "sft"):
        first = json.loads(lock.read_text())
        time.sleep(0.5)
        later = json.loads(lock.read_text())
    assert later["token"] == first["token"] and later["heartbeat"] > first["heartbeat"]
    assert not lock.exists()


# ---- the previous output, kept while a stage runs again ----------------------------------------

def test_a_stage_whose_body_fails_puts_its_previous_output_back_and_keeps_what_the_failed_run_wrote(tmp_path, capfd):
    """An error found only halfway (here: after a file is written) leaves the last complete output,
    manifest and rows as they were, so the stages after it stay current; the failed run's files are
    in `_failed/` with a record of the error, which `hsdpo status` names; the next successful run
    leaves nothing set aside."""
    import json

    from hsdpo.config import InputError
    from hsdpo.data.stage import run_data
    from hsdpo.plan import plan
    from hsdpo.rundir import RunDir, StageResult
    from hsdpo.stage import read_rows, run_stage
    from hsdpo.status import step_status

    run = tmp_path / "run"
    cfg = _synthetic(str(run))
    run_data(cfg)
    rd = RunDir(str(run))
    before, rows, h = rd.manifest("problems"), read_rows(rd.path("problems")), rd.input_hashes(["problems"])
    seen = []

    def body(out: str) -> StageResult:
        seen.append(sorted(os.listdir(out)))  # an empty folder, the old output set aside
        assert (Path(out).parent / "_previous" / "problems" / "_manifest.json").exists() == (len(seen) == 1)
        Path(out, "metrics.jsonl").write_text('{"step": 1}\n')
        raise InputError("row 7 of 12 cannot be used")

    with pytest.raises(InputError, match="row 7 of 12"):
        run_stage(cfg, plan(cfg, "data"), body=body, force=True)
    assert seen == [[]]
    assert rd.manifest("problems") == before and read_rows(rd.path("problems")) == rows
    assert rd.input_hashes(["problems"]) == h  # what the stages after it recorded still matches
    assert (run / "_failed" / "problems" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not (run / "_previous").exists() or not any((run / "_previous").iterdir())
    assert "data failed; its previous output is back in" in capfd.readouterr().err
    record = json.loads((run / "_failed" / "problems" / "_failure.json").read_text())
    assert record["error"] == "InputError: row 7 of 12 cannot be used"
    st = step_status(cfg, "data", set())  # current, and says that a later run failed
    assert st.state == "current" and st.why.endswith(
        ": InputError: row 7 of 12 cannot be used (its files in _failed/problems)") and "a later run failed" in st.why
    assert run_data(cfg).skipped  # complete and current
    res = run_data(_synthetic(str(run), 30))
    assert res.rows["problems"] == 30 and not (run / "_previous" / "problems").exists()
    assert "failed" not in step_status(_synthetic(str(run), 30), "data", set()).why  # the failure is older

    fresh = _synthetic(str(tmp_path / "fresh"))  # a first run that fails: nothing to put back
    with pytest.raises(InputError):
        run_stage(fresh, plan(fresh, "data"), body=body)
    st = step_status(fresh, "data", set())
    assert st.state == "incomplete" and st.why.startswith("its last run failed ") and \
        st.why.endswith(": InputError: row 7 of 12 cannot be used (the next run starts it over)")


KILLED_BODY = r"""
import os, signal, sys
from pathlib import Path
from hsdpo.config import config_from_dict
from hsdpo.plan import plan
from hsdpo.stage import run_stage
cfg = config_from_dict({"run_dir": sys.argv[1], "data": {"sources": [{"name": "synthetic", "synthetic": {"num_problems": 30}}]}})
def body(out):
    Path(out, "part-0.parquet").write_bytes(b"half a file")
    os.kill(os.getpid(), signal.SIGKILL)
run_stage(cfg, plan(cfg, "data"), body=body)
"""


def test_a_killed_run_leaves_its_previous_output_set_aside_and_the_next_run_puts_it_back(tmp_path, capfd):
    import subprocess
    import sys

    from hsdpo.data.stage import run_data
    from hsdpo.rundir import RunDir
    from hsdpo.stage import read_rows
    from hsdpo.status import step_status

    run = tmp_path / "run"
    cfg = _synthetic(str(run))
    run_data(cfg)
    rd = RunDir(str(run))
    before, rows = rd.manifest("problems"), read_rows(rd.path("problems"))
    proc = subprocess.run([sys.executable, "-c", KILLED_BODY, str(run)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert rd.manifest("problems") is None and (run / "problems" / "part-0.parquet").exists()
    assert rd.has_previous("problems")
    st = step_status(cfg, "data", set())
    assert st.state == "incomplete" and "(_previous/problems) is put back when the stage next runs" in st.why
    capfd.readouterr()
    assert run_data(cfg).skipped  # put back, and current for the config it was made with
    assert "partial output replaced by the complete output it had set aside" in capfd.readouterr().err
    assert rd.manifest("problems") == before and read_rows(rd.path("problems")) == rows
    assert not (run / "problems" / "part-0.parquet").exists() and not rd.has_previous("problems")


def test_on_an_object_store_the_set_aside_is_copied_manifest_last_and_put_back(bucket):
    """memory:// has no folder rename: files are copied with the manifest last, and removed manifest
    first; an interrupted copy (no manifest yet at the destination) is not taken for an output."""
    import json

    from hsdpo.rundir import MANIFEST, RunDir

    rd = RunDir(f"{bucket}/run")
    fs = fsspec.filesystem("memory")
    root = f"{bucket}/run".split("://", 1)[1]
    files = {"problems/part-0.parquet": b"rows", "problems/_rejects/rejects.parquet": b"bad",
             f"problems/{MANIFEST}": json.dumps({"status": "complete", "rows": {"problems": 3}}).encode()}
    for rel, data in files.items():
        fs.pipe_file(f"{root}/{rel}", data)
    assert rd.set_aside("problems")
    assert not fs.exists(f"{root}/problems")
    assert {k: fs.cat_file(f"{root}/_previous/{k}") for k in files} == files
    fs.pipe_file(f"{root}/problems/part-0.parquet", b"half")  # what a failed run wrote
    assert rd.restore("problems", keep_failed=True)
    assert {k: fs.cat_file(f"{root}/{k}") for k in files} == files
    assert fs.cat_file(f"{root}/_failed/problems/part-0.parquet") == b"half"
    assert not rd.has_previous("problems") and not rd.restore("problems")
    # a copy cut short before its manifest: not complete, so never put back over the folder
    fs.pipe_file(f"{root}/_previous/problems/part-0.parquet", b"partial copy")
    assert not rd.has_previous("problems") and not rd.recover("problems")
    assert fs.cat_file(f"{root}/problems/part-0.parquet") == b"rows"


def test_a_folder_whose_files_disagree_on_a_column_type_is_one_line(tmp_path):
    """A table put together by hand (a pairs file with weights as text beside one with numbers):
    one InputError naming the folder, not pyarrow's traceback from the middle of a stage."""
    from hsdpo.config import InputError
    from hsdpo.stage import read_rows, write_rows

    write_rows([{"pair_id": "a", "weight": 1.0}], str(tmp_path / "pairs" / "part-0.parquet"))
    write_rows([{"pair_id": "b", "weight": "1.5"}], str(tmp_path / "pairs" / "part-1.parquet"))
    with pytest.raises(InputError) as err:
        read_rows(str(tmp_path / "pairs"))
    text = str(err.value)
    assert text.startswith(f"{tmp_path / 'pairs'}: its Parquet files disagree on a column's type (")
    assert text.endswith("give every file the same schema") and "\n" not in text
    write_rows([{"pair_id": "c", "weight": None}], str(tmp_path / "pairs" / "part-1.parquet"))  # null: promoted
    assert [r["weight"] for r in read_rows(str(tmp_path / "pairs"))] == [1.0, None]
