"""deploy/k8s: the kustomize base and every overlay render, and every object validates offline.

Rendering uses `kubectl kustomize` (kustomize 5, built into kubectl) where kubectl is installed,
else `kustomize build`, else the small renderer below, which knows only the kustomize features the
manifests use (resources, patches given by path, images, namespace, labels without selectors).
Where kubectl is there, the renderer is checked against it, so the two cannot drift apart.
Objects are validated with kubernetes-validate's bundled OpenAPI schemas in strict mode (an
unknown field fails), for the oldest Kubernetes the manifests claim (native gRPC probes are GA in
1.27) and the newest the package bundles. Then the suite's own rules: resources on every
container, gRPC probes on every gRPC port, autoscalers and disruption budgets that point at real
pods, Services that select pods, and no environment variable that neither compose nor the
service knows.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.common.settings import AuthEnvironment, ProcessSettings, variables

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TARGETS = ("base", "overlays/dev", "overlays/production", "overlays/external-redis")
KUBERNETES_VERSIONS = ("1.27.0", "1.37.0")
WORKLOADS = ("Deployment", "StatefulSet", "Job")
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole",
                  "ClusterRoleBinding", "PriorityClass", "CustomResourceDefinition"}  # fmt: skip
KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "patches",
    "images",
    "namespace",
    "labels",
}
# Strategic-merge keys of the lists the manifests patch (Kubernetes' patchMergeKey); any other
# list is replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "topologySpreadConstraints": "topologyKey",
}
# Workload (without the "atelier-" of the Jobs) -> the services/ package whose code it runs.
PACKAGES = {
    "modelserver": "modelserver",
    "encoder": "encoder",
    "worker": "encoder",
    "decoder": "decoder",
    **{f"retrieval-{i}": "retrieval" for i in range(3)},
    **{f"recommender-{i}": "recommender" for i in range(3)},
    "personalization": "personalization",
    "interactions-worker": "personalization",
    "trainer": "personalization",
    "gateway": "gateway",
    "init-secrets": "cli",
    "bootstrap": "cli",
}
CELERY_WORKERS = ("worker", "interactions-worker", "trainer")


# --- rendering -------------------------------------------------------------------------------


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _split_image(image: str) -> tuple[str, str | None]:
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, None
    return name, tag


def _merge(base, patch, field: str = ""):
    """Strategic merge of `patch` into `base` (null deletes a field; MERGE_KEYS lists merge by key)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = _merge(merged[key], value, key) if key in merged else value
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        key = MERGE_KEYS.get(field)
        if field == "ports":
            key = "containerPort" if all("containerPort" in p for p in patch) else "port"
        if key is None:
            return patch
        merged = list(base)
        for item in patch:
            index = next((i for i, old in enumerate(merged) if old.get(key) == item.get(key)), None)
            if index is None:
                merged.append(item)
            else:
                merged[index] = _merge(merged[index], item)
        return merged
    return patch


def _pod_specs(obj: dict) -> list[dict]:
    if obj["kind"] in WORKLOADS:
        return [obj["spec"]["template"]["spec"]]
    return []


def render_python(directory: Path) -> list[dict]:
    """A kustomization rendered with the subset of kustomize the manifests use."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{directory}: the fallback renderer does not know {sorted(unknown)}"
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        objects += render_python(path) if path.is_dir() else _documents(path)
    for patch_entry in kustomization.get("patches", []):
        assert set(patch_entry) == {"path"}, f"{directory}: only `patches: - path:` is supported"
        for patch in _documents(directory / patch_entry["path"]):
            matches = [
                i for i, obj in enumerate(objects)
                if (obj["kind"], obj["metadata"]["name"])
                == (patch["kind"], patch["metadata"]["name"])
            ]  # fmt: skip
            assert len(matches) == 1, f"patch {patch['kind']}/{patch['metadata']['name']}"
            if patch.get("$patch") == "delete":
                del objects[matches[0]]
            else:
                objects[matches[0]] = _merge(objects[matches[0]], patch)
    objects = copy.deepcopy(objects)
    if namespace := kustomization.get("namespace"):
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    for label in kustomization.get("labels", []):
        assert not label.get("includeSelectors") and not label.get("includeTemplates")
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(label["pairs"])
    for image in kustomization.get("images", []):
        for spec in (s for obj in objects for s in _pod_specs(obj)):
            for container in spec.get("initContainers", []) + spec["containers"]:
                name, tag = _split_image(container["image"])
                if name == image["name"]:
                    tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
    return objects


def _key(obj: dict) -> tuple[str, str, str, str]:
    meta = obj["metadata"]
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


ENV = {**os.environ, "KUBECONFIG": os.devnull}  # rendering reads no cluster


@cache
def _kustomize_command() -> tuple[str, ...] | None:
    """kubectl's built-in kustomize if it is version 5 (Debian's kubectl 1.20 has 2, which knows
    neither `labels` nor `patches`), else a kustomize binary, else None."""
    if shutil.which("kubectl"):
        result = subprocess.run(
            ["kubectl", "version", "--client", "-o", "json"],
            capture_output=True, text=True, timeout=60, env=ENV,
        )  # fmt: skip
        if result.returncode == 0 and '"kustomizeVersion": "v5' in result.stdout:
            return ("kubectl", "kustomize")
    if shutil.which("kustomize"):
        return ("kustomize", "build")
    return None


def render_tool(directory: Path) -> list[dict] | None:
    """The real kustomize's rendering (kubectl's, or a kustomize binary); None without either."""
    command = _kustomize_command()
    if command is None:
        return None
    argv = [*command, str(directory)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stderr[-3000:]}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@cache
def rendered(target: str) -> tuple[dict, ...]:
    objects = render_tool(K8S / target)
    if objects is None:
        objects = render_python(K8S / target)
    keys = [_key(obj) for obj in objects]
    assert len(keys) == len(set(keys)), f"{target}: duplicate objects"
    return tuple(objects)


def every_object():
    return [
        pytest.param(target, obj, id=f"{target}:{obj['kind']}/{obj['metadata']['name']}")
        for target in TARGETS
        for obj in rendered(target)
    ]


# --- the fallback renderer ---------------------------------------------------------------------


def test_strategic_merge_of_keyed_lists_and_deletions():
    base = {"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}],
                                     "ports": [{"containerPort": 1}]}],
                     "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}],
                     "args": ["a", "b"]}}  # fmt: skip
    patch = {"spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}],
                      "volumes": [{"name": "v", "persistentVolumeClaim": None,
                                   "hostPath": {"path": "/x"}}],
                      "args": ["c"]}}  # fmt: skip
    merged = _merge(base, patch)
    assert merged["spec"]["containers"][0]["env"] == [
        {"name": "X", "value": "1"},
        {"name": "Y", "value": "2"},
    ]
    assert merged["spec"]["containers"][0]["ports"] == [{"containerPort": 1}]
    assert merged["spec"]["volumes"] == [{"name": "v", "hostPath": {"path": "/x"}}]
    assert merged["spec"]["args"] == ["c"]
    assert _split_image("registry:5000/atelier/encoder") == ("registry:5000/atelier/encoder", None)
    assert _split_image("redis:7.2-alpine") == ("redis", "7.2-alpine")


@pytest.mark.parametrize("target", TARGETS)
def test_fallback_renderer_agrees_with_kustomize(target):
    if _kustomize_command() is None:
        pytest.skip("no kustomize 5 (kubectl or kustomize) installed: only the fallback renders")
    ours = {_key(obj): obj for obj in render_python(K8S / target)}
    theirs = {_key(obj): obj for obj in rendered(target)}  # kustomize's, as it is installed
    assert sorted(ours) == sorted(theirs)
    for key, obj in theirs.items():
        assert ours[key] == obj, f"{target}: {key} differs from kustomize's rendering"


# --- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates_strictly(target, version):
    failures = []
    for obj in rendered(target):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except (
            kubernetes_validate.ValidationError,
            kubernetes_validate.SchemaNotFoundError,
        ) as exc:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {str(exc)[:500]}")
    assert not failures, "\n".join(failures)


def test_overlays_set_their_namespace_and_images():
    for target, namespace in (("overlays/dev", "atelier-dev"), ("overlays/production", "atelier")):
        objects = rendered(target)
        assert {
            o["metadata"].get("namespace") for o in objects if o["kind"] not in CLUSTER_SCOPED
        } == {namespace}
        images = {c["image"] for o in objects for s in _pod_specs(o) for c in s["containers"]}
        unpinned = {i for i in images if _split_image(i)[1] is None}
        assert not unpinned, f"{target}: images without a tag {unpinned}"
    kinds = {(o["kind"], o["metadata"]["name"]) for o in rendered("overlays/external-redis")}
    assert ("StatefulSet", "redis") not in kinds and ("Service", "redis") not in kinds
    config = next(o for o in rendered("overlays/external-redis") if o["kind"] == "ConfigMap")
    assert config["data"]["url"] != "redis://redis:6379/0"


# --- the suite's rules -----------------------------------------------------------------------


def _containers(obj: dict) -> list[dict]:
    return [
        c for spec in _pod_specs(obj) for c in spec.get("initContainers", []) + spec["containers"]
    ]


def _quantity(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units[unit]


@pytest.mark.parametrize(("target", "obj"), every_object())
def test_workloads_have_requests_limits_and_a_locked_down_pod(target, obj):
    if obj["kind"] not in WORKLOADS:
        return
    spec = _pod_specs(obj)[0]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec.get("automountServiceAccountToken") is False
    # Service links would set ENCODER_PORT=tcp://... in every pod: not a port, refused at start.
    assert spec.get("enableServiceLinks") is False
    mounts_tmp = []
    for container in _containers(obj):
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        assert {"cpu", "memory"} <= set(requests), f"{container['name']}: requests {requests}"
        assert "memory" in limits, f"{container['name']}: no memory limit"
        assert _quantity(requests["memory"]) <= _quantity(limits["memory"])
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        mounts_tmp.append(any(m["mountPath"] == "/tmp" for m in container.get("volumeMounts", [])))
    assert all(mounts_tmp), "a read-only root needs an emptyDir on /tmp"


def _ports(container: dict, name: str) -> list[int]:
    return [p["containerPort"] for p in container.get("ports", []) if p.get("name") == name]


@pytest.mark.parametrize(("target", "obj"), every_object())
def test_grpc_servers_have_native_grpc_probes_and_the_gateway_http_ones(target, obj):
    for container in _containers(obj):
        for port in _ports(container, "grpc"):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[probe]["grpc"]["port"] == port, f"{container['name']} {probe}"
        if _ports(container, "http"):
            assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        if obj["metadata"]["name"] in CELERY_WORKERS:
            command = " ".join(container["livenessProbe"]["exec"]["command"])
            assert "inspect ping" in command and "celery@$HOSTNAME" in command


def _pods(objects) -> list[tuple[dict, dict]]:
    """(workload, its pod template's labels) of every Deployment and StatefulSet."""
    return [
        (o, o["spec"]["template"]["metadata"]["labels"])
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    ]


def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("target", TARGETS)
def test_selectors_autoscalers_and_budgets_point_at_real_pods(target):
    objects = rendered(target)
    pods = _pods(objects)
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for workload, labels in pods:
        assert _selects(workload["spec"]["selector"]["matchLabels"], labels)
    for service in (o for o in objects if o["kind"] == "Service"):
        chosen = [w for w, labels in pods if _selects(service["spec"]["selector"], labels)]
        assert len(chosen) == 1, f"Service {service['metadata']['name']} selects {len(chosen)}"
        names = {p["name"] for c in _containers(chosen[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service {service['metadata']['name']}"
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert {h["metadata"]["name"] for h in hpas} >= {
        "worker",
        "retrieval-0",
        "retrieval-1",
        "retrieval-2",
    }
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        target_workload = by_name.get((ref["kind"], ref["name"]))
        assert target_workload is not None, f"HPA {hpa['metadata']['name']} targets nothing"
        assert ref["apiVersion"] == target_workload["apiVersion"]
        # `replicas` in the Deployment would undo the autoscaler's choice at every apply.
        assert "replicas" not in target_workload["spec"], ref["name"]
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert {b["metadata"]["name"] for b in budgets} >= {
        *(f"retrieval-{i}" for i in range(3)),
        *(f"recommender-{i}" for i in range(3)),
        "gateway",
    }
    for budget in budgets:
        chosen = [
            w for w, labels in pods if _selects(budget["spec"]["selector"]["matchLabels"], labels)
        ]
        assert [w["metadata"]["name"] for w in chosen] == [budget["metadata"]["name"]]


@pytest.mark.parametrize("target", TARGETS)
def test_volumes_and_metrics(target):
    objects = rendered(target)
    claims = {o["metadata"]["name"] for o in objects if o["kind"] == "PersistentVolumeClaim"}
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        spec = _pod_specs(workload)[0]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for template in workload["spec"].get("volumeClaimTemplates", []):
            volumes[template["metadata"]["name"]] = {"persistentVolumeClaim": None}
        for volume in volumes.values():
            if volume.get("persistentVolumeClaim"):
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in _containers(workload):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes
                if mount["mountPath"] in ("/models", "/catalogue", "/secrets"):
                    assert mount.get("readOnly") is True
        name = workload["metadata"]["name"]
        if workload["kind"] != "Deployment":
            continue
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/port") == "9100", name
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["METRICS_PORT"] == "9100" and env["METRICS_HOST"] == "0.0.0.0", name
        assert _ports(container, "metrics") == [9100], name
        if name in CELERY_WORKERS:
            directory = env["PROMETHEUS_MULTIPROC_DIR"]
            mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
            assert "emptyDir" in volumes[mount["name"]], name
        if name in ("modelserver", "encoder"):
            assert any(m["mountPath"] == "/models" for m in container["volumeMounts"]), name
    for stateful in (o for o in objects if o["kind"] == "StatefulSet"):
        args = " ".join(stateful["spec"]["template"]["spec"]["containers"][0]["args"])
        assert "--appendonly yes" in args and "--appendfsync everysec" in args
        assert stateful["spec"]["volumeClaimTemplates"]


def _substitute(text: str) -> str:
    """Compose's `${VAR:-default}`, with the defaults."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: m.group(2) or "", text)


@cache
def _compose_env() -> dict[str, set[str]]:
    services = yaml.safe_load(_substitute((ROOT / "docker-compose.yml").read_text()))["services"]
    return {name: set(service.get("environment") or {}) for name, service in services.items()}


@cache
def _read_by_code(package: str) -> set[str]:
    """Variable names a workload's code knows: quoted upper-case names in its package, the shared
    modules and atelier/, and the variables its settings classes read (`variables()`: a field's
    alias where it has one)."""
    sources = [*(ROOT / "services" / "common").glob("*.py"), *(ROOT / "atelier").glob("*.py")]
    if package == "cli":
        sources += (ROOT / "services").glob("cli*.py")
    else:
        sources += (ROOT / "services" / package).glob("*.py")
    names: set[str] = set()
    for source in sources:
        text = source.read_text()
        names |= set(re.findall(r"[\"']([A-Z][A-Z0-9_]{2,})[\"']", text))
    names |= set(variables(ProcessSettings)) | set(variables(AuthEnvironment))
    if (ROOT / "services" / package / "config.py").exists():
        names |= set(variables(importlib.import_module(f"services.{package}.config").Settings))
    return names


@pytest.mark.parametrize("target", TARGETS)
def test_environment_matches_compose_and_the_code(target):
    compose = _compose_env()
    for workload in (o for o in rendered(target) if o["kind"] in WORKLOADS):
        name = workload["metadata"]["name"].removeprefix("atelier-")
        if name == "redis":
            continue  # the image's own process; its password comes from a file, not env
        (container,) = _pod_specs(workload)[0]["containers"]
        names = {e["name"] for e in container.get("env", [])}
        unknown = names - compose[name] - _read_by_code(PACKAGES[name])
        assert not unknown, f"{target} {name}: {sorted(unknown)} set, read by nothing"
        missing = compose[name] - names
        assert not missing, f"{target} {name}: compose sets {sorted(missing)}, Kubernetes does not"
