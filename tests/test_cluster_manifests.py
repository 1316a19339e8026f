"""cluster/ and jobs/ checked offline: the KubeRay manifests against the CRDs (strict) and the operator's
rules, the embedded Serve config and runtime_env with Ray's models, the launcher configs with Ray's own
validation, versions that must agree, rendered files up to date, and the scale configs against the nodes
the manifests provide."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import tomllib
import yaml

from cluster import render, validate
from jobs.demand import asks, unmet
from secondthought.cli import parse_stage

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT.parent / "shared" / "kuberay" / "crds"
STAGE_ARGS = {"pipeline": ["--out", "/r"], "prepare": ["--out", "/r"], "sft": ["--prepared", "/p", "--out", "/r"],
              "rl": ["--prepared", "/p", "--policy", "/m", "--out", "/r"],
              "eval": ["--prepared", "/p", "--models", '{"a": "/m"}', "--base", "/b", "--out", "/r"],
              "transfer": ["--model", "/m", "--out", "/r"]}
JOB_CONFIGS = sorted(p for p in (ROOT / "jobs").glob("*.yaml") if p.name != "runtime_env.yaml")


@pytest.fixture(scope="module")
def crds() -> Path:
    if not (CRDS / "ray.io_rayclusters.yaml").is_file():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (expected ../shared/kuberay/crds beside the checkout)")
    return CRDS


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "cluster" / name).read_text())


def errors_of(doc: dict, crds: Path) -> list[str]:
    return validate.schema_errors(doc, crds) + validate.webhook_errors(doc)


def test_every_file_in_cluster_is_valid(crds):
    results = validate.check_all(crds)
    assert set(results) >= {"cluster/raycluster.yaml", "cluster/rayjob.yaml", "cluster/rayservice.yaml",
                            "cluster/launcher-aws.yaml", "cluster/launcher-local.yaml"}
    assert {name: errors for name, errors in results.items() if errors} == {}


def mutated(doc: dict, change) -> dict:
    doc = copy.deepcopy(doc)
    change(doc)
    return doc


def test_the_checks_catch_what_kuberay_would_refuse(crds):
    job, cluster, service = load("rayjob.yaml"), load("raycluster.yaml"), load("rayservice.yaml")
    cases = {
        "misspelled field": (mutated(job, lambda d: d["spec"].update(shutdownAfterJobFinish=True)),
                             "Additional properties are not allowed ('shutdownAfterJobFinish'"),
        "string replicas": (mutated(cluster, lambda d: d["spec"]["workerGroupSpecs"][0].update(maxReplicas="4")),
                            "'4' is not of type 'integer'"),
        "no cluster": (mutated(job, lambda d: d["spec"].pop("rayClusterSpec")),
                       "needs rayClusterSpec or clusterSelector"),
        "ttl without shutdown": (mutated(job, lambda d: d["spec"].update(shutdownAfterJobFinishes=False)),
                                 "ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true"),
        "min above max": (mutated(cluster, lambda d: d["spec"]["workerGroupSpecs"][1].update(minReplicas=3)),
                          "needs 0 <= minReplicas (3) <= maxReplicas (2)"),
        "bad name": (mutated(cluster, lambda d: d["metadata"].update(name="SecondThought_1")), "not a DNS-1035 label"),
        "cpu twice": (mutated(cluster, lambda d: d["spec"]["workerGroupSpecs"][0].update(
            rayStartParams={"num-cpus": "8"}, resources={"CPU": "8"})), "cpu is set in both rayStartParams"),
        "idle timeout on v1": (mutated(cluster, lambda d: d["spec"]["autoscalerOptions"].update(version="v1")),
                               "idleTimeoutSeconds needs autoscalerOptions.version v2"),
        "serve config key": (mutated(service, lambda d: d["spec"].update(
            serveConfigV2=d["spec"]["serveConfigV2"].replace("max_ongoing_requests", "max_ongoing_request", 1))),
                             "unknown key(s) applications[0].deployments[0].max_ongoing_request"),
        "runtime env key": (mutated(job, lambda d: d["spec"].update(runtimeEnvYAML="env_var: {A: b}\n")),
                            "spec.runtimeEnvYAML: unknown field(s) env_var"),
        "negative deadline": (mutated(job, lambda d: d["spec"].update(activeDeadlineSeconds=0)),
                              "activeDeadlineSeconds must be positive"),
    }
    for case, (doc, expected) in cases.items():
        found = errors_of(doc, crds)
        assert any(expected in e for e in found), (case, found)
    assert errors_of(job, crds) == errors_of(cluster, crds) == errors_of(service, crds) == []


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(max_worker=d.pop("max_workers")), "max_worker"),
    (lambda d: d.update(setup_command=d.pop("setup_commands")), "setup_command"),
    (lambda d: d.update(head_node_type="no-such-type"), "head_node_type` must be one of"),
])
def test_launcher_checks_catch_misspelled_keys(tmp_path, change, expected):
    doc = yaml.safe_load((ROOT / "cluster" / "launcher-aws.yaml").read_text())
    change(doc)
    bad = tmp_path / "launcher-bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    found = validate.launcher_errors(bad)
    assert found and expected in found[0], found


def test_rendered_manifests_are_up_to_date_with_their_sources():
    for path, text in render.render().items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m cluster.render"
    service, cluster = load("rayservice.yaml"), load("raycluster.yaml")
    serve = yaml.safe_load((ROOT / "serve" / "config.gpu.yaml").read_text())
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert served["http_options"]["host"] == "0.0.0.0" and serve["http_options"]["host"] == "127.0.0.1"
    assert served["applications"][0]["deployments"] == serve["applications"][0]["deployments"]
    assert service["spec"]["rayClusterConfig"] == load("rayjob.yaml")["spec"]["rayClusterSpec"] == cluster["spec"]


def test_ray_version_project_version_and_image_tags_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_pin = next(re.match(r"ray\[.*\]==(.+)", d).group(1) for d in project["dependencies"] if d.startswith("ray["))
    tag = f"{project['version']}-ray{ray_pin}-py311"
    images = set()
    for name in ("raycluster.yaml", "rayjob.yaml", "rayservice.yaml"):
        text = (ROOT / "cluster" / name).read_text()
        assert set(re.findall(r'rayVersion: "?([\d.]+)', text)) == {ray_pin}
        images |= set(re.findall(r"image: (\S+)", text))
    for name in ("launcher-aws.yaml", "launcher-local.yaml"):
        images.add(load(name)["docker"]["image"])
    assert images == {f"ghcr.io/secondthought/secondthought:{tag}"}
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:(\S+)-py311-gpu$", dockerfile, re.M).group(1) == ray_pin
    assert tag in dockerfile and "torch==2.13.0" in dockerfile


def kuberay_nodes(spec: dict) -> list[dict]:
    """The nodes a RayCluster spec can have at most: the head, and each group at maxReplicas."""
    def node(group: dict) -> dict:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus = group.get("rayStartParams", {}).get("num-cpus", limits.get("cpu", "0"))
        return {"CPU": float(cpus), "GPU": float(limits.get("nvidia.com/gpu", 0))}

    return [node(spec["headGroupSpec"])] + [node(g) for g in spec["workerGroupSpecs"] for _ in range(g["maxReplicas"])]


def launcher_nodes(doc: dict) -> list[dict]:
    types = doc["available_node_types"]
    return [types[doc["head_node_type"]]["resources"]] + [
        t["resources"] for name, t in types.items() if name != doc["head_node_type"] for _ in range(t["max_workers"])]


@pytest.mark.parametrize("config", JOB_CONFIGS, ids=lambda p: p.name)
def test_job_configs_parse_and_fit_the_cluster_the_manifests_provide(config):
    stage = config.stem.split("-")[0]
    name, _, sections = parse_stage([stage, "--config", str(config), *STAGE_ARGS[stage]])
    assert sections["ray"].address == "auto"  # a job joins the cluster it is sent to
    for nodes in (kuberay_nodes(load("raycluster.yaml")["spec"]), launcher_nodes(load("launcher-aws.yaml"))):
        cpus = sum(n.get("CPU", 0) for n in nodes)
        assert [unmet(ask, nodes) for ask in asks(sections, cpus)] == [None] * len(asks(sections, cpus))


def test_the_fit_check_refuses_what_the_cluster_cannot_hold():
    nodes = kuberay_nodes(load("raycluster.yaml")["spec"])
    _, _, sections = parse_stage(["sft", "--config", str(ROOT / "jobs" / "sft-7b-zero3.yaml"),
                                  "--sft.num_workers", "17", *STAGE_ARGS["sft"]])
    problem = unmet(asks(sections, 512)[0], nodes)
    assert problem and "sft: 17 x {CPU: 8, GPU: 1} (PACK) cannot be placed" in problem
    _, _, sections = parse_stage(["rl", "--config", str(ROOT / "jobs" / "rl.yaml"), "--rl.placement_strategy",
                                  "STRICT_SPREAD", "--rl.rollout_workers", "3", "--rl.learner_workers", "3",
                                  "--rl.minibatch_size", "24", "--rl.prompts_per_iteration", "48", *STAGE_ARGS["rl"]])
    assert "cannot be placed" in unmet(asks(sections, 512)[0], nodes)  # 3 GPU bundles, 2 GPU nodes


def test_every_pod_is_hardened_and_the_checks_catch_one_that_is_not():
    """Non-root, the default seccomp profile, no privilege escalation or capabilities, limits, an exact image, the
    label the NetworkPolicies select: on every pod template of every manifest (the RayJob's submitter too)."""
    job, cluster = load("rayjob.yaml"), load("raycluster.yaml")
    assert "submitterPodTemplate" in job["spec"]
    assert validate.hardening_errors(job) == validate.hardening_errors(cluster) == []
    head = ["spec", "headGroupSpec", "template"]

    def at(doc, path):
        for key in path:
            doc = doc[key]
        return doc

    cases = {
        "root": (lambda d: at(d, head)["spec"]["securityContext"].pop("runAsNonRoot"), "runAsNonRoot: true is missing"),
        "escalation": (lambda d: at(d, head)["spec"]["containers"][0]["securityContext"].update(
            allowPrivilegeEscalation=True), "allowPrivilegeEscalation: false is missing"),
        "capabilities": (lambda d: d["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0][
            "securityContext"].pop("capabilities"), "drop: [ALL] is missing"),
        "seccomp": (lambda d: at(d, head)["spec"]["securityContext"].pop("seccompProfile"), "RuntimeDefault"),
        "limits": (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"].pop(
            "limits"), "cpu and memory are needed"),
        "latest": (lambda d: at(d, head)["spec"]["containers"][0].update(image="ghcr.io/secondthought/secondthought:latest"),
                   "give an exact version"),
        "untagged": (lambda d: at(d, head)["spec"]["containers"][0].update(image="ghcr.io/secondthought/secondthought"),
                     "give an exact version"),
        "label": (lambda d: at(d, head).pop("metadata"), "app.kubernetes.io/name: secondthought is missing"),
    }
    for case, (change, expected) in cases.items():
        found = validate.hardening_errors(mutated(cluster, change))
        assert any(expected in e for e in found), (case, found)
    digest = "ghcr.io/secondthought/secondthought@sha256:" + "0" * 64
    assert validate.hardening_errors(mutated(cluster, lambda d: at(d, head)["spec"]["containers"][0].update(
        image=digest))) == []


def test_the_network_policies_select_the_pods_and_the_check_catches_a_bad_one():
    policies = list(yaml.safe_load_all((ROOT / "cluster" / "networkpolicy.yaml").read_text()))
    assert [p["metadata"]["name"] for p in policies] == ["secondthought-ray-internal", "secondthought-head",
                                                        "secondthought-serve"]
    pod_label = load("raycluster.yaml")["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert all(p["spec"]["podSelector"]["matchLabels"].items() >= pod_label.items() for p in policies)
    assert [validate.network_policy_errors(p) for p in policies] == [[], [], []]
    bad = mutated(policies[1], lambda d: (d["spec"]["ingress"][0]["ports"].append({"protocol": "HTTP", "port": 70000}),
                                          d["spec"]["ingress"][0]["from"][1].update(podSelectr={})))
    found = validate.network_policy_errors(bad)
    assert any("protocol must be TCP" in e for e in found) and any("70000 is out" in e for e in found)
    assert any("podSelectr: unknown field" in e for e in found)


def test_the_launcher_configs_start_ray_with_token_authentication(tmp_path):
    doc = yaml.safe_load((ROOT / "cluster" / "launcher-local.yaml").read_text())
    doc["worker_start_ray_commands"] = ["ray start --address=$RAY_HEAD_IP:6379"]
    bad = tmp_path / "launcher-bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    assert validate.launcher_errors(bad) == ["worker_start_ray_commands: start Ray with token authentication "
                                             "(RAY_AUTH_MODE=token and the token)"]
