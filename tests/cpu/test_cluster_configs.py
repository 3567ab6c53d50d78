"""The cluster configs in cluster/: launcher YAMLs validate against the autoscaler schema shipped
inside the installed `ray` (and through Ray's own loader), scale GPU and CPU worker groups from
zero, install this checkout on every node, give the workers the identity that reaches the bucket,
turn token authentication on, and open no Ray port to the
internet; the KubeRay manifests autoscale the same way. No cloud account is touched."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER_YAMLS = sorted(CLUSTER.glob("*.yaml"))
KUBERAY_YAMLS = sorted((CLUSTER / "kuberay").glob("*.yaml"))
RAY_PORTS = (8265, 10001, 6379)  # dashboard + job API, Ray Client, GCS
VERSION = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping inside a YAML tree."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def is_internet(cidr: str) -> bool:
    return ipaddress.ip_network(cidr, strict=False).prefixlen == 0


def opens_to_internet(rule: dict[str, Any]) -> set[int]:
    """Ray ports an AWS IpPermission or a GCP firewall rule opens to 0.0.0.0/0 or ::/0."""
    cidrs = [r.get("CidrIp") or r.get("CidrIpv6") for r in rule.get("IpRanges", []) + rule.get("Ipv6Ranges", [])]
    cidrs += rule.get("sourceRanges", [])
    if not any(c and is_internet(c) for c in cidrs):
        return set()
    if "FromPort" in rule or "IpProtocol" in rule:
        if str(rule.get("IpProtocol")) == "-1":
            return set(RAY_PORTS)
        lo, hi = int(rule.get("FromPort", -1)), int(rule.get("ToPort", -1))
        return {p for p in RAY_PORTS if lo == -1 or lo <= p <= hi}
    opened = set()
    for allowed in rule.get("allowed", []):
        ports = allowed.get("ports") or ["0-65535"]
        for spec in ports:
            lo, _, hi = str(spec).partition("-")
            opened |= {p for p in RAY_PORTS if int(lo) <= p <= int(hi or lo)}
    return opened


@pytest.mark.parametrize("rule, opened", [
    ({"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, {8265}),
    ({"FromPort": 0, "ToPort": 65535, "IpProtocol": "tcp", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}, set(RAY_PORTS)),
    ({"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, set(RAY_PORTS)),
    ({"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, set()),
    ({"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}, set()),
    ({"sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["10000-10002"]}]}, {10001}),
])
def test_the_port_check_sees_open_rules(rule, opened):
    assert opens_to_internet(rule) == opened


def all_config_files() -> list[Path]:
    return sorted(p for p in [*CLUSTER.rglob("*"), *(REPO / "jobs").glob("*.yaml")] if p.is_file())


def test_there_are_launcher_configs_for_aws_and_gcp():
    assert {p.name for p in LAUNCHER_YAMLS} >= {"aws.yaml", "gcp.yaml"}
    assert {load(p)["provider"]["type"] for p in LAUNCHER_YAMLS} >= {"aws", "gcp"}


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_validates_against_rays_schema(path):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = load(path)
    jsonschema.validate(config, schema)  # the file as written
    validate_config(prepare_config(config))  # and as `ray up` fills in and checks it


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_autoscales_gpu_and_cpu_groups_from_zero(path):
    config = load(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0, "a CPU head that runs no tasks"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    cpu = {n: t for n, t in workers.items() if t["resources"].get("GPU", 0) == 0}
    assert sorted(t["resources"]["GPU"] for t in gpu.values()) == [1, 8], "an 8-GPU type and a single-GPU type"
    assert cpu and all(t["resources"]["CPU"] > 0 for t in cpu.values()), "a CPU group for verifier actors"
    for name, t in workers.items():
        assert t["min_workers"] == 0 and t["max_workers"] > 0, f"{name} must scale from zero"
    assert config["max_workers"] >= sum(t["max_workers"] for t in workers.values())
    assert 0 < config["idle_timeout_minutes"] <= 30


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_installs_this_version_in_a_ray_image(path):
    config = load(path)
    from ray import __version__ as ray_version

    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray_version}-"), "the pinned Ray's image"
    # hsdpo is not on a package index: every node installs the checkout file_mounts copied (one
    # source, so one version on every node), without what .gitignore lists (.venv/, runs/) or .git/
    assert config["file_mounts"]["~/hsdpo"] == "."
    assert config["rsync_filter"] == [".gitignore"] and "**/.git" in config["rsync_exclude"]
    setup = " ".join(config["setup_commands"])
    assert '"$HOME/hsdpo[vllm]"' in setup, "setup_commands must install the mounted checkout with the vllm extra"
    assert "hsdpo[vllm]==" not in setup


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_every_worker_type_carries_the_identity_that_reaches_the_bucket(path):
    """The launcher gives its instance profile (AWS) or service account (GCP) to the head only; the
    workers write run_dir=s3://... or gs://... (checkpoints, samples) and name it themselves."""
    config = load(path)
    for name, t in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        node = t["node_config"]
        if config["provider"]["type"] == "aws":
            assert node["IamInstanceProfile"]["Arn"].endswith(":instance-profile/ray-autoscaler-v1"), name
        else:
            (account,) = node["serviceAccounts"]
            assert account["email"].startswith("ray-autoscaler-sa-v1@"), name
            assert "https://www.googleapis.com/auth/cloud-platform" in account["scopes"], name


def test_the_vllm_extra_is_the_one_rays_llm_processor_pins():
    """ray[llm] 2.60 pins vllm[audio]==0.29.0; a vllm pin of our own beside it could never resolve."""
    import importlib.metadata

    text = (REPO / "pyproject.toml").read_text()
    extra = re.search(r'^vllm = \[(.*)\]$', text, re.M).group(1)
    assert extra == '"ray[llm]>=2.60,<2.61"'
    pins = [r for r in importlib.metadata.requires("ray") if r.startswith("vllm") and 'extra == "llm"' in r]
    assert pins and all("==" in r for r in pins)


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_turns_token_auth_on_and_keeps_the_dashboard_local(path):
    from ray._private.authentication import authentication_token_setup  # exists in Ray >= 2.52

    assert authentication_token_setup.AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    config = load(path)
    head, worker = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    for cmds in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmds
    assert "--dashboard-host=127.0.0.1" in head
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token", "the token travels as a file, not text"


@pytest.mark.parametrize("path", all_config_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_file_opens_a_ray_port_to_the_internet(path):
    if path.suffix not in (".yaml", ".yml"):
        assert not re.search(r"0\.0\.0\.0/0|::/0", path.read_text()), path
        return
    for doc in yaml.safe_load_all(path.read_text()):
        for node in walk(doc):
            opened = opens_to_internet(node)
            assert not opened, f"{path.name} opens {sorted(opened)} to the internet: {node}"
            if node.get("kind") == "Service" or "serviceType" in node:
                kind = node.get("serviceType") or node.get("spec", {}).get("type", "ClusterIP")
                assert kind == "ClusterIP", f"{path.name}: a {kind} service exposes Ray outside the cluster"
            assert node.get("kind") != "Ingress", f"{path.name}: no Ingress to the dashboard"
    text = path.read_text()
    assert "--dashboard-host=0.0.0.0" not in text and "--dashboard-host 0.0.0.0" not in text


SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key": r"(?i)aws_secret_access_key\s*[:=]\s*\S+",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "Hugging Face token": r"\bhf_[A-Za-z0-9]{30,}\b",
    "GCP service-account key": r'"private_key_id"\s*:',
    "inline Ray token": r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[A-Za-z0-9+/=_-]{16,}",
}


@pytest.mark.parametrize("path", all_config_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_credentials_in_files(path):
    text = path.read_text()
    for what, pattern in SECRET_PATTERNS.items():
        assert not re.search(pattern, text), f"{path.name} holds what looks like a {what}"


def test_kuberay_raycluster_autoscales_with_token_auth():
    from ray import __version__ as ray_version

    docs = {d["kind"]: d for p in KUBERAY_YAMLS for d in yaml.safe_load_all(p.read_text()) if d}
    assert {"RayCluster", "RayJob"} <= set(docs)
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray_version
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpus = []
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 and group["maxReplicas"] > 0, group["groupName"]
        (container,) = group["template"]["spec"]["containers"]
        gpus.append(int(container["resources"]["limits"].get("nvidia.com/gpu", 0)))
    assert sorted(gpus) == [0, 1, 8]
    images = {c["image"] for d in walk(spec) for c in d.get("containers", [])}
    assert images == {f"REGISTRY/hsdpo:{VERSION}"}, "every pod runs the image of cluster/Dockerfile at this version"
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray_version}-" in dockerfile and "[vllm]" in dockerfile


def test_kuberay_rayjob_runs_a_recipe_on_the_cluster():
    job = next(d for p in KUBERAY_YAMLS for d in yaml.safe_load_all(p.read_text()) if d and d["kind"] == "RayJob")
    cluster = next(d for p in KUBERAY_YAMLS for d in yaml.safe_load_all(p.read_text()) if d and d["kind"] == "RayCluster")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    words = job["spec"]["entrypoint"].split()
    assert words[:2] == ["hsdpo", "pipeline"]
    recipe = words[2].removeprefix("/home/ray/hsdpo/")
    assert (REPO / recipe).is_file(), f"{recipe} is baked into the image by cluster/Dockerfile"
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])
