"""Offline checks of the Helm chart (helm/synth), the Grafana dashboard and the Ray
cluster-launcher configs (cluster/).

Needs a real helm binary: $SYNTH_HELM, else <repo>/.tools/helm (installed by
`bash scripts/setup.sh`), else helm on PATH. A missing helm is a failure naming the set-up
command, not a skip. Core Kubernetes objects are validated with kubernetes-validate (strict
schemas of Kubernetes 1.30); the KubeRay and Prometheus Operator custom resources with
the JSON schemas in tests/schemas/, and every pod template inside a Ray resource as a
core PodTemplate.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Iterator

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from synth.serving.ingress import HAPROXY_ENV, PROXY_ENV
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "synth"
EXAMPLES = CHART / "examples"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S_VERSION = "1.30.0"
RELEASE = "synth"
NAMESPACE = "synth-test"
HELM_VERSION = "v3.17.2"

RAY_API = "ray.io/v1"
MONITORING_API = "monitoring.coreos.com/v1"
RAY_SCHEMA_FILES = {
    "RayCluster": "raycluster.schema.json",
    "RayJob": "rayjob.schema.json",
    "RayService": "rayservice.schema.json",
    "RayCronJob": "raycronjob.schema.json",
    "ServiceMonitor": "servicemonitor.schema.json",
    "PodMonitor": "podmonitor.schema.json",
}

# Values that turn every optional object on (both nightly variants are covered by the
# defaults, which use the CronJob, and the GPU example, which uses the RayCronJob).
FULL_SETS = (
    "synthesize.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "objectStorage.credentials.accessKeyId=AKIAEXAMPLE",
    "objectStorage.credentials.secretAccessKey=secret/example",
    "objectStorage.credentials.region=eu-west-1",
    "objectStorage.credentials.endpointUrl=http://minio.minio:9000",
    "serve.auth.token=s3cr3t-token",
    "jobs.submitterPodTemplate.enabled=true",
)
VALUE_SETS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "cpu-small": ("-f", str(EXAMPLES / "values-cpu-small.yaml")),
    "gpu": ("-f", str(EXAMPLES / "values-gpu.yaml")),
    "full": tuple(a for s in FULL_SETS for a in ("--set", s)),
}
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=None)
def helm() -> str:
    return require_tool("helm", [os.environ.get("SYNTH_HELM"), REPO / ".tools" / "helm", "helm"],
                        "tests/test_helm_chart.py")


def run_helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [helm(), *args], capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "HELM_CACHE_HOME": "/tmp/synth-helm-cache",
             "HELM_CONFIG_HOME": "/tmp/synth-helm-config", "HELM_DATA_HOME": "/tmp/synth-helm-data"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc


@functools.lru_cache(maxsize=None)
def _render_text(args: tuple[str, ...], release: str) -> str:
    return run_helm(
        "template", release, str(CHART), "--namespace", NAMESPACE, "--kube-version", K8S_VERSION, *args
    ).stdout


def render(*args: str, release: str = RELEASE) -> list[dict]:
    """helm template -> list of objects (fresh copies, safe to mutate)."""
    docs = [d for d in yaml.safe_load_all(_render_text(tuple(args), release)) if d]
    return copy.deepcopy(docs)


def sets(*assignments: str) -> tuple[str, ...]:
    return tuple(a for s in assignments for a in ("--set", s))


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name_part: str = "") -> dict:
    found = [d for d in by_kind(docs, kind) if name_part in d["metadata"].get("name", "")]
    assert len(found) == 1, f"expected one {kind} matching {name_part!r}, got {[d['metadata'] for d in found]}"
    return found[0]


def cluster_specs(obj: dict) -> Iterator[dict]:
    """RayClusterSpecs inside a Ray custom resource."""
    kind, spec = obj["kind"], obj["spec"]
    if kind == "RayCluster":
        yield spec
    elif kind == "RayJob" and "rayClusterSpec" in spec:
        yield spec["rayClusterSpec"]
    elif kind == "RayService":
        yield spec["rayClusterConfig"]
    elif kind == "RayCronJob" and "rayClusterSpec" in spec["jobTemplate"]:
        yield spec["jobTemplate"]["rayClusterSpec"]


def job_specs(obj: dict) -> Iterator[dict]:
    if obj["kind"] == "RayJob":
        yield obj["spec"]
    elif obj["kind"] == "RayCronJob":
        yield obj["spec"]["jobTemplate"]


def pod_templates(obj: dict) -> Iterator[tuple[str, dict]]:
    """(where, PodTemplateSpec) for every pod template in a Ray custom resource."""
    for cs in cluster_specs(obj):
        yield "headGroupSpec", cs["headGroupSpec"]["template"]
        for g in cs.get("workerGroupSpecs", []):
            yield f"workerGroupSpecs[{g['groupName']}]", g["template"]
    for js in job_specs(obj):
        if "submitterPodTemplate" in js:
            yield "submitterPodTemplate", js["submitterPodTemplate"]


def worker_group(cluster_spec: dict, name: str) -> dict:
    groups = {g["groupName"]: g for g in cluster_spec.get("workerGroupSpecs", [])}
    assert name in groups, f"worker group {name!r} missing; have {sorted(groups)}"
    return groups[name]


def nightly_rayjob_from_configmap(docs: list[dict]) -> dict:
    cm = one(docs, "ConfigMap", "nightly-rayjob")
    return yaml.safe_load(cm["data"]["rayjob.yaml"])


def ray_objects(docs: list[dict]) -> list[dict]:
    """Ray custom resources, including the RayJob manifest kept in the nightly ConfigMap."""
    objs = [d for d in docs if d["apiVersion"] == RAY_API]
    if any(d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("nightly-rayjob") for d in docs):
        objs.append(nightly_rayjob_from_configmap(docs))
    return objs


def containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def serve_config(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


@functools.lru_cache(maxsize=None)
def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.glob("*.schema.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


@functools.lru_cache(maxsize=None)
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / RAY_SCHEMA_FILES[kind]).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=_registry(), format_checker=cls.FORMAT_CHECKER)


def validate_custom(obj: dict) -> None:
    errors = sorted(_validator(obj["kind"]).iter_errors(obj), key=lambda e: list(e.absolute_path))
    assert not errors, f"{obj['kind']}/{obj['metadata']}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
    )


def validate_core(obj: dict) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: pip install kubernetes-validate==1.37.0", pytrace=False)

    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')}: {path}: {e.message}") from None


def validate_pod_template(owner: dict, where: str, template: dict) -> None:
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "check", "namespace": NAMESPACE},
        "template": template,
    }
    try:
        validate_core(wrapped)
    except AssertionError as e:
        raise AssertionError(f"{owner['kind']} {owner['metadata']} {where}: {e}") from None


# --------------------------------------------------------------------------- helm itself


def test_helm_binary_version():
    out = run_helm("version", "--short").stdout
    assert out.startswith("v3."), out
    if Path(helm()) == REPO / ".tools" / "helm":  # the binary scripts/setup.sh installs
        assert out.startswith(HELM_VERSION), out


@pytest.mark.parametrize("values_file", [None, *EXAMPLE_FILES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_strict(values_file):
    args = ["lint", "--strict", str(CHART), "--kube-version", K8S_VERSION]
    if values_file:
        args += ["-f", str(values_file)]
    proc = run_helm(*args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_examples_exist():
    assert {p.name for p in EXAMPLE_FILES} >= {"values-cpu-small.yaml", "values-gpu.yaml"}


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_objects_validate(name):
    docs = render(*VALUE_SETS[name])
    assert docs, "nothing rendered"
    for d in docs:
        assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        if d["apiVersion"] in (RAY_API, MONITORING_API):
            validate_custom(d)
        else:
            validate_core(d)
    for obj in ray_objects(docs):
        validate_custom(obj)
        templates = list(pod_templates(obj))
        assert templates, obj["kind"]
        for where, tpl in templates:
            validate_pod_template(obj, where, tpl)


def test_every_kind_is_rendered_and_validated():
    kinds = set()
    for args in VALUE_SETS.values():
        kinds |= {d["kind"] for d in render(*args)}
    expected = {
        "RayCluster", "RayJob", "RayService", "RayCronJob", "CronJob", "ConfigMap", "Secret",
        "ServiceAccount", "Role", "RoleBinding", "Service", "ServiceMonitor", "PodMonitor", "NetworkPolicy",
    }
    assert expected <= kinds, expected - kinds


def test_schemas_reject_bad_objects():
    """The own schemas are not vacuous."""
    docs = render(*VALUE_SETS["full"])
    job = one(docs, "RayJob", "train")
    bad = copy.deepcopy(job)
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["num-cpus"] = 4
    with pytest.raises(AssertionError):
        validate_custom(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["entrypointTypo"] = "x"
    with pytest.raises(AssertionError):
        validate_custom(bad)
    bad = copy.deepcopy(job)
    del bad["spec"]["entrypoint"]
    with pytest.raises(AssertionError):
        validate_custom(bad)
    bad = copy.deepcopy(one(docs, "ServiceMonitor"))
    bad["spec"]["endpoints"][0]["interval"] = "thirty"
    with pytest.raises(AssertionError):
        validate_custom(bad)
    # and kubernetes-validate catches a broken pod template
    tpl = copy.deepcopy(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])
    tpl["spec"]["containers"][0]["ports"][0]["containerPort"] = "6379"
    with pytest.raises(AssertionError):
        validate_pod_template(job, "head", tpl)


def test_serve_config_is_a_valid_ray_serve_config():
    from ray.serve.schema import ServeDeploySchema

    for args in VALUE_SETS.values():
        docs = render(*args)
        if by_kind(docs, "RayService"):
            ServeDeploySchema.model_validate(serve_config(docs))


# --------------------------------------------------------------------------- values -> manifests


def test_entrypoints_come_from_values():
    docs = render(*sets(
        "train.config=s3://bucket/cfg/train.yaml",
        "synthesize.enabled=true",
        "synthesize.config=gs://bucket/cfg/synth.yaml",
        "synthesize.extraArgs={--rows,1000000}",
        "nightly.config=/opt/synth/configs/nightly.yaml",
    ))
    assert one(docs, "RayJob", "-train")["spec"]["entrypoint"] == "python -m jobs.train --config s3://bucket/cfg/train.yaml"
    assert one(docs, "RayJob", "-synthesize")["spec"]["entrypoint"] == (
        "python -m jobs.synthesize --config gs://bucket/cfg/synth.yaml --rows 1000000"
    )
    assert nightly_rayjob_from_configmap(docs)["spec"]["entrypoint"] == (
        "python -m jobs.nightly --config /opt/synth/configs/nightly.yaml"
    )
    docs = render(*sets("train.entrypoint=python -m jobs.train --config a.yaml --resume"))
    assert one(docs, "RayJob", "-train")["spec"]["entrypoint"] == "python -m jobs.train --config a.yaml --resume"
    cron = one(render(*sets("nightly.useRayCronJob=true", "nightly.config=s3://b/n.yaml")), "RayCronJob")
    assert cron["spec"]["jobTemplate"]["entrypoint"] == "python -m jobs.nightly --config s3://b/n.yaml"


def test_job_lifecycle_fields_and_runtime_env():
    docs = render(*sets(
        "jobs.ttlSecondsAfterFinished=42", "jobs.activeDeadlineSeconds=3600",
        "train.runtimeEnv.env_vars.SYNTH_SEED=7", "train.runId=Run7",
    ))
    job = one(docs, "RayJob", "-train")
    assert job["metadata"]["name"] == f"{RELEASE}-train-run7"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == 42
    assert spec["activeDeadlineSeconds"] == 3600
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {
        "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "SYNTH_SEED": "7"}
    }
    assert spec["submitterPodTemplate"]["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE  # NetworkPolicy
    spec = one(render(*sets("networkPolicy.enabled=false")), "RayJob", "-train")["spec"]
    assert "submitterPodTemplate" not in spec
    spec = one(render(*sets("jobs.submitterPodTemplate.enabled=true")), "RayJob", "-train")["spec"]
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    # Submitting to the long-lived cluster instead of a per-job cluster.
    spec = one(render(*sets("jobs.useExistingCluster=true")), "RayJob", "-train")["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": f"{RELEASE}-cluster"}
    assert "rayClusterSpec" not in spec and "shutdownAfterJobFinishes" not in spec


def test_gpu_counts_reach_the_gpu_worker_group():
    docs = render(*sets("ray.workerGroups.gpu.gpusPerWorker=3", "synthesize.enabled=true"))
    objs = ray_objects(docs)
    assert len(objs) >= 5
    for obj in objs:
        for cs in cluster_specs(obj):
            gpu = containers(worker_group(cs, "gpu")["template"])[0]["resources"]
            assert gpu["limits"]["nvidia.com/gpu"] == 3 and gpu["requests"]["nvidia.com/gpu"] == 3
            cpu = containers(worker_group(cs, "cpu")["template"])[0]["resources"]
            assert "nvidia.com/gpu" not in cpu["limits"]
            head = containers(cs["headGroupSpec"]["template"])[0]["resources"]
            assert "nvidia.com/gpu" not in head["limits"]
            gpu_tpl = worker_group(cs, "gpu")["template"]["spec"]
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_tpl["tolerations"]
            assert gpu_tpl["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # The GPU example: 2 GPUs per pod; synthesis runs on the GPU group only.
    docs = render(*VALUE_SETS["gpu"])
    cluster = one(docs, "RayCluster")["spec"]
    assert containers(worker_group(cluster, "gpu")["template"])[0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    synth_cs = one(docs, "RayJob", "-synthesize")["spec"]["rayClusterSpec"]
    assert [g["groupName"] for g in synth_cs["workerGroupSpecs"]] == ["gpu"]
    # The CPU example has no GPU group at all.
    for obj in ray_objects(render(*VALUE_SETS["cpu-small"])):
        for cs in cluster_specs(obj):
            assert [g["groupName"] for g in cs["workerGroupSpecs"]] == ["cpu"]


def test_autoscaling_and_metrics_port():
    docs = render(*sets(
        "ray.workerGroups.cpu.minReplicas=2", "ray.workerGroups.cpu.maxReplicas=9",
        "ray.workerGroups.cpu.replicas=3", "ray.metricsExportPort=9090",
    ))
    for obj in ray_objects(docs):
        for cs in cluster_specs(obj):
            assert cs["enableInTreeAutoscaling"] is True
            assert cs["rayVersion"] == "2.60.0"
            cpu = worker_group(cs, "cpu")
            assert (cpu["replicas"], cpu["minReplicas"], cpu["maxReplicas"]) == (3, 2, 9)
            groups = [cs["headGroupSpec"], *cs["workerGroupSpecs"]]
            for g in groups:
                assert g["rayStartParams"]["metrics-export-port"] == "9090"
                ports = {p["name"]: p["containerPort"] for p in containers(g["template"])[0]["ports"]}
                assert ports["metrics"] == 9090
    # default: port 8080 and the head keeps tasks off (num-cpus 0)
    head = one(render(), "RayCluster")["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["metrics-export-port"] == "8080"
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    # min > max is refused
    proc = run_helm("template", "x", str(CHART), *sets("ray.workerGroups.cpu.minReplicas=5",
                                                       "ray.workerGroups.cpu.maxReplicas=1"), check=False)
    assert proc.returncode != 0 and "minReplicas" in proc.stderr


def test_serve_config_from_values():
    docs = render(*sets(
        "serve.artifactUri=gs://models/adult/v9", "serve.sloP99Ms=75", "serve.maxBatchRows=2048",
        "serve.maxOngoingRequests=48", "serve.autoscaling.minReplicas=2",
        "serve.autoscaling.maxReplicas=12", "serve.autoscaling.targetOngoingRequests=6",
    ))
    cfg = serve_config(docs)
    (app,) = cfg["applications"]
    assert app["import_path"] == "serve.app:build_app"
    assert app["args"] == {
        "artifact_uri": "gs://models/adult/v9",
        "slo_p99_ms": 75.0,
        "max_batch_rows": 2048,
        "max_ongoing_requests": 48,
        "auth_token_env": "SYNTH_SERVE_TOKEN",
        "max_request_s": 10,
        "require_signature": False,
        "access_log": False,
    }
    assert cfg["logging_config"] == {"enable_access_log": False}  # the proxies' too
    assert isinstance(app["args"]["slo_p99_ms"], float)
    (dep,) = app["deployments"]
    assert dep["autoscaling_config"]["min_replicas"] == 2
    assert dep["autoscaling_config"]["max_replicas"] == 12
    assert dep["autoscaling_config"]["target_ongoing_requests"] == 6
    assert cfg["http_options"]["port"] == 8000
    svc = one(docs, "RayService")["spec"]
    head = containers(svc["rayClusterConfig"]["headGroupSpec"]["template"])[0]
    assert {"name": "serve", "containerPort": 8000, "protocol": "TCP"} in head["ports"]
    ray_env = lambda env: {e["name"]: e.get("value") for e in env if e["name"].startswith("RAY_SERVE_")}  # noqa: E731
    assert ray_env(head["env"]) == HAPROXY_ENV  # HAProxy ingress by default, as synth.serving.ingress says
    for group in svc["rayClusterConfig"]["workerGroupSpecs"]:
        assert ray_env(containers(group["template"])[0]["env"]) == HAPROXY_ENV
    proxies = containers(one(render(*sets("serve.haproxy=false")), "RayService")["spec"]["rayClusterConfig"]
                         ["headGroupSpec"]["template"])[0]["env"]
    assert ray_env(proxies) == PROXY_ENV  # Serve's Python proxies instead
    # A fractional SLO stays as given.
    assert serve_config(render(*sets("serve.sloP99Ms=12.5")))["applications"][0]["args"]["slo_p99_ms"] == 12.5


def test_nightly_schedule_and_toggle():
    schedule = "15 4 * * 1-5"
    docs = render(*sets(f"nightly.schedule={schedule}", "nightly.useRayCronJob=false"))
    assert not by_kind(docs, "RayCronJob")
    cron = one(docs, "CronJob")
    assert cron["spec"]["schedule"] == schedule
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == f"{RELEASE}-nightly"
    assert pod["containers"][0]["command"][:2] == ["kubectl", "create"]
    assert any(v.get("configMap", {}).get("name") == f"{RELEASE}-nightly-rayjob" for v in pod["volumes"])
    rayjob = nightly_rayjob_from_configmap(docs)
    assert rayjob["kind"] == "RayJob" and rayjob["metadata"]["generateName"] == f"{RELEASE}-nightly-"
    assert rayjob["metadata"]["namespace"] == NAMESPACE
    # the delete selector of the launcher matches the labels of the RayJobs it creates
    selector = next(a for a in pod["initContainers"][0]["command"] if a.startswith("--selector="))
    for pair in selector.split("=", 1)[1].split(","):
        key, value = pair.split("=")
        assert rayjob["metadata"]["labels"][key] == value
    role = one(docs, "Role")
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                              "verbs": ["create", "get", "list", "delete"]}]
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    assert one(docs, "ServiceAccount", "-nightly")["metadata"]["name"] == pod["serviceAccountName"]

    docs = render(*sets(f"nightly.schedule={schedule}", "nightly.useRayCronJob=true"))
    cron = one(docs, "RayCronJob")
    assert cron["spec"]["schedule"] == schedule
    assert not by_kind(docs, "CronJob") and not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    assert not [c for c in by_kind(docs, "ConfigMap") if "nightly" in c["metadata"]["name"]]

    docs = render(*sets("nightly.enabled=false"))
    assert not by_kind(docs, "CronJob") and not by_kind(docs, "RayCronJob")


def test_serve_token_secret():
    # token given: the chart creates the Secret and the Ray containers read it
    docs = render(*sets("serve.auth.token=tok-123"))
    secret = one(docs, "Secret", "serve-token")
    assert base64.b64decode(secret["data"]["token"]).decode() == "tok-123"
    svc = one(docs, "RayService")["spec"]["rayClusterConfig"]
    for tpl in [svc["headGroupSpec"]["template"], *(g["template"] for g in svc["workerGroupSpecs"])]:
        ref = env_of(containers(tpl)[0])["SYNTH_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": "token"}
    # the token never reaches the training cluster
    job_head = one(docs, "RayJob", "-train")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    assert "SYNTH_SERVE_TOKEN" not in env_of(containers(job_head)[0])
    # no token: reference the existing Secret, create none
    docs = render(*sets("serve.auth.existingSecret=vault-token", "serve.auth.existingSecretKey=bearer",
                        "serve.auth.tokenEnv=MY_TOKEN"))
    assert not by_kind(docs, "Secret")
    head = one(docs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    ref = env_of(containers(head)[0])["MY_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "vault-token", "key": "bearer"}
    assert serve_config(docs)["applications"][0]["args"]["auth_token_env"] == "MY_TOKEN"
    # auth on but no token source: refuse to render
    proc = run_helm("template", "x", str(CHART), *sets("serve.auth.existingSecret="), check=False)
    assert proc.returncode != 0 and "serve.auth" in proc.stderr
    # auth off
    docs = render(*sets("serve.auth.enabled=false"))
    head = one(docs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert "SYNTH_SERVE_TOKEN" not in env_of(containers(head)[0])
    assert serve_config(docs)["applications"][0]["args"]["auth_token_env"] == ""


def test_object_storage_secret():
    docs = render(*VALUE_SETS["full"])
    secret = one(docs, "Secret", "object-storage")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret/example",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": "http://minio.minio:9000",
    }
    for obj in ray_objects(docs):
        for cs in cluster_specs(obj):
            for tpl in [cs["headGroupSpec"]["template"], *(g["template"] for g in cs["workerGroupSpecs"])]:
                if obj["kind"] == "RayService":  # serving reads the model only: never the read-write keys
                    assert "envFrom" not in containers(tpl)[0]
                else:
                    assert containers(tpl)[0]["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    docs = render(*sets("objectStorage.existingSecret=my-s3"))
    assert not [s for s in by_kind(docs, "Secret") if "object-storage" in s["metadata"]["name"]]
    head = one(docs, "RayCluster")["spec"]["headGroupSpec"]["template"]
    assert containers(head)[0]["envFrom"] == [{"secretRef": {"name": "my-s3"}}]
    head = one(render(), "RayCluster")["spec"]["headGroupSpec"]["template"]
    assert "envFrom" not in containers(head)[0]
    proc = run_helm("template", "x", str(CHART), *sets("objectStorage.credentials.accessKeyId=A"), check=False)
    assert proc.returncode != 0 and "secretAccessKey" in proc.stderr


def test_defaults_are_hardened():
    """Issue 21.6: every Ray pod (and submitter) runs as non-root, without privilege escalation or
    capabilities, under the default seccomp profile, on a read-only root with a writable /tmp; a
    NetworkPolicy keeps the dashboard (the job API runs arbitrary code) to the release and the
    operator; serving pods get their own ServiceAccount, no read-write storage keys, a request
    timeout and, when asked, a signature check."""
    docs = render()
    checked = 0
    for obj in ray_objects(docs):
        for where, tpl in pod_templates(obj):
            pod = tpl["spec"]["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, (obj["kind"], where)
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, (obj["kind"], where)
            for c in containers(tpl):
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), where
            checked += 1
        for cs in cluster_specs(obj):
            assert cs["autoscalerOptions"]["securityContext"]["allowPrivilegeEscalation"] is False
    assert checked >= 8
    policy = one(docs, "NetworkPolicy")["spec"]
    release = {"app.kubernetes.io/name": "synth", "app.kubernetes.io/instance": RELEASE}
    assert policy["podSelector"]["matchLabels"].items() >= release.items() and policy["policyTypes"] == ["Ingress"]
    dashboard = [r for r in policy["ingress"] if any(p["port"] == 8265 for p in r.get("ports", []))]
    assert [p for r in dashboard for p in r["from"]] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}}}]
    assert {"from": [{"podSelector": {"matchLabels": release}}]} in policy["ingress"]  # Ray's own traffic
    for obj in ray_objects(docs):  # the release's pods are the ones the policy admits
        for where, tpl in pod_templates(obj):
            assert tpl["metadata"]["labels"].items() >= release.items(), (obj["kind"], where)
    svc = one(docs, "RayService")["spec"]
    assert yaml.safe_load(svc["serveConfigV2"])["http_options"]["request_timeout_s"] == 30
    head = svc["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert head["serviceAccountName"] == f"{RELEASE}-serve"
    assert one(docs, "ServiceAccount", f"{RELEASE}-serve")["automountServiceAccountToken"] is False
    docs = render(*sets("objectStorage.existingSecret=rw-keys", "objectStorage.serveExistingSecret=ro-keys",
                        "serve.requireSignature=true", "serve.publicKey=-----BEGIN PUBLIC KEY-----x"))
    svc = one(docs, "RayService")["spec"]
    head = containers(svc["rayClusterConfig"]["headGroupSpec"]["template"])[0]
    assert head["envFrom"] == [{"secretRef": {"name": "ro-keys"}}]
    assert env_of(head)["SYNTH_PUBLIC_KEY"]["value"].startswith("-----BEGIN PUBLIC KEY")
    assert yaml.safe_load(svc["serveConfigV2"])["applications"][0]["args"]["require_signature"] is True
    train = containers(one(docs, "RayJob", "-train")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])[0]
    assert train["envFrom"] == [{"secretRef": {"name": "rw-keys"}}]
    proc = run_helm("template", "x", str(CHART), *sets("serve.requireSignature=true"), check=False)
    assert proc.returncode != 0 and "serve.publicKey" in proc.stderr
    assert not by_kind(render(*sets("networkPolicy.enabled=false")), "NetworkPolicy")
    job = nightly_rayjob_from_configmap(render(*sets("nightly.signingKeySecret=nightly-key")))
    env = env_of(containers(job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])[0])
    assert env["SYNTH_SIGNING_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "nightly-key", "key": "signing.pem"}}


def test_monitors_target_the_metrics_port():
    docs = render(*VALUE_SETS["full"])
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service", "head-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["port"] == 8080 and svc["spec"]["ports"][0]["name"] == "metrics"
    assert svc["spec"]["selector"]["ray.io/node-type"] == "head"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["spec"]["selector"]["matchExpressions"][0]["values"] == ["worker"]
    # every Ray pod carries the labels the monitors select on, and a port named metrics
    for obj in ray_objects(docs):
        for where, tpl in pod_templates(obj):
            if where == "submitterPodTemplate":
                continue
            labels = tpl["metadata"]["labels"]
            assert pm["spec"]["selector"]["matchLabels"].items() <= labels.items()
            assert "metrics" in {p["name"] for p in containers(tpl)[0]["ports"]}
    # PodMonitor alone covers heads too; both off by default
    pm = one(render(*sets("monitoring.podMonitor.enabled=true")), "PodMonitor")
    assert pm["spec"]["selector"]["matchExpressions"][0]["values"] == ["head", "worker"]
    defaults = render()
    assert not by_kind(defaults, "ServiceMonitor") and not by_kind(defaults, "PodMonitor")


def test_resource_names_fit_kuberay_limits():
    release = "a-very-long-release-name-for-synthetic-data-platform"
    docs = render(*sets("synthesize.enabled=true", "train.runId=abcdefghijklmnop"), release=release)
    for obj in ray_objects(docs):
        name = obj["metadata"].get("name") or obj["metadata"]["generateName"] + "xxxxx"
        assert len(name) <= 47, name
        validate_custom(obj)
    for d in docs:
        assert len(d["metadata"]["name"]) <= 63


def test_values_schema_rejects_typos_and_wrong_types():
    for bad, message in [
        ("serve.sloP99ms=5", "sloP99ms"),
        ("ray.workerGroups.gpu.gpusPerWorker=two", "gpusPerWorker"),
        ("nightly.cronJob.concurrencyPolicy=Sometimes", "concurrencyPolicy"),
        ("ray.auth.mode=password", "mode"),
    ]:
        proc = run_helm("template", "x", str(CHART), "--set", bad, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (bad, proc.stderr)


def test_extra_worker_group_and_selection():
    docs = render(*sets(
        "ray.workerGroups.highmem.enabled=true", "ray.workerGroups.highmem.groupName=highmem",
        "ray.workerGroups.highmem.minReplicas=0", "ray.workerGroups.highmem.maxReplicas=2",
        "ray.workerGroups.highmem.resources.limits.memory=256Gi",
        "serve.workerGroups={cpu}",
    ))
    cluster = one(docs, "RayCluster")["spec"]
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["cpu", "gpu", "highmem"]
    mem = containers(worker_group(cluster, "highmem")["template"])[0]["resources"]["limits"]["memory"]
    assert mem == "256Gi"
    served = one(docs, "RayService")["spec"]["rayClusterConfig"]
    assert [g["groupName"] for g in served["workerGroupSpecs"]] == ["cpu"]
    proc = run_helm("template", "x", str(CHART), "--set", "train.workerGroups={nope}", check=False)
    assert proc.returncode != 0 and "unknown worker group" in proc.stderr


def test_ray_token_auth_options():
    for obj in ray_objects(render()):
        for cs in cluster_specs(obj):
            assert cs["authOptions"] == {"mode": "token"}
    docs = render(*sets("ray.auth.mode=", "ray.auth.secretName=ignored"))
    for obj in ray_objects(docs):
        for cs in cluster_specs(obj):
            assert "authOptions" not in cs
    cluster = one(render(*sets("ray.auth.secretName=ray-token")), "RayCluster")["spec"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "ray-token"}


# --------------------------------------------------------------------------- dashboard


def test_grafana_dashboard_configmap_and_copy():
    chart_copy = CHART / "dashboards" / "synth-grafana.json"
    top_copy = REPO / "dashboards" / "synth-grafana.json"
    assert top_copy.read_text() == chart_copy.read_text(), (
        "dashboards/synth-grafana.json must equal helm/synth/dashboards/synth-grafana.json "
        "(the chart's file is the source of truth; copy it over)"
    )
    cm = one(render(), "ConfigMap", "grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["synth-grafana.json"]) == json.loads(chart_copy.read_text())
    assert not [c for c in by_kind(render(*sets("monitoring.grafanaDashboard.enabled=false")), "ConfigMap")
                if "grafana" in c["metadata"]["name"]]


def test_grafana_dashboard_panels():
    dash = json.loads((CHART / "dashboards" / "synth-grafana.json").read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels}
    all_exprs = " ".join(exprs.values())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, sampler) (rate(ray_synth_request_latency_ms_bucket" in all_exprs
    assert "rate(ray_synth_slo_violations_total" in all_exprs
    assert "rate(ray_synth_rows_generated_total" in all_exprs
    assert "ray_synth_batch_size_bucket" in all_exprs
    assert "ray_synth_inflight_requests" in all_exprs
    assert "ray_serve_" in all_exprs
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
        for t in p["targets"]:
            assert t["refId"] and t["datasource"]["uid"] == "${datasource}"
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    metric_names = set(re.findall(r"\b(ray_[a-z_]+)\b", all_exprs))
    assert all(m.startswith(("ray_synth_", "ray_serve_")) for m in metric_names), metric_names


# --------------------------------------------------------------------------- values.yaml docs


def test_every_values_field_is_documented():
    """Each key in values.yaml has a comment line right above it, except keys inside a
    value documented as a whole (its comment starts with "# --", e.g. resources)."""
    undocumented = []
    stack: list[tuple[int, bool]] = []  # (indent, documented-as-a-whole)
    comments: list[str] = []  # the comment block right above the current line
    for lineno, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        m = re.match(r"^(\s*)([A-Za-z0-9_.\-/\"]+):(\s|$)", line)
        if m:
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            inside_whole_value = any(whole for _, whole in stack)
            if not inside_whole_value and not comments:
                undocumented.append(f"{lineno}: {stripped}")
            whole = inside_whole_value or any(c.startswith("# --") for c in comments)
            stack.append((indent, whole))
        if stripped.startswith("#"):
            comments.append(stripped)
        elif stripped:
            comments = []
    assert not undocumented, "undocumented values:\n" + "\n".join(undocumented)


# --------------------------------------------------------------------------- cluster launcher


@functools.lru_cache(maxsize=None)
def _ray_cluster_schema() -> dict:
    import importlib.util

    spec = importlib.util.find_spec("ray")
    assert spec and spec.origin
    return json.loads((Path(spec.origin).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "local.yaml"])
def test_cluster_launcher_configs(name):
    cfg = yaml.safe_load((REPO / "cluster" / name).read_text())
    jsonschema.validate(cfg, _ray_cluster_schema())
    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head_cmds and "--metrics-export-port=8080" in head_cmds
    assert "--metrics-export-port=8080" in " ".join(cfg["worker_start_ray_commands"])
    setup = " ".join(cfg.get("setup_commands", []))
    assert "pip install -c constraints.txt ." in setup
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):  # Serve's ingress as deployed
        words = shlex.split(next(c for c in cmds if "ray start" in c).replace(";", " ; "))
        env = dict(w.split("=", 1) for w in words if "=" in w and w.split("=", 1)[0].isupper())
        assert {k: env.get(k) for k in HAPROXY_ENV} == HAPROXY_ENV, env
    if name == "aws-gpu.yaml":
        types = cfg["available_node_types"]
        assert cfg["head_node_type"] in types
        gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
        cpu_types = [n for n, t in types.items() if n != cfg["head_node_type"] and not t["resources"].get("GPU")]
        assert gpu_types and cpu_types
        assert "**/.venv" in cfg["rsync_exclude"] or ".venv" in " ".join(cfg["rsync_exclude"])
    else:
        assert cfg["provider"]["type"] == "local"
        assert cfg["provider"]["head_ip"] and isinstance(cfg["provider"]["worker_ips"], list)


def test_runtime_env_file():
    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert any(".venv" in x for x in env["excludes"])
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**{k: v for k, v in env.items() if k != "working_dir"})  # known fields, right types
