"""Offline checks of the Kustomize manifests in deploy/k8s.

`kustomize` is not available here, so the overlays are rendered by the small
renderer below. It understands exactly the kustomization fields the repository
uses (resources, namespace, images, patches as JSON 6902 or strategic merge) and
fails on any other, so a field it would silently ignore cannot slip in.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S_VERSION = "1.30"

SERVICES = {"ingest": 8001, "orchestrator": 8002, "renderer": 8003, "sender": 8004, "tracker": 8005}
MAIN_TOPICS = [
    "stepmail.contact-events",
    "stepmail.steps-due",
    "stepmail.mail-rendered",
    "stepmail.delivery-events",
    "stepmail.engagement-events",
]
CUSTOM_KINDS = {"ScaledObject": "scaledobject", "KafkaTopic": "kafkatopic"}
SECRET_LIKE_KEYS = re.compile(r"DATABASE_URL|SIGNING_KEYS|SMTP_URL|API_KEY|PASSWORD|TOKEN|SECRET")

Doc = dict[str, Any]

# ---------------------------------------------------------------- rendering

KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"}


def _load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _apply_json6902(doc: Doc, ops: list[Doc]) -> None:
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[index]
            else:
                raise AssertionError(f"unsupported op {kind}")
        elif kind == "add":
            node[last] = copy.deepcopy(op["value"])
        elif kind in ("replace", "remove"):
            assert last in node, f"{kind} {op['path']}: no such field"
            if kind == "replace":
                node[last] = copy.deepcopy(op["value"])
            else:
                del node[last]
        else:
            raise AssertionError(f"unsupported op {kind}")


def _strategic_merge(target: Any, patch: Any) -> Any:
    """Maps merge key by key (null deletes); lists of named items merge by name."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = dict(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = _strategic_merge(target.get(key), value)
        return merged
    named = isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch)
    if named and isinstance(target, list):
        merged_list = list(target)
        for item in patch:
            for i, existing in enumerate(merged_list):
                if existing.get("name") == item["name"]:
                    merged_list[i] = _strategic_merge(existing, item)
                    break
            else:
                merged_list.append(item)
        return merged_list
    return copy.deepcopy(patch)


def _selected(doc: Doc, target: Doc) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return (
        ("kind" not in target or target["kind"] == doc["kind"])
        and ("group" not in target or target["group"] == group)
        and ("name" not in target or re.fullmatch(target["name"], doc["metadata"]["name"]))
        is not None
        and not (set(target) - {"kind", "group", "name"})
    )


def render(directory: Path) -> list[Doc]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    assert not unknown, f"{directory}: fields this renderer does not implement: {unknown}"
    docs: list[Doc] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        docs.extend(render(path) if path.is_dir() else _load_docs(path))
    for patch in kustomization.get("patches", []):
        body = patch.get("patch")
        content = yaml.safe_load(
            body if body is not None else (directory / patch["path"]).read_text()
        )
        if isinstance(content, list):
            selected = [d for d in docs if _selected(d, patch["target"])]
            assert selected, f"{directory}: patch {patch['target']} selects nothing"
            for doc in selected:
                _apply_json6902(doc, content)
        else:
            target = patch.get("target", {"kind": content["kind"]})
            matches = [
                i
                for i, d in enumerate(docs)
                if _selected(d, target) and d["metadata"]["name"] == content["metadata"]["name"]
            ]
            assert len(matches) == 1, (
                f"{directory}: patch for {content['metadata']} matches {matches}"
            )
            docs[matches[0]] = _strategic_merge(docs[matches[0]], content)
    for image in kustomization.get("images", []):
        for container in _containers(docs):
            if container["image"].split(":")[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def _containers(docs: list[Doc]) -> Iterator[Doc]:
    for doc in docs:
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            yield from spec.get("initContainers", [])
            yield from spec["containers"]


# ---------------------------------------------------------------- fixtures

VARIANTS = ["base", "overlays/dev", "overlays/prod"]


@pytest.fixture(params=VARIANTS, scope="module")
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def docs(variant: str) -> list[Doc]:
    return render(K8S / variant)


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in of_kind(docs, kind)}


def _schema(kind: str) -> Doc:
    schema: Doc = json.loads((SCHEMAS / f"{CUSTOM_KINDS[kind]}.schema.json").read_text())
    return schema


def _labels_match(selector: Doc, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is checked here: {selector}"
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


# ---------------------------------------------------------------- schemas


def test_every_object_is_valid_for_its_schema(docs: list[Doc]) -> None:
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            jsonschema.validate(doc, _schema(doc["kind"]))
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field(docs: list[Doc]) -> None:
    deployment = copy.deepcopy(of_kind(docs, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_crd_schemas_refuse_what_the_crds_refuse() -> None:
    scaled = copy.deepcopy(by_name(render(K8S / "base"), "ScaledObject")["stepmail-sender"])
    validator = jsonschema.Draft202012Validator(_schema("ScaledObject"))
    assert validator.is_valid(scaled)
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 200  # a number, not a string
    assert not validator.is_valid(scaled)
    del scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"]
    assert not validator.is_valid(scaled)

    topic = copy.deepcopy(of_kind(render(K8S / "base"), "KafkaTopic")[0])
    validator = jsonschema.Draft202012Validator(_schema("KafkaTopic"))
    assert validator.is_valid(topic)
    topic["spec"]["partitions"] = "12"
    assert not validator.is_valid(topic)
    topic["spec"]["partitions"] = 12
    del topic["metadata"]["labels"]["strimzi.io/cluster"]
    assert not validator.is_valid(topic)


def test_no_latest_or_untagged_images(docs: list[Doc], variant: str) -> None:
    for container in _containers(docs):
        image = container["image"]
        assert not image.endswith(":latest"), image
        if variant != "base":
            assert ":" in image.rsplit("/", 1)[-1], f"{variant}: untagged image {image}"


# ---------------------------------------------------------------- workloads


def test_one_deployment_service_and_pdb_per_service(docs: list[Doc]) -> None:
    names = {f"stepmail-{s}" for s in SERVICES}
    assert set(by_name(docs, "Deployment")) == names
    assert set(by_name(docs, "Service")) == names
    assert set(by_name(docs, "PodDisruptionBudget")) == names


def test_deployments_probe_limit_and_drop_privileges(docs: list[Doc]) -> None:
    for name, deployment in by_name(docs, "Deployment").items():
        service = name.removeprefix("stepmail-")
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > 30, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        (container,) = pod["containers"]
        assert container["command"] == [f"stepmail-{service}"], name
        (port,) = container["ports"]
        assert port["containerPort"] == SERVICES[service], name
        env = {e["name"]: e for e in container["env"]}
        assert env["HTTP_PORT"]["value"] == str(SERVICES[service]), name

        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz", name
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])

        resources = container["resources"]
        for section in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[section]), f"{name} {section}"

        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name
        assert "add" not in security["capabilities"], name
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{name}: read-only root needs a writable /tmp"


def test_services_select_their_deployment_pods(docs: list[Doc]) -> None:
    deployments = by_name(docs, "Deployment")
    for name, service in by_name(docs, "Service").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert _labels_match({"matchLabels": service["spec"]["selector"]}, labels), name
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        port_names = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, name


def test_pdbs_match_one_deployment_and_set_one_bound(docs: list[Doc]) -> None:
    deployments = of_kind(docs, "Deployment")
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        name = pdb["metadata"]["name"]
        assert pdb["apiVersion"] == "policy/v1", name
        bounds = {"minAvailable", "maxUnavailable"} & set(pdb["spec"])
        assert len(bounds) == 1, f"{name}: exactly one of minAvailable/maxUnavailable, got {bounds}"
        matched = [
            d["metadata"]["name"]
            for d in deployments
            if _labels_match(pdb["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert matched == [name], f"{name} selects {matched}"
        target = next(d for d in deployments if d["metadata"]["name"] == name)
        if "minAvailable" in pdb["spec"] and "replicas" in target["spec"]:
            assert pdb["spec"]["minAvailable"] < target["spec"]["replicas"], (
                f"{name}: minAvailable would block every eviction"
            )


def test_renderer_scales_on_cpu_and_no_hpa_targets_the_sender(docs: list[Doc]) -> None:
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    targets = [h["spec"]["scaleTargetRef"]["name"] for h in hpas]
    assert "stepmail-sender" not in targets, "KEDA owns the sender's HPA"
    assert targets == ["stepmail-renderer"]
    (hpa,) = hpas
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_sender_scales_on_consumer_lag_with_keda(docs: list[Doc]) -> None:
    (scaled,) = of_kind(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "stepmail-sender"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert all(isinstance(v, str) for v in meta.values()), meta
    assert meta["consumerGroup"] == "stepmail-sender"
    assert meta["topic"] == "stepmail.mail-rendered"
    config = by_name(docs, "ConfigMap")["stepmail-config"]["data"]
    assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
    topic = next(t for t in of_kind(docs, "KafkaTopic") if t["spec"]["topicName"] == meta["topic"])
    assert scaled["spec"]["maxReplicaCount"] <= topic["spec"]["partitions"], "idle replicas"


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(docs: list[Doc]) -> None:
    autoscaled = {
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")
    }
    autoscaled |= {s["spec"]["scaleTargetRef"]["name"] for s in of_kind(docs, "ScaledObject")}
    assert autoscaled == {"stepmail-renderer", "stepmail-sender"}
    for name, deployment in by_name(docs, "Deployment").items():
        assert ("replicas" in deployment["spec"]) == (name not in autoscaled), name


# ---------------------------------------------------------------- config and secrets


def _secret_refs(deployment: Doc) -> Iterator[tuple[str, str | None]]:
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                yield source["secretRef"]["name"], None
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                yield ref["name"], ref["key"]


def test_secrets_are_referenced_never_defined(docs: list[Doc]) -> None:
    assert not of_kind(docs, "Secret"), "Secret values do not belong in the repository"
    for path in K8S.rglob("*.yaml"):
        for doc in _load_docs(path):
            assert doc.get("kind") != "Secret", f"{path} defines a Secret"
    refs = {name for d in of_kind(docs, "Deployment") for name, _ in _secret_refs(d)}
    assert refs, "the services need their secrets from somewhere"
    readme = (K8S / "README.md").read_text()
    for name in refs:
        assert f"`{name}`" in readme, f"Secret {name} is not documented in deploy/k8s/README.md"


def test_each_service_gets_its_secrets_by_reference(docs: list[Doc]) -> None:
    needs = {
        "ingest": {"DATABASE_URL"},
        "orchestrator": {"DATABASE_URL"},
        "renderer": {"DATABASE_URL", "SIGNING_KEYS"},
        "sender": {"DATABASE_URL", "SMTP_URL"},
        "tracker": {"DATABASE_URL", "SIGNING_KEYS"},
    }
    for name, deployment in by_name(docs, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        for var in needs[name.removeprefix("stepmail-")]:
            assert "secretKeyRef" in env[var]["valueFrom"], f"{name}: {var} must come from a Secret"
            assert "value" not in env[var], f"{name}: {var} has a literal value"
        assert {c["configMapRef"]["name"] for c in container["envFrom"] if "configMapRef" in c} == {
            "stepmail-config"
        }
    signing = {
        ref
        for name, d in by_name(docs, "Deployment").items()
        for ref in _secret_refs(d)
        if ref[1] == "SIGNING_KEYS"
    }
    assert len(signing) == 1, f"renderer and tracker must share one signing key Secret: {signing}"


def test_configmap_holds_settings_but_no_secrets(docs: list[Doc], variant: str) -> None:
    (config,) = of_kind(docs, "ConfigMap")
    data = config["data"]
    assert all(isinstance(v, str) for v in data.values()), data
    assert not [k for k in data if SECRET_LIKE_KEYS.search(k)], "secrets belong in Secrets"
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_ENABLE_IDEMPOTENCE", "HTTP_HOST", "STEPMAIL_ENV"):
        assert key in data, key
    assert data["HTTP_HOST"] == "0.0.0.0"
    assert data["KAFKA_ENABLE_IDEMPOTENCE"] == "true", "Apache Kafka: idempotent producer on"
    assert data["KAFKA_FETCH_MAX_WAIT_MS"] == "500", "Apache Kafka: no idle fetch polling"
    assert data["SENDER_AMBIGUOUS_POLICY"] in ("hold", "resend")
    if variant == "overlays/prod":
        assert data["STEPMAIL_ENV"] == "production"


# ---------------------------------------------------------------- topics


def test_ten_topics_with_dead_letter_twins(docs: list[Doc], variant: str) -> None:
    topics = {t["spec"]["topicName"]: t for t in of_kind(docs, "KafkaTopic")}
    expected = set(MAIN_TOPICS) | {f"{t}.dlq" for t in MAIN_TOPICS}
    assert set(topics) == expected
    config = by_name(docs, "ConfigMap")["stepmail-config"]["data"]
    for name, topic in topics.items():
        spec = topic["spec"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "stepmail", name
        assert "retention.ms" in spec["config"], name
        assert int(spec["config"]["min.insync.replicas"]) <= spec["replicas"], name
        if not name.endswith(".dlq"):
            assert spec["partitions"] == int(config["KAFKA_TOPIC_PARTITIONS"]), name
        if variant == "overlays/prod":
            assert spec["replicas"] >= 3, name
            assert int(spec["config"]["min.insync.replicas"]) == spec["replicas"] - 1, name


# ---------------------------------------------------------------- overlays


def test_overlays_differ_where_they_should() -> None:
    dev, prod = render(K8S / "overlays/dev"), render(K8S / "overlays/prod")
    assert {d["metadata"]["namespace"] for d in dev} == {"stepmail-dev"}
    assert {d["metadata"]["namespace"] for d in prod} == {"stepmail"}
    dev_ingest = by_name(dev, "Deployment")["stepmail-ingest"]["spec"]
    prod_ingest = by_name(prod, "Deployment")["stepmail-ingest"]["spec"]
    assert dev_ingest["replicas"] < prod_ingest["replicas"]
    assert "topologySpreadConstraints" in prod_ingest["template"]["spec"]
    prod_pdb = by_name(prod, "PodDisruptionBudget")["stepmail-ingest"]["spec"]
    assert prod_pdb.get("minAvailable", 0) >= 2


def test_renderer_refuses_unknown_kustomization_fields(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(AssertionError, match="commonLabels"):
        render(tmp_path)
