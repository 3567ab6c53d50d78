"""Every stage runs unchanged as a Ray job, the way docs/cluster.md submits it: a real Ray head
(`ray start --head`, dashboard + job server, token authentication on, free ports, its own temp
dir), then `ray job submit --working-dir <repo> --runtime-env jobs/runtime_env.yaml -- hsdpo ...`.

The head is stopped through its own process: SIGTERM to `ray start --block`, which shuts its Ray
down, then SIGKILL to whatever is left in its process session. Never `ray stop`, which would end
every Ray on the machine, other test sessions' included.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from hsdpo.stage import read_rows

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = shutil.which("ray", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")

pytestmark = pytest.mark.skipif(RAY is None, reason="the `ray` CLI is not installed")


@dataclass
class Head:
    url: str  # dashboard / job API
    env: dict[str, str]  # what a client needs: PATH, RAY_AUTH_MODE, RAY_AUTH_TOKEN
    token: str
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is `sid` (the `ray start` we launched with start_new_session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after the command: state, ppid, pgrp, session
            pids.append(int(stat.parent.name))
    return pids


def stop_head(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes
        try:  # it rarely finishes in 10 s on a 2-core machine; the session's processes are killed below
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
    for pid in session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def get(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):  # not listening yet
        return 0


def head_command(temp_dir: str) -> tuple[list[str], int]:
    from ray._private.utils import get_ray_client_dependency_error

    ports = {name: free_port() for name in (
        "port", "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port")}
    if get_ray_client_dependency_error() is None:  # Ray Client installed: it would take 10001
        ports["ray-client-server-port"] = free_port()
    cmd = [RAY, "start", "--head", "--block", "--num-cpus", "4", "--include-dashboard", "true",
           "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir,
           "--object-store-memory", str(512 * 2**20), "--disable-usage-stats"]
    return cmd + [f"--{k}={v}" for k, v in ports.items()], ports["dashboard-port"]


@pytest.fixture(scope="module")
def ray_head():
    # A short path: Ray's unix sockets live under the temp dir (108-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="hsdpo-ray-", dir="/tmp")
    token = secrets.token_hex(24)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "HSDPO_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
           "HSDPO_CACHE": os.path.join(temp_dir, "cache")}  # models fetched from a URI run dir
    env.pop("RAY_ADDRESS", None)
    cmd, dashboard_port = head_command(temp_dir)
    log = Path(temp_dir) / "ray-start.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(url=f"http://127.0.0.1:{dashboard_port}", env=env, token=token, log=log)
    try:
        deadline = time.monotonic() + 90
        while get(f"{head.url}/api/version", token) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text()[-3000:]
                hint = " (the job server needs ray[default])" if "missing packages" in tail else ""
                pytest.fail(f"ray head did not come up{hint}:\n{tail}")
            time.sleep(0.5)
        yield head
    finally:
        stop_head(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(head: Head, entrypoint: list[str], timeout: float) -> subprocess.CompletedProcess:
    job_id = f"hsdpo-test-{uuid.uuid4().hex[:8]}"
    cmd = [RAY, "job", "submit", "--address", head.url, "--submission-id", job_id,
           "--working-dir", str(REPO), "--runtime-env", str(REPO / "jobs/runtime_env.yaml"), "--", *entrypoint]
    proc = subprocess.run(cmd, env=head.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    status = subprocess.run([RAY, "job", "status", "--address", head.url, job_id], env=head.env,
                            capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and f"{job_id}' succeeded" in status.stdout + status.stderr, (
        f"job {job_id} did not succeed:\n{out[-6000:]}\n{status.stdout}{status.stderr}")
    return proc


def test_job_api_refuses_requests_without_the_token(ray_head):
    assert get(f"{ray_head.url}/api/jobs/") == 401
    assert get(f"{ray_head.url}/api/jobs/", "not-the-token") == 403
    assert get(f"{ray_head.url}/api/jobs/", ray_head.token) == 200


def test_a_stage_runs_unchanged_as_a_ray_job(ray_head, tmp_path):
    run_dir = tmp_path / "run"
    proc = submit(ray_head, ["hsdpo", "data", "jobs/tiny.yaml", f"run_dir={run_dir}"], timeout=180)
    manifest = json.loads((run_dir / "problems" / "_manifest.json").read_text())
    assert manifest["stage"] == "data" and manifest["status"] == "complete"
    assert manifest["rows"]["problems"] > 0
    assert "rows: problems" in proc.stdout  # the stage's closing table reaches the submitter


SMOKE_MODELS = ("sft", "weighted_dpo")
MODEL_KEYS = {"accuracy", "n", "correct", "missing", "by_source", "by_steps", "near_miss", "error_profile", "path"}


@pytest.mark.slow
def test_the_smoke_pipeline_runs_as_one_ray_job(ray_head, tmp_path):
    """End to end as a user runs it on a cluster: every stage of the demo recipe at toy size in one
    `ray job submit`. Checks summary.json's schema, the per-model samples, the report's files, and
    that a second submission reuses every finished stage. The run dir is given as a URI, as on a
    cluster (`s3://...`): every model is then written locally, copied there, and fetched back."""
    run_dir = tmp_path / "run"
    uri = f"file://{run_dir}"
    submit(ray_head, ["hsdpo", "pipeline", "jobs/smoke.yaml", f"run_dir={uri}"], timeout=900)
    out = run_dir / "eval"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_order"] == list(SMOKE_MODELS)
    assert summary["num_problems"] > 0 and summary["split"] == "test"
    assert set(summary["near_miss"]) == {"ref", "n"}
    for name in SMOKE_MODELS:
        m = summary["models"][name]
        assert MODEL_KEYS <= set(m), f"{name}: missing {MODEL_KEYS - set(m)}"
        assert m["n"] == summary["num_problems"] and m["missing"] == 0
        assert 0.0 <= m["accuracy"] <= 1.0
        assert sum(v["n"] for v in m["by_steps"].values()) == m["n"]
        assert "n_wrong" in m["error_profile"]
        assert list((out / "samples" / name / "greedy").glob("*.parquet")), f"no samples for {name}"
    files = summary["report"]["files"]
    assert {"report.md", "accuracy.png", "negatives.png", "pair_weights.png", "dpo_margins.png"} <= set(files)
    for f in files:
        assert (out / f).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in SMOKE_MODELS)

    manifests = {p.parent.name: json.loads(p.read_text())["finished_at"] for p in run_dir.glob("*/_manifest.json")}
    assert {"problems", "sft", "samples", "pairs", "ref_logps", "weighted_dpo", "rft", "eval"} <= set(manifests)
    for stage in ("sft", "weighted_dpo", "rft"):  # models and logs reached the run dir
        assert (run_dir / stage / "model" / "model.safetensors").exists() and (run_dir / stage / "metrics.jsonl").exists()
    rft = json.loads((run_dir / "rft" / "_manifest.json").read_text())  # the RFT control: sft from pairs
    assert {"pairs", "sft"} <= set(rft["inputs"]) and 0 < rft["rows"]["examples"] <= len(read_rows(str(run_dir / "pairs")))
    proc = submit(ray_head, ["hsdpo", "pipeline", "jobs/smoke.yaml", f"run_dir={uri}"], timeout=300)
    again = {p.parent.name: json.loads(p.read_text())["finished_at"] for p in run_dir.glob("*/_manifest.json")}
    assert again == manifests, (proc.stdout + proc.stderr)[-3000:]  # the second run reuses every stage


def test_a_local_run_starts_its_own_ray_beside_one_that_ray_start_runs():
    """With no address, hsdpo starts a Ray of its own, as its config says, where a plain `ray.init()`
    joins the latest `ray start` on the machine (and then refuses `ray.num_cpus` with a traceback);
    its workers carry their own cluster's address, so the State API calls inside Ray Train know
    which of the two Rays to ask. The other Ray lives in a temp dir of its own (RAY_TMPDIR)."""
    temp_dir = tempfile.mkdtemp(prefix="hsdpo-ray-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": temp_dir}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    proc = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--include-dashboard=false", "--disable-usage-stats"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    script = ("import json, os, ray\n"
              "from hsdpo.config import RayConfig\n"
              "from hsdpo.rayutil import init_ray\n"
              "init_ray(RayConfig(num_cpus=1))\n"
              "env = ray.remote(lambda: os.environ.get('RAY_ADDRESS'))\n"
              "print(json.dumps({'own': ray.get_runtime_context().gcs_address, 'worker': ray.get(env.remote())}))\n")
    try:
        deadline = time.monotonic() + 90
        while not (Path(temp_dir) / "ray" / "ray_current_cluster").exists():  # what ray.init() would join
            assert proc.poll() is None and time.monotonic() < deadline, "ray start did not come up"
            time.sleep(0.5)
        run = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=180)
    finally:
        stop_head(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert not got["own"].endswith(f":{port}") and got["worker"] == got["own"]
