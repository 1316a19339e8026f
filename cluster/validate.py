"""Check the manifests and launcher configs of cluster/ without a Kubernetes server or a cloud account.

- KubeRay manifests: the CRDs' ``openAPIV3Schema`` made strict (no unknown keys where the schema lists the
  properties; ``x-kubernetes-int-or-string`` as integer or string) and applied with ``jsonschema``; the
  operator's webhook rules that apply; the embedded strings with Ray's own models (``serveConfigV2`` as a
  Serve config with the unknown-key check of serve/deploy.py, ``runtimeEnvYAML`` as a ``RuntimeEnv``).
- Every pod template: a non-root user, the default seccomp profile, no privilege escalation or capabilities, CPU
  and memory limits, an image at an exact version, the label the NetworkPolicies select (``hardening_errors``).
- NetworkPolicies: the fields Kubernetes defines (``network_policy_errors``).
- Ray cluster launcher YAML: Ray's ``prepare_config`` then ``validate_config``; token authentication on.

    python -m cluster.validate --crds ../shared/kuberay/crds     # every file in cluster/
"""

from __future__ import annotations

import argparse
import copy
import functools
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RESOURCE_PARAMS = {"num-cpus": "cpu", "num-gpus": "nvidia.com/gpu", "memory": "memory"}


def strict(schema: dict) -> dict:
    """A copy of an openAPIV3Schema that refuses unknown keys."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return  # free-form below here, as Kubernetes keeps it
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            walk(value)

    walk(schema)
    return schema


@functools.cache
def crd_schema(crds: Path, kind: str) -> dict:
    crd = yaml.safe_load((crds / CRD_FILES[kind]).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return strict(version["schema"]["openAPIV3Schema"])


def schema_errors(doc: dict, crds: Path) -> list[str]:
    import jsonschema

    kind = doc.get("kind")
    if kind not in CRD_FILES or doc.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion/kind {doc.get('apiVersion')}/{kind}: expected ray.io/v1 {', '.join(CRD_FILES)}"]
    validator = jsonschema.Draft7Validator(crd_schema(crds, kind))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def cluster_spec_errors(spec: dict, where: str) -> list[str]:
    """The RayCluster webhook's rules that apply to a cluster spec."""
    errors = []
    v2 = (spec.get("autoscalerOptions") or {}).get("version") == "v2"
    groups = [("headGroupSpec", spec.get("headGroupSpec") or {})]
    groups += [(f"workerGroupSpecs[{i}]", g) for i, g in enumerate(spec.get("workerGroupSpecs") or [])]
    names = [g.get("groupName", "") for _, g in groups[1:]]
    if len(set(names)) != len(names):
        errors.append(f"{where}.workerGroupSpecs: group names repeat: {names}")
    for path, group in groups:
        at = f"{where}.{path}"
        if path != "headGroupSpec":
            name, low, high = group.get("groupName", ""), group.get("minReplicas", 0), group.get("maxReplicas", 2**31)
            if not DNS_1035.match(name) or len(name) > 63:
                errors.append(f"{at}.groupName {name!r} is not a DNS-1035 label")
            counts = (low, high, group.get("replicas", low))
            if not all(isinstance(c, int) for c in counts):
                pass  # a wrong type: the schema check names it
            elif not 0 <= low <= high:
                errors.append(f"{at}: needs 0 <= minReplicas ({low}) <= maxReplicas ({high})")
            elif "replicas" in group and not low <= group["replicas"] <= high:
                errors.append(f"{at}.replicas {group['replicas']} is outside [minReplicas, maxReplicas]")
            if "idleTimeoutSeconds" in group and not v2:
                errors.append(f"{at}.idleTimeoutSeconds needs autoscalerOptions.version v2")
        params, resources = group.get("rayStartParams") or {}, group.get("resources") or {}
        for param, resource in RESOURCE_PARAMS.items():
            if param in params and resource in {k.lower() for k in resources}:
                errors.append(f"{at}: {resource} is set in both rayStartParams ({param}) and resources")
        if "resources" in params and resources:
            errors.append(f"{at}: custom resources are set in both rayStartParams.resources and resources")
    return errors


def webhook_errors(doc: dict) -> list[str]:
    errors = []
    name = (doc.get("metadata") or {}).get("name", "")
    if not DNS_1035.match(name) or len(name) > 63:
        errors.append(f"metadata.name {name!r} is not a DNS-1035 label")
    spec, kind = doc.get("spec") or {}, doc.get("kind")
    if kind == "RayCluster":
        errors += cluster_spec_errors(spec, "spec")
    elif kind == "RayJob":
        if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
            errors.append("spec: a RayJob needs rayClusterSpec or clusterSelector")
        if spec.get("rayClusterSpec"):
            errors += cluster_spec_errors(spec["rayClusterSpec"], "spec.rayClusterSpec")
        shutdown = spec.get("shutdownAfterJobFinishes", False)
        if spec.get("ttlSecondsAfterFinished", 0) and not shutdown:
            errors.append("spec.ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
        if spec.get("suspend") and not shutdown:
            errors.append("spec.suspend needs shutdownAfterJobFinishes: true")
        for field in ("activeDeadlineSeconds", "ttlSecondsAfterFinished", "backoffLimit"):
            value = spec.get(field)
            if isinstance(value, int) and (value < 0 or (field == "activeDeadlineSeconds" and value == 0)):
                errors.append(f"spec.{field} must be positive, got {value}")
        if "runtimeEnvYAML" in spec:
            errors += [f"spec.runtimeEnvYAML: {e}" for e in runtime_env_errors(spec["runtimeEnvYAML"])]
    elif kind == "RayService":
        if spec.get("rayClusterConfig"):
            errors += cluster_spec_errors(spec["rayClusterConfig"], "spec.rayClusterConfig")
        if "serveConfigV2" in spec:
            errors += [f"spec.serveConfigV2: {e}" for e in serve_config_errors(spec["serveConfigV2"])]
    return errors


def runtime_env_errors(text: str) -> list[str]:
    from jobs.submit import runtime_env_problem

    problem = runtime_env_problem(yaml.safe_load(text) or {})
    return [problem] if problem else []


def serve_config_errors(text: str) -> list[str]:
    from secondthought.config import ConfigError
    from serve.deploy import check_config

    try:
        check_config(yaml.safe_load(text) or {}, "serveConfigV2")
    except ConfigError as e:
        return [str(e)]
    return []


IMAGE_TAG = re.compile(r"^[^@:]+(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$")


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """Every pod template of a KubeRay manifest, with where it is."""
    spec, kind = doc.get("spec") or {}, doc.get("kind")
    cluster = spec if kind == "RayCluster" else spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or {}
    where = {"RayCluster": "spec", "RayJob": "spec.rayClusterSpec", "RayService": "spec.rayClusterConfig"}[kind]
    found = [(f"{where}.headGroupSpec.template", (cluster.get("headGroupSpec") or {}).get("template") or {})]
    found += [(f"{where}.workerGroupSpecs[{i}].template", g.get("template") or {})
              for i, g in enumerate(cluster.get("workerGroupSpecs") or [])]
    if "submitterPodTemplate" in spec:
        found.append(("spec.submitterPodTemplate", spec["submitterPodTemplate"]))
    return found


def hardening_errors(doc: dict) -> list[str]:
    """What every pod of ours must have: a non-root user, the runtime's default seccomp profile, no privilege
    escalation, no capabilities, CPU and memory limits, an image at an exact version (a tag other than latest, or
    a digest), and the label the NetworkPolicies select."""
    errors = []
    for where, template in pod_templates(doc):
        pod = template.get("spec") or {}
        pod_security = pod.get("securityContext") or {}
        if ((template.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/name") != "secondthought":
            errors.append(f"{where}.metadata.labels: app.kubernetes.io/name: secondthought is missing "
                          "(networkpolicy.yaml selects the pods by it)")
        for k, c in enumerate(pod.get("containers") or []):
            at, security = f"{where}.spec.containers[{k}]", c.get("securityContext") or {}

            def setting(key):
                return security.get(key, pod_security.get(key))

            if setting("runAsNonRoot") is not True:
                errors.append(f"{at}: runAsNonRoot: true is missing (pod or container securityContext)")
            if (setting("seccompProfile") or {}).get("type") != "RuntimeDefault":
                errors.append(f"{at}: seccompProfile type RuntimeDefault is missing")
            if security.get("allowPrivilegeEscalation") is not False or security.get("privileged"):
                errors.append(f"{at}.securityContext: allowPrivilegeEscalation: false is missing")
            if (security.get("capabilities") or {}).get("drop") != ["ALL"]:
                errors.append(f"{at}.securityContext.capabilities: drop: [ALL] is missing")
            limits = (c.get("resources") or {}).get("limits") or {}
            if not {"cpu", "memory"} <= set(limits):
                errors.append(f"{at}.resources.limits: cpu and memory are needed, got {sorted(limits)}")
            image = str(c.get("image", ""))
            if not IMAGE_TAG.match(image) or image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
                errors.append(f"{at}.image {image!r}: give an exact version (a tag other than latest, or @sha256:...)")
    return errors


NETWORK_POLICY = {
    "spec": {"podSelector", "policyTypes", "ingress", "egress"},
    "rule": {"from", "to", "ports"},
    "peer": {"podSelector", "namespaceSelector", "ipBlock"},
    "port": {"protocol", "port", "endPort"},
    "selector": {"matchLabels", "matchExpressions"},
}


def network_policy_errors(doc: dict) -> list[str]:
    """A NetworkPolicy (networking.k8s.io/v1) checked against the fields Kubernetes defines (no schema of it here)."""
    errors, spec = [], doc.get("spec") or {}
    name = (doc.get("metadata") or {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 253:
        errors.append(f"metadata.name {name!r} is not a DNS-1123 name")
    errors += [f"spec.{k}: unknown field" for k in sorted(set(spec) - NETWORK_POLICY["spec"])]
    if "podSelector" not in spec:
        errors.append("spec.podSelector is required (an empty one selects every pod)")
    if not set(spec.get("policyTypes") or []) <= {"Ingress", "Egress"}:
        errors.append(f"spec.policyTypes must be Ingress and/or Egress, got {spec.get('policyTypes')}")
    selectors = [("spec.podSelector", spec.get("podSelector") or {})]
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            at = f"spec.{direction}[{i}]"
            errors += [f"{at}.{k}: unknown field" for k in sorted(set(rule) - NETWORK_POLICY["rule"])]
            for j, peer in enumerate(rule.get(peers_key) or []):
                errors += [f"{at}.{peers_key}[{j}].{k}: unknown field" for k in sorted(set(peer) - NETWORK_POLICY["peer"])]
                if "ipBlock" in peer and len(peer) > 1:
                    errors.append(f"{at}.{peers_key}[{j}]: ipBlock stands alone")
                selectors += [(f"{at}.{peers_key}[{j}].{k}", peer[k] or {}) for k in ("podSelector", "namespaceSelector")
                              if k in peer]
            for j, port in enumerate(rule.get("ports") or []):
                errors += [f"{at}.ports[{j}].{k}: unknown field" for k in sorted(set(port) - NETWORK_POLICY["port"])]
                if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
                    errors.append(f"{at}.ports[{j}].protocol must be TCP, UDP or SCTP")
                number = port.get("port")
                if isinstance(number, int) and not 1 <= number <= 65535:
                    errors.append(f"{at}.ports[{j}].port {number} is out of 1-65535")
    for at, selector in selectors:
        errors += [f"{at}.{k}: unknown field" for k in sorted(set(selector) - NETWORK_POLICY["selector"])]
        errors += [f"{at}.matchLabels.{k}: a label value is a string, got {v!r}"
                   for k, v in (selector.get("matchLabels") or {}).items() if not isinstance(v, str)]
    return errors


def manifest_errors(path: Path, crds: Path) -> list[str]:
    errors = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None or doc.get("apiVersion") == "v1":  # core objects (the PersistentVolumeClaim)
            continue
        if doc.get("apiVersion") == "networking.k8s.io/v1" and doc.get("kind") == "NetworkPolicy":
            errors += [f"{doc['metadata'].get('name')}: {e}" for e in network_policy_errors(doc)]
            continue
        errors += schema_errors(doc, crds) + webhook_errors(doc)
        if doc.get("kind") in CRD_FILES:
            errors += hardening_errors(doc)
    return errors


def launcher_errors(path: Path) -> list[str]:
    """Ray's own checks of a cluster launcher config (`ray up`), offline."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as e:
        return [f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}"]
    return [f"{key}: start Ray with token authentication (RAY_AUTH_MODE=token and the token)"
            for key in ("head_start_ray_commands", "worker_start_ray_commands")
            if not all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN" in c for c in config.get(key) or [""])]


def is_launcher(path: Path) -> bool:
    return path.name.startswith("launcher-")


def check_all(crds: Path, folder: Path = ROOT / "cluster") -> dict[str, list[str]]:
    """Every YAML file of ``folder`` with its errors (none: an empty list)."""
    return {str(p.relative_to(ROOT)): launcher_errors(p) if is_launcher(p) else manifest_errors(p, crds)
            for p in sorted(folder.glob("*.yaml"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", type=Path, default=ROOT.parent / "shared" / "kuberay" / "crds",
                        help="folder with KubeRay's CRDs (ray.io_rayclusters.yaml, ...)")
    args = parser.parse_args()
    if not (args.crds / CRD_FILES["RayCluster"]).is_file():
        sys.exit(f"no KubeRay CRDs in {args.crds}: pass --crds (KubeRay's helm-chart/kuberay-operator/crds)")
    failed = False
    for name, errors in check_all(args.crds).items():
        print(f"{name}: {'ok' if not errors else 'FAILED'}")
        for error in errors:
            print(f"  {error}")
        failed |= bool(errors)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
