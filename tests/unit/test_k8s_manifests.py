"""Kubernetes manifests: every overlay renders with real kustomize (kubectl's), every object validates
against the Kubernetes schemas, and every workload carries the security settings, probes, resources,
disruption budgets, autoscalers and network policies that deploy/k8s/README.md promises."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.33"  # the kubectl that renders is 1.33 too (deploy/k8s/tools-requirements.txt)
GRPC_PORTS = {"gateway": 50050, "embedder": 50051, "labelstore": 50052, "clusterer": 50053}
NAMESPACES = {"dev": "tagalong-dev", "prod": "tagalong"}


def install_tools() -> Path:
    """Run deploy/k8s/tools.sh (idempotent, fast once installed); skip when the tools cannot be had.

    It also installs kubernetes-validate (and so PyYAML and jsonschema) into this interpreter's environment,
    which is why the tests import those lazily."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip(f"deploy tools are pinned for Linux x86_64, not {platform.system()} {platform.machine()}")
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(K8S / "tools.sh")], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        why = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
        pytest.skip(f"deploy/k8s/tools.sh could not install kubectl/helm/hadolint: {' / '.join(why[-3:])[-500:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tools_bin() -> Path:
    return install_tools()


def load_yaml_all(text: str) -> list[Any]:
    import yaml

    return [doc for doc in yaml.safe_load_all(text) if doc]


def load_yaml(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def kustomize(tools_bin: Path, path: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([str(tools_bin / "kubectl"), "kustomize", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"kustomize {path.relative_to(ROOT)} failed:\n{proc.stderr}"
    return load_yaml_all(proc.stdout)


@pytest.fixture(scope="module")
def rendered(tools_bin: Path) -> dict[str, list[dict[str, Any]]]:
    return {overlay: kustomize(tools_bin, K8S / "overlays" / overlay) for overlay in OVERLAYS}


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(workload name, pod spec) of every Deployment and Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def grpc_port(container: dict[str, Any]) -> int | None:
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == "grpc"), None)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics (matchLabels + In/NotIn/Exists/DoesNotExist)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# ---------------------------------------------------------------- rendering and schema validation


@pytest.mark.parametrize("path", [pytest.param(K8S / "base", id="base"),
                                  *(pytest.param(K8S / "overlays" / o, id=o) for o in OVERLAYS)])
def test_kustomization_renders(tools_bin: Path, path: Path) -> None:
    docs = kustomize(tools_bin, path)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "Job", "PersistentVolumeClaim"} <= kinds
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered: dict, overlay: str) -> None:
    import jsonschema
    import kubernetes_validate

    keda_schema = json.loads((K8S / "schemas" / "keda.sh_v1alpha1.json").read_text())
    problems = []
    for doc in rendered[overlay]:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("keda.sh/"):
            # A CRD: validated against the structural schema kept in deploy/k8s/schemas.
            schema = {**keda_schema, "$ref": f"#/$defs/{doc['kind']}"}
            errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
            problems += [f"{where}: {e.message}" for e in errors]
            assert doc["kind"] in keda_schema["$defs"], f"{where}: no schema for this KEDA kind"
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{where}: {'.'.join(map(str, err.path))}: {err.message}")
    assert not problems, "\n".join(problems)


def test_the_validators_reject_broken_objects(rendered: dict) -> None:
    """The checks above can fail: an unknown field, a wrong type and a bad KEDA trigger are all caught."""
    import copy

    import jsonschema
    import kubernetes_validate

    deployment = copy.deepcopy(of_kind(rendered["prod"], "Deployment")["gateway"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = copy.deepcopy(of_kind(rendered["prod"], "Deployment")["gateway"])
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] = "1 cpu"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    scaled = copy.deepcopy(of_kind(rendered["prod"], "ScaledObject")["gateway-worker"])
    scaled["spec"]["triggers"][0]["metadata"]["pendingEntriesCount"] = 128  # KEDA wants strings
    schema = {**json.loads((K8S / "schemas" / "keda.sh_v1alpha1.json").read_text()), "$ref": "#/$defs/ScaledObject"}
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(scaled))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_the_overlay_namespace(rendered: dict, overlay: str) -> None:
    for doc in rendered[overlay]:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACES[overlay]
            assert doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert doc["metadata"].get("namespace") == NAMESPACES[overlay], doc["metadata"]["name"]


# ---------------------------------------------------------------- workloads


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down(rendered: dict, overlay: str) -> None:
    problems = []
    for name, spec in pod_specs(rendered[overlay]):
        pod = spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True or not pod.get("runAsUser"):
            problems.append(f"{name}: pod must runAsNonRoot with a non-zero runAsUser")
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: seccompProfile RuntimeDefault missing")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: the API token must not be mounted")
        if spec.get("serviceAccountName") in (None, "default"):
            problems.append(f"{name}: needs its own ServiceAccount")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problems.append(f"{name}: host namespaces")
        writable = {m["mountPath"] for c in all_containers(spec) for m in c.get("volumeMounts", [])
                    if not m.get("readOnly")}
        for c in all_containers(spec):
            ctx = c.get("securityContext", {})
            where = f"{name}/{c['name']}"
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation must be false")
            if ctx.get("capabilities", {}).get("drop") != ["ALL"] or ctx.get("capabilities", {}).get("add"):
                problems.append(f"{where}: capabilities must drop ALL and add none")
            if ctx.get("privileged"):
                problems.append(f"{where}: privileged")
            image = c["image"]
            if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
                problems.append(f"{where}: image {image} must carry a pinned tag")
        if "/tmp" not in writable:
            problems.append(f"{name}: needs a writable /tmp (emptyDir) under a read-only root")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_and_limits(rendered: dict, overlay: str) -> None:
    problems = []
    for name, spec in pod_specs(rendered[overlay]):
        for c in all_containers(spec):
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(kind, {}))
                if missing:
                    problems.append(f"{name}/{c['name']}: {kind} lacks {sorted(missing)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_servers_have_native_grpc_probes(rendered: dict, overlay: str) -> None:
    deployments = of_kind(rendered[overlay], "Deployment")
    servers = set()
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        port = grpc_port(container)
        if port is None:
            continue
        servers.add(name)
        assert port == GRPC_PORTS[name]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, f"{name}: {probe} is not a gRPC probe on {port}"
        # The liveness probe must be more patient than readiness (a busy pod is not a dead one).
        live, ready = container["livenessProbe"], container["readinessProbe"]
        assert live["periodSeconds"] * live["failureThreshold"] > ready["periodSeconds"] * ready["failureThreshold"]
    assert servers == set(GRPC_PORTS), "every gRPC service is a Deployment with a port named grpc"
    # The only workload without a gRPC server is the worker, which serves no port.
    assert set(deployments) - servers == {"gateway-worker"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget(rendered: dict, overlay: str) -> None:
    budgets = of_kind(rendered[overlay], "PodDisruptionBudget").values()
    for name, deployment in of_kind(rendered[overlay], "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert len(matching) == 1, f"{name}: {len(matching)} PodDisruptionBudgets select it"
        spec = matching[0]["spec"]
        # maxUnavailable (not minAvailable = replicas) so that a one-replica dev pod never blocks a drain.
        assert spec.get("maxUnavailable") == 1, f"{name}: {spec}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cpu_autoscalers_for_gateway_labelstore_embedder(rendered: dict, overlay: str) -> None:
    hpas = of_kind(rendered[overlay], "HorizontalPodAutoscaler")
    deployments = of_kind(rendered[overlay], "Deployment")
    for name in ("gateway", "labelstore", "embedder"):
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
        assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
        # An HPA-owned Deployment carries no replica count of its own (apply would reset the HPA's).
        assert "replicas" not in deployments[name]["spec"], name
    assert "clusterer" not in hpas  # rounds are long single calls: see base/clusterer.yaml


def test_dev_runs_one_replica_of_everything(rendered: dict) -> None:
    docs = rendered["dev"]
    for name, hpa in of_kind(docs, "HorizontalPodAutoscaler").items():
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 1), name
    hpa_owned = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler").values()}
    for name, deployment in of_kind(docs, "Deployment").items():
        if name not in hpa_owned:
            assert deployment["spec"]["replicas"] == 1, name
    assert not of_kind(docs, "ScaledObject"), "dev clusters need no KEDA"
    for claim in of_kind(docs, "PersistentVolumeClaim").values():
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    embedder = of_kind(docs, "Deployment")["embedder"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in embedder["containers"][0]["resources"].get("limits", {})
    assert "embedder-cpu" in embedder["containers"][0]["image"]


def test_prod_embedder_runs_on_gpu_nodes(rendered: dict) -> None:
    docs = rendered["prod"]
    spec = of_kind(docs, "Deployment")["embedder"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert "embedder-gpu" in container["image"]
    assert all("embedder-gpu" in c["image"] for c in spec["initContainers"])
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    config = of_kind(docs, "ConfigMap")
    embedder_config = next(v for k, v in config.items() if k.startswith("embedder-config"))
    assert embedder_config["data"]["TAGALONG_EMBEDDER_PROVIDERS"].startswith("CUDAExecutionProvider")
    # Replicas spread over nodes and zones.
    for name, deployment in of_kind(docs, "Deployment").items():
        keys = {c["topologyKey"] for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name


def test_prod_workers_scale_on_the_redis_streams(rendered: dict) -> None:
    docs = rendered["prod"]
    from gateway.keys import GROUP, INGEST, ROUND, Keys

    worker = of_kind(docs, "Deployment")["gateway-worker"]
    assert "replicas" not in worker["spec"], "KEDA's HPA owns the worker count"
    scaled = of_kind(docs, "ScaledObject")["gateway-worker"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "gateway-worker"
    assert scaled["minReplicaCount"] >= 1 and scaled["maxReplicaCount"] > scaled["minReplicaCount"]
    config = next(v for k, v in of_kind(docs, "ConfigMap").items() if k.startswith("gateway-config"))
    keys = Keys(config["data"]["TAGALONG_REDIS_PREFIX"])
    triggers = scaled["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    pending = {t["metadata"]["stream"] for t in triggers if "pendingEntriesCount" in t["metadata"]}
    assert pending == {keys.stream(INGEST), keys.stream(ROUND)}, "streams must match gateway/keys.py"
    assert {t["metadata"]["consumerGroup"] for t in triggers} == {GROUP}
    auth = of_kind(docs, "TriggerAuthentication")
    for trigger in triggers:
        assert trigger["authenticationRef"]["name"] in auth
        assert int(next(v for k, v in trigger["metadata"].items() if k in ("pendingEntriesCount", "streamLength")))


# ---------------------------------------------------------------- services, configuration, secrets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_internal_services_are_headless_and_clients_resolve_them(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    services = of_kind(docs, "Service")
    deployments = of_kind(docs, "Deployment")
    for name, port in GRPC_PORTS.items():
        spec = services[name]["spec"]
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert selects({"matchLabels": spec["selector"]}, pod_labels)
        grpc = next(p for p in spec["ports"] if p["name"] == "grpc")
        assert grpc["port"] == port and grpc.get("appProtocol") == "grpc"
        if name != "gateway":  # called by our round_robin clients: DNS must return every pod
            assert spec.get("clusterIP") == "None", f"{name} must be headless"
    config = {k.split("-config")[0]: v["data"] for k, v in of_kind(docs, "ConfigMap").items()
              if "-config" in k}
    addresses = {
        "TAGALONG_GATEWAY_EMBEDDER_ADDR": ("gateway", "embedder"),
        "TAGALONG_GATEWAY_LABELSTORE_ADDR": ("gateway", "labelstore"),
        "TAGALONG_GATEWAY_CLUSTERER_ADDR": ("gateway", "clusterer"),
        "TAGALONG_CLUSTERER_LABELSTORE_ADDR": ("clusterer", "labelstore"),
    }
    for env, (owner, target) in addresses.items():
        assert config[owner][env] == f"dns:///{target}:{GRPC_PORTS[target]}", env
    for name in GRPC_PORTS:
        assert config[name][f"TAGALONG_{name.upper()}_HOST"] == "0.0.0.0"
        assert config[name][f"TAGALONG_{name.upper()}_PORT"] == str(GRPC_PORTS[name])


SETTINGS_CLASSES = {
    "embedder": ("services.embedder.settings", "EmbedderSettings"),
    "labelstore": ("services.labelstore.settings", "LabelStoreSettings"),
    "clusterer": ("services.clusterer.settings", "ClustererSettings"),
    "gateway": ("gateway.settings", "GatewaySettings"),
}


@pytest.mark.parametrize("service", list(SETTINGS_CLASSES))
def test_configured_variables_are_real_settings(rendered: dict, service: str) -> None:
    """Every TAGALONG_* variable the manifests set is read by the service (catches typos and renames)."""
    import importlib

    from tagalong.runtime.settings import env_name

    module_name, class_name = SETTINGS_CLASSES[service]
    try:
        settings_cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        pytest.fail(f"{module_name}.{class_name} cannot be imported: {err}")
    known = {env_name(settings_cls, field) for field in settings_cls.model_fields}
    workloads = {"gateway": ("gateway", "gateway-worker")}.get(service, (service,))
    docs = rendered["prod"]
    configmaps = of_kind(docs, "ConfigMap")
    used: set[str] = set()
    for workload in workloads:
        container = of_kind(docs, "Deployment")[workload]["spec"]["template"]["spec"]["containers"][0]
        used |= {e["name"] for e in container.get("env", [])}
        for source in container.get("envFrom", []):
            if source["configMapRef"]["name"].startswith("model-config"):
                continue  # read by the init step and the model Job, not by the service
            used |= set(configmaps[source["configMapRef"]["name"]]["data"])
    unknown = {v for v in used if v.startswith("TAGALONG_")} - known
    assert not unknown, f"{class_name} reads no {sorted(unknown)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_inlined(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    secrets = of_kind(docs, "Secret")
    for name, spec in pod_specs(docs):
        for c in all_containers(spec):
            for env in c.get("env", []):
                if env["name"] in ("TAGALONG_AUTH_TOKEN", "TAGALONG_REDIS_URL"):
                    ref = env["valueFrom"]["secretKeyRef"]
                    if overlay == "dev":  # generated there; prod's are created out of band (README)
                        assert ref["name"] in secrets, f"{name}: {ref}"
    for configmap in of_kind(docs, "ConfigMap").values():
        text = json.dumps(configmap.get("data", {})).lower()
        assert "password" not in text and "token=" not in text
    assert overlay == "dev" or not secrets, "prod must not ship secret values"


# ---------------------------------------------------------------- network policies


def _allowed(policies: list[dict[str, Any]], direction: str, pod: dict[str, str], peer: dict[str, Any],
             port: int) -> bool:
    """Is traffic allowed in `direction` for `pod` to/from `peer` (labels + namespace labels) on `port`?"""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [p for p in policies if direction in p["spec"]["policyTypes"]
                 and selects(p["spec"]["podSelector"], pod)]
    if not selecting:
        return True  # not isolated (the default-deny policy makes this unreachable)
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
                continue
            sources = rule.get(peers_key)
            if not sources:
                return True
            for source in sources:
                ns_ok = (selects(source["namespaceSelector"], peer["ns_labels"]) if "namespaceSelector" in source
                         else peer["same_ns"])
                pod_ok = selects(source["podSelector"], peer["labels"]) if "podSelector" in source else True
                if ns_ok and pod_ok:
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_call_graph(rendered: dict, overlay: str) -> None:
    docs = rendered[overlay]
    policies = list(of_kind(docs, "NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
            and not p["spec"].get("egress")]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, "no default deny"
    namespace = {"kubernetes.io/metadata.name": NAMESPACES[overlay]}
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in of_kind(docs, "Deployment").items()}
    pods["model-export"] = of_kind(docs, "Job")["model-export"]["spec"]["template"]["metadata"]["labels"]
    expected = {
        ("gateway", "embedder"), ("gateway", "labelstore"), ("gateway", "clusterer"),
        ("gateway-worker", "embedder"), ("gateway-worker", "labelstore"), ("gateway-worker", "clusterer"),
        ("clusterer", "labelstore"),
    }
    for src, src_labels in pods.items():
        for dst, port in GRPC_PORTS.items():
            if dst == "gateway":
                continue
            egress = _allowed(policies, "Egress", src_labels,
                              {"labels": pods[dst], "ns_labels": namespace, "same_ns": True}, port)
            ingress = _allowed(policies, "Ingress", pods[dst],
                               {"labels": src_labels, "ns_labels": namespace, "same_ns": True}, port)
            assert (egress and ingress) == ((src, dst) in expected), f"{src} -> {dst}:{port}"
    # Callers from anywhere reach the gateway; nothing else is reachable from outside.
    outsider = {"labels": {"app": "someone"}, "ns_labels": {"kubernetes.io/metadata.name": "elsewhere"},
                "same_ns": False}
    for dst, port in GRPC_PORTS.items():
        assert _allowed(policies, "Ingress", pods[dst], outsider, port) == (dst == "gateway"), dst
    # External dependencies: Redis for gateway and workers, Milvus for the label store only.
    redis = {"labels": {"app.kubernetes.io/name": "redis"}, "ns_labels": {"kubernetes.io/metadata.name": "redis"},
             "same_ns": False}
    milvus = {"labels": {"app.kubernetes.io/name": "milvus"},
              "ns_labels": {"kubernetes.io/metadata.name": "milvus"}, "same_ns": False}
    dns = {"labels": {"k8s-app": "kube-dns"}, "ns_labels": {"kubernetes.io/metadata.name": "kube-system"},
           "same_ns": False}
    for src, labels in pods.items():
        assert _allowed(policies, "Egress", labels, redis, 6379) == (src in ("gateway", "gateway-worker")), src
        assert _allowed(policies, "Egress", labels, milvus, 19530) == (src == "labelstore"), src
        assert _allowed(policies, "Egress", labels, dns, 53), f"{src}: DNS"
        assert not _allowed(policies, "Egress", labels, outsider, 443), f"{src} may reach the internet"
    # Prometheus in `monitoring` scrapes metrics; nobody else does.
    prometheus = {"labels": {"app": "prometheus"}, "ns_labels": {"kubernetes.io/metadata.name": "monitoring"},
                  "same_ns": False}
    for dst, labels in pods.items():
        assert _allowed(policies, "Ingress", labels, prometheus, 9090), dst
        assert not _allowed(policies, "Ingress", labels, outsider, 9090), dst


# ---------------------------------------------------------------- the model init step, Helm values


def _write_model(folder: Path) -> Path:
    from services.embedder.manifest import MANIFEST, Manifest, Preprocess, sha256_file

    folder.mkdir(parents=True)
    model = folder / "image.onnx"
    model.write_bytes(os.urandom(4096))
    manifest = Manifest(model_id="test/tiny", family="efficientnet-lite0", dim=8, opset=17, has_text_tower=False,
                        preprocess=Preprocess(), files={"image.onnx": sha256_file(model)})
    (folder / MANIFEST).write_text(manifest.to_json())
    return model


def _wait_for_model(*args: str) -> subprocess.CompletedProcess[str]:
    script = K8S / "base" / "scripts" / "wait_for_model.py"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_model_init_step_verifies_the_manifest_checksums(tmp_path: Path) -> None:
    folder = tmp_path / "efficientnet-lite0"
    missing = _wait_for_model("--check-only", str(folder))
    assert missing.returncode == 3 and "missing" in missing.stderr
    model = _write_model(folder)
    ok = _wait_for_model("--timeout", "5", str(folder))
    assert ok.returncode == 0, ok.stderr
    assert "verified" in ok.stdout
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")  # one byte changed
    corrupt = _wait_for_model("--check-only", str(folder))
    assert corrupt.returncode == 3 and "sha256" in corrupt.stderr


def _export_model(root: Path, scripts: Path, name: str = "efficientnet-lite0") -> subprocess.CompletedProcess[str]:
    """Run the model Job's script with this interpreter's environment first on PATH (as `python`)."""
    bindir = Path(sys.executable).parent
    assert (bindir / "python").exists()
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT),
               TAGALONG_MODEL_ROOT=str(root), TAGALONG_MODEL_NAME=name, TAGALONG_SCRIPTS_DIR=str(scripts))
    return subprocess.run(["sh", str(K8S / "base" / "scripts" / "export_model.sh")], capture_output=True,
                          text=True, env=env, timeout=900, cwd=root.parent)


def test_model_job_skips_a_verified_model_and_stops_on_a_broken_check(tmp_path: Path) -> None:
    root = tmp_path / "models"
    model = _write_model(root / "efficientnet-lite0")
    done = _export_model(root, K8S / "base" / "scripts")
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stdout
    # A checker that crashes (exit 1, not 3) must not be taken for "export needed".
    model.write_bytes(b"corrupt")
    broken = tmp_path / "broken-scripts"
    broken.mkdir()
    (broken / "wait_for_model.py").write_text("raise RuntimeError('checker crashed')\n")
    crashed = _export_model(root, broken)
    assert crashed.returncode == 1 and "check itself failed" in crashed.stderr
    assert not (root / ".efficientnet-lite0.partial").exists()


@pytest.mark.slow
def test_model_job_exports_verifies_and_renames_into_place(tmp_path: Path) -> None:
    """The real export (torch -> ONNX, ~1 minute): scratch folder, verified, renamed; a rerun does nothing.
    torch comes with the dev environment (the export extra), so a missing torch fails here rather than skips."""
    root = tmp_path / "models"
    first = _export_model(root, K8S / "base" / "scripts")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "exported and verified" in first.stdout
    assert [p.name for p in root.iterdir() if p.is_dir()] == ["efficientnet-lite0"], "scratch folder left"
    assert _wait_for_model("--check-only", str(root / "efficientnet-lite0")).returncode == 0
    again = _export_model(root, K8S / "base" / "scripts")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_model_job_and_init_step_agree_on_the_folder(rendered: dict) -> None:
    docs = rendered["prod"]
    job = of_kind(docs, "Job")["model-export"]["spec"]["template"]["spec"]
    embedder = of_kind(docs, "Deployment")["embedder"]["spec"]["template"]["spec"]
    assert "export" in job["containers"][0]["image"] and "embedder" not in job["containers"][0]["image"]
    claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in embedder["volumes"]
             if "persistentVolumeClaim" in v}
    assert claim["models"] == next(v["persistentVolumeClaim"]["claimName"] for v in job["volumes"]
                                   if v["name"] == "models")
    server = embedder["containers"][0]
    assert all(m.get("readOnly") for m in server["volumeMounts"] if m["name"] == "models")
    model_dir = next(e["value"] for e in server["env"] if e["name"] == "TAGALONG_EMBEDDER_MODEL_DIR")
    assert model_dir == "$(TAGALONG_MODEL_ROOT)/$(TAGALONG_MODEL_NAME)"
    assert embedder["initContainers"][0]["name"] == "verify-model"


def test_helm_values_for_redis_and_milvus(tools_bin: Path) -> None:
    helm = K8S / "helm"
    redis = load_yaml((helm / "redis-values.yaml").read_text())
    config = redis["commonConfiguration"]
    assert "appendonly yes" in config and "maxmemory-policy noeviction" in config
    assert redis["master"]["persistence"]["enabled"] is True and redis["auth"]["enabled"] is True
    milvus = load_yaml((helm / "milvus-values.yaml").read_text())
    assert milvus["cluster"]["enabled"] is True
    for component in ("proxy", "queryNode", "dataNode", "indexNode"):
        assert milvus[component]["hpa"]["enabled"] is True, component
        assert milvus[component]["replicas"] == -1, f"{component}: the HPA owns the replica count"
    for dev in ("redis-values-dev.yaml", "milvus-values-dev.yaml"):
        assert load_yaml((helm / dev).read_text())
    dev_redis = load_yaml((helm / "redis-values-dev.yaml").read_text())
    assert "appendonly yes" in dev_redis["commonConfiguration"]


def test_helm_values_parse_with_helm(tools_bin: Path, tmp_path: Path) -> None:
    """helm itself reads each values file (a strict YAML parse plus --set-style merge) via a local chart."""
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "templates" / "values.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: probe\ndata:\n"
        "  values: {{ toJson .Values | quote }}\n")
    env = dict(os.environ, HELM_CACHE_HOME=str(tmp_path / "cache"), HELM_CONFIG_HOME=str(tmp_path / "config"),
               HELM_DATA_HOME=str(tmp_path / "data"))
    for values in sorted((K8S / "helm").glob("*.yaml")):
        proc = subprocess.run([str(tools_bin / "helm"), "template", "probe", str(chart), "-f", str(values)],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, f"{values.name}: {proc.stderr}"
        rendered = load_yaml(proc.stdout)
        assert json.loads(rendered["data"]["values"]) == load_yaml(values.read_text())
