"""Config loading: YAML + dotted overrides, one-line errors naming the key or path."""

from __future__ import annotations

import pytest

from hsdpo.config import ConfigError, InputError, PipelineConfig, load_config

REPO_JOBS = __import__("pathlib").Path(__file__).resolve().parents[2] / "jobs"


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_overrides_apply_with_types(tmp_path):
    cfg = load_config(write(tmp_path, "run_dir: /a\n"), ["dpo.beta=0.2", "run_dir=/tmp/x", "sample.n=4", "pairs.use_gold=false"])
    assert cfg.dpo.beta == 0.2 and cfg.run_dir == "/tmp/x" and cfg.sample.n == 4 and cfg.pairs.use_gold is False


def test_an_override_indexes_a_list_of_sections_as_status_names_its_keys(tmp_path):
    """`hsdpo status` names a changed key `data.sources.0.synthetic.num_problems`; the same key given
    as an override sets it (before: "data.sources is not a section")."""
    yaml_text = "data: {sources: [{name: synthetic, synthetic: {num_problems: 20}}, {name: synthetic, split: test}]}\n"
    cfg = load_config(write(tmp_path, yaml_text + "steps: [{stage: data}]\n"),
                      ["data.sources.0.synthetic.num_problems=30", "data.sources.1.seed=4", "steps.0.stage=sft"])
    assert cfg.data.sources[0].synthetic.num_problems == 30 and cfg.data.sources[1].seed == 4
    assert cfg.data.sources[1].split == "test" and cfg.steps[0].stage == "sft"


def test_no_file_gives_defaults():
    assert load_config(None) == PipelineConfig()


@pytest.mark.parametrize(
    "yaml_text, overrides, message",
    [
        ("dpo: {bta: 1}\n", [], "unknown config key: dpo.bta"),
        ("", ["dpo.bta=1"], "unknown config key: dpo.bta"),
        ("", ["nosuch=1"], "unknown config key: nosuch"),
        ("dpo: {beta: abc}\n", [], "bad config value at dpo.beta"),
        ("", ["sample.n=many"], "bad config value at sample.n"),
        ("", ["sample.n=0"], "bad config value at sample.n"),
        ("", ["dpo.beta"], "is not of the form key=value"),
        ("", ["dpo..beta=1"], "empty key part"),
        ("run_dir: /a\n", ["run_dir.x=1"], "run_dir is not a section"),
        ("", ["run_dir.x=1"], "bad config value at run_dir"),
        ("data: {sources: [{name: nope}]}\n", [], "bad config value at data.sources.0.name"),
        ("- a\n- b\n", [], "must hold a mapping"),
        ("a: [\n", [], "is not valid YAML"),
        ("dpo: {beta: 0.1}\nsft: {lr: 1}\ndpo: {lr: 2}\n", [], "line 3: key 'dpo' given twice in one section"),
        ("dpo:\n  beta: 0.1\n  beta: 0.2\n", [], "line 3: key 'beta' given twice in one section"),
        ("", ["dpo.deepspeed.bf16.enabled=false"], "bf16.enabled is set from hsdpo's own fields"),
        ("", ["dpo.deepspeed.optimizer.type=Lamb"], "optimizer is set from hsdpo's own fields"),
        ("", ["sft.deepspeed.zero_optimization.stage=3"], "zero_optimization.stage is set from hsdpo's own fields"),
        ("", ["dpo.compile=true", "dpo.zero_stage=3"], "compile=true needs zero_stage 2"),
        ("", ["sft.eval_every=10"], "eval_every needs eval_fraction > 0"),
        ("", ["dpo.adam_betas=[0.9, 1.0]"], "bad config value at dpo.adam_betas: Value error, adam_betas[1] is 1;"),
        ("sft: {adam_betas: [1.5, 0.9]}\n", [], "adam_betas[0] is 1.5; each beta must be in [0, 1)"),
        # inf / NaN pass bounds such as gt=0 and would surface later as NaN scores or a timeout overflow
        ("verifier: {timeout_s: .inf}\n", [], "bad config value at verifier.timeout_s: Input should be a finite number"),
        ("", ["verifier.constants=[1, .nan]"], "bad config value at verifier.constants.1: Input should be a finite number"),
        ("", ["verifier.w_answer=.inf"], "bad config value at verifier.w_answer: Input should be a finite number"),
        ("", ["dpo.lr=.inf"], "bad config value at dpo.lr: Input should be a finite number"),
        ("", ["sample.concurrency=0"], "bad config value at sample.concurrency: Value error, a pool is n >= 1 actors"),
        ("", ["sample.verify_concurrency=[4, 1]"], "with 1 <= min <= max (got [4, 1])"),
        ("data: {sources: [{name: synthetic, synthetic: {min_value: 30}}]}\n", [],
         "bad config value at data.sources.0.synthetic: Value error, min_value 30 is above max_value 20"),
        ("", ["data.sources=[{name: synthetic, synthetic: {min_steps: 3}}]"], "min_steps 3 is above max_steps 2"),
        ("data: {sources: [{name: gsm8k, split: test}]}\n", [],
         "bad config value at data.sources.0: Value error, split 'test' from the hub needs hub_split"),
        ("", ["data.sources=[{name: synthetic, synthetic: {ops: []}}]"],
         "bad config value at data.sources.0.synthetic.ops: List should have at least 1 item"),
        ("", ["dpo.eval_fraction=1"], "bad config value at dpo.eval_fraction"),
        ("", ["run_dir=foo://bucket/run"], "bad config value at run_dir: Value error, no filesystem is known for foo://"),
        ("", ["run_dir=s3://"], "bad config value at run_dir: Value error, s3:// names no bucket or folder"),
        ("", ["run_dir=file://"], "bad config value at run_dir: Value error, file:// names no bucket or folder"),
        ("data: {sources: [{name: synthetic}]}\n", ["data.sources.1.split=test"],
         "override data.sources.1.split: data.sources has 1 item(s), no index 1"),
        ("data: {sources: [{name: synthetic}]}\n", ["data.sources.first.split=test"],
         "override data.sources.first.split: data.sources is a list; 'first' is not an index"),
        ("data: {sources: [{name: gsm8k, path: 'bar://b/train.jsonl'}]}\n", [],
         "bad config value at data.sources.0.path: Value error, no filesystem is known for bar://"),
    ],
)
def test_errors_are_one_line_and_name_the_key(tmp_path, yaml_text, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, yaml_text), overrides)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_deepspeed_extras_merge_into_the_built_config():
    from hsdpo.train.strategy import ds_config

    cfg = load_config(None, ["dpo.deepspeed.zero_optimization.reduce_bucket_size=1000",
                             "dpo.deepspeed.wall_clock_breakdown=true", "dpo.deepspeed.bf16.immediate_grad_update=true",
                             "dpo.max_grad_norm=0.5", "dpo.precision=bf16"])
    ds = ds_config(cfg.dpo, micro_batch=8, accum=2)
    assert ds["zero_optimization"]["reduce_bucket_size"] == 1000 and ds["wall_clock_breakdown"] is True
    # the rest of the section is kept, and our own fields still decide theirs
    assert ds["zero_optimization"]["stage"] == 2 and ds["zero_optimization"]["contiguous_gradients"] is True
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["timers"] == {"throughput": {"enabled": False}}
    # fused_clip (default): the clip runs in the optimizer, so DeepSpeed neither clips nor checks
    assert ds["gradient_clipping"] == 0.0 and ds["zero_optimization"]["compute_grad_norm"] is False
    assert ds["bf16"] == {"enabled": True, "immediate_grad_update": True, "check_grad_overflow": False}
    classic = ds_config(cfg.dpo.model_copy(update={"fused_clip": False}), micro_batch=8, accum=2)
    assert classic["gradient_clipping"] == 0.5 and "compute_grad_norm" not in classic["zero_optimization"]
    assert classic["bf16"] == {"enabled": True, "immediate_grad_update": True}
    with pytest.raises(ConfigError, match="zero_optimization.compute_grad_norm is set from hsdpo's own fields"):
        load_config(None, ["dpo.deepspeed.zero_optimization.compute_grad_norm=false"])


def test_a_date_is_the_string_written_and_other_yaml_only_values_are_one_line(tmp_path):
    cfg = load_config(write(tmp_path, "name: 2024-01-01\nrun_dir: 2024-01-02\n"), ["eval.output=2024-01-03"])
    assert (cfg.name, cfg.run_dir, cfg.eval.output) == ("2024-01-01", "2024-01-02", "2024-01-03")
    for text, message in [("seed: 2024-01-01\n", "bad config value at seed: Input should be a valid integer"),
                          ("name: !!binary aGk=\n", "bad config value at name: not a plain YAML value (got b'hi')"),
                          ("data: {sources: !!set {a}}\n", "bad config value at data.sources: not a plain YAML value"),
                          ("steps: &s [*s]\n", "bad config value at steps.0: not a plain YAML value (got an alias inside itself)")]:
        with pytest.raises(ConfigError) as err:
            load_config(write(tmp_path, text))
        assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    from hsdpo.cli import main

    p = tmp_path / "c.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    assert main(["data", str(p)]) == 2
    assert capsys.readouterr().err.strip() == f"hsdpo: config file {p} is not UTF-8 text (byte 9)"


def test_missing_file_names_path(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml$"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_config_errors_on_one_line(tmp_path, capsys):
    from hsdpo.cli import main

    assert main(["data", str(write(tmp_path, "")), "dpo.bta=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "hsdpo: unknown config key: dpo.bta"


def test_a_run_dir_whose_filesystem_package_is_missing_is_a_config_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("dropboxdrivefs"):
        pytest.skip("dropboxdrivefs is installed here")
    with pytest.raises(ConfigError, match=r"run_dir: Value error, dropbox:// needs a package that is not installed"):
        load_config(write(tmp_path, ""), ["run_dir=dropbox://team/run"])
    if not importlib.util.find_spec("gcsfs"):  # the hint names the extra that brings it
        with pytest.raises(ConfigError, match=r"pip install 'hsdpo\[gcs\]'"):
            load_config(write(tmp_path, ""), ["run_dir=gs://bucket/run"])


def test_an_unreachable_run_dir_is_one_line_before_any_stage(tmp_path, capsys, monkeypatch):
    """No S3 credentials anywhere: the CLI says so in one line, exit 2, before a stage starts."""
    from hsdpo.cli import main

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    for key in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(key, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import fsspec

    bucket = f"s3://hsdpo-no-credentials-{tmp_path.name}"
    fsspec.filesystem("s3").clear_instance_cache()  # an s3fs made by another test would keep its session
    try:
        # a bucket's root too: s3fs answers `exists` of a bucket False whatever the error
        for run_dir in (f"{bucket}/run", bucket):
            assert main(["data", str(write(tmp_path, "")), f"run_dir={run_dir}"]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"hsdpo: run_dir {run_dir} cannot be reached: NoCredentialsError") and "\n" not in err
    finally:  # and the credential-less one made here must not serve later tests
        fsspec.filesystem("s3").clear_instance_cache()


def test_a_run_dir_that_is_a_file_or_below_one_is_one_line(tmp_path, capsys):
    from hsdpo.cli import main

    (tmp_path / "afile").write_text("x")
    for run_dir, says in ((tmp_path / "afile", "is a file, not a folder"), (tmp_path / "afile" / "run", "Not a directory")):
        assert main(["data", str(write(tmp_path, "")), f"run_dir={run_dir}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]  # after the stage's own header, if it began
        assert err.startswith("hsdpo: ") and says in err
    assert (tmp_path / "afile").read_text() == "x"


def test_pipeline_force_of_an_unknown_stage_is_a_config_error_before_any_stage(tmp_path, capsys):
    from hsdpo.cli import main

    assert main(["pipeline", str(write(tmp_path, "")), f"run_dir={tmp_path / 'run'}", "--force", "dop"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hsdpo: --force dop: not a stage") and "ref_logps" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_section_hash_tracks_only_named_sections():
    a = load_config(None)
    b = load_config(None, ["dpo.beta=0.5"])
    assert a.section_hash("data", "seed") == b.section_hash("data", "seed")
    assert a.section_hash("dpo") != b.section_hash("dpo")


def test_every_recipe_parses():
    recipes = sorted(REPO_JOBS.glob("*.yaml"))
    assert any(p.name == "tiny.yaml" for p in recipes)
    for p in recipes:
        if p.name == "runtime_env.yaml":
            continue
        load_config(p)


def test_a_local_ray_quiets_ray_trains_state_api_warning_and_a_cluster_is_left_alone(monkeypatch):
    """Started here without a dashboard, Ray has no State API, and Ray Train's placement-group
    cleaner warned every few seconds of every training run (23 lines in a 20 s run). Workers of a
    local Ray silence that one logger; a cluster, and a hook of the user's own, are left as they are."""
    import logging

    from ray.train.v2._internal.execution.controller import placement_group_cleaner

    from hsdpo.config import RayConfig
    from hsdpo.rayutil import PG_CLEANER_LOGGER, init_kwargs, quiet_worker

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert placement_group_cleaner.logger.name == PG_CLEANER_LOGGER  # still where Ray logs it
    local = init_kwargs(RayConfig(num_cpus=2, runtime_env={"env_vars": {"A": "1"}}))
    assert local["include_dashboard"] is False and local["num_cpus"] == 2
    assert local["runtime_env"] == {"worker_process_setup_hook": "hsdpo.rayutil.quiet_worker", "env_vars": {"A": "1"}}
    own = init_kwargs(RayConfig(runtime_env={"worker_process_setup_hook": "mine.setup"}))
    assert own["runtime_env"] == {"worker_process_setup_hook": "mine.setup"}
    # Ray's own name for a new local Ray keeps its size and the hook (before, both were dropped)
    named = init_kwargs(RayConfig(address="local", num_cpus=2))
    assert named["address"] == "local" and named["num_cpus"] == 2 and named["include_dashboard"] is False
    assert named["runtime_env"] == {"worker_process_setup_hook": "hsdpo.rayutil.quiet_worker"}
    cluster = init_kwargs(RayConfig(address="ray://head:10001"))
    assert cluster == {"log_to_driver": True, "address": "ray://head:10001"}
    monkeypatch.setenv("RAY_ADDRESS", "one-already-set")  # a worker's own address is left as it is
    logger = logging.getLogger(PG_CLEANER_LOGGER)
    level = logger.level
    try:
        quiet_worker()
        assert not logger.isEnabledFor(logging.WARNING) and logger.isEnabledFor(logging.ERROR)
    finally:
        logger.setLevel(level)


def test_a_ray_address_where_nothing_answers_is_one_line_at_once():
    import socket

    from hsdpo.rayutil import check_address

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        port, dead = listening.getsockname()[1], closed.getsockname()[1]
        check_address(f"127.0.0.1:{port}")
        check_address(f"ray://127.0.0.1:{port}")
        check_address("auto")  # left to Ray
        for address in (f"127.0.0.1:{dead}", f"ray://127.0.0.1:{dead}"):
            with pytest.raises(InputError) as err:
                check_address(address)
            text = str(err.value)
            assert text.startswith(f"Ray address {address}: nothing answers at 127.0.0.1:{dead}") and "\n" not in text
    finally:
        listening.close()
        closed.close()
