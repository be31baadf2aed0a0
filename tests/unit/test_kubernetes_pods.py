"""The pods the KubernetesExecutor would submit for this bundle, built offline with the provider's own code.

No cluster runs here: each pod is built the way the executor builds it (``PodGenerator.construct_pod`` over the
pod template file, the executor's own pod and the task's ``executor_config`` pod_override, read back from the
serialized DAG as the scheduler does) and validated with the ``kubernetes`` client's models: it must survive a
round trip through the API's JSON form unchanged (an unknown or misspelt field is dropped by the models, so it
would show as a difference). What this does not check: admission by a real API server (quotas, policies), and the
Helm chart's rendering (no ``helm`` here; values.yaml is checked against the chart's documented keys below).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "include" / "kubernetes"
IMAGE = "registry.example.org/facility-data/airflow:3.3.2-facility"
#: the heavy tasks of the brief/issue: Rubin zip and Butler ingest, the reconcile checks, local reconstruction
HEAVY = {
    ("rubin_unembargo_raw", "exposure.zip"), ("rubin_unembargo_raw", "exposure.butler_ingest"),
    ("rubin_unembargo_reconcile", "check"), ("rubin_unembargo_reconcile", "repair"),
    ("rubin_unembargo_reconcile", "finish"), ("rubin_unembargo_reconcile", "prompt"),
    ("rubin_unembargo_prompt", "transfer"),  # prompt products: copied and checksummed
    ("bl832_recon_local", "reconstruct"), ("bl832_recon_local", "multiscale"),
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture(scope="module")
def serialized_dags():
    """The shipped DAGs parsed with pod overrides on, then serialized and restored as the scheduler reads them."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FACILITY_PLACEMENT", raising=False)
        mp.setenv("FACILITY_POD_OVERRIDES", "true")
        bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    return {d.dag_id: DagSerialization.from_dict(DagSerialization.to_dict(d)) for d in bag.dags.values()}


def _template():
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    return PodGenerator.deserialize_model_file(str(K8S / "pod_template.yaml"))


def _submitted_pod(dag_id: str, task):
    """The pod the executor would create for one try of ``task`` (KubernetesJobWatcher._build_pod_request)."""
    from airflow.providers.cncf.kubernetes.kubernetes_helper_functions import create_unique_id
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

    return PodGenerator.construct_pod(
        dag_id=dag_id, task_id=task.task_id, pod_id=create_unique_id(dag_id, task.task_id), try_number=1,
        kube_image=IMAGE, date=None, run_id="scheduled__2026-12-01T00:00:00+00:00", map_index=0,
        args=["python", "-m", "airflow.sdk.execution_time.execute_workload", "--json-string", "{}"],
        pod_override_object=PodGenerator.from_obj(task.executor_config), base_worker_pod=_template(),
        namespace="airflow", scheduler_job_id="1")


def _valid(pod) -> dict:
    """``pod`` as the API's JSON, after checking that the client's models read it back without losing anything
    and that its names and references are ones the API server accepts."""
    from kubernetes.client import ApiClient, V1Pod

    api = ApiClient()
    body = api.sanitize_for_serialization(pod)
    again = api._ApiClient__deserialize(body, "V1Pod")  # the models' own validation (required fields, enums)
    assert isinstance(again, V1Pod) and api.sanitize_for_serialization(again) == body
    spec = body["spec"]
    volumes = [v["name"] for v in spec.get("volumes", [])]
    assert len(volumes) == len(set(volumes)), f"duplicate volumes {volumes}"
    for c in spec["containers"]:
        assert DNS_LABEL.match(c["name"]), c["name"]
        mounts = c.get("volumeMounts", [])
        assert len({m["mountPath"] for m in mounts}) == len(mounts), f"two mounts on one path: {mounts}"
        assert {m["name"] for m in mounts} <= set(volumes), f"mount of an undeclared volume: {mounts}"
    assert len(body["metadata"]["name"]) <= 63 and DNS_LABEL.match(body["metadata"]["name"])
    return body


def test_pod_template_is_a_valid_worker_pod():
    raw = yaml.safe_load((K8S / "pod_template.yaml").read_text())
    body = _valid(_template())
    assert body == raw, "the client's models dropped or changed fields of the template (misspelt key?)"
    assert body["spec"]["containers"][0]["name"] == "base"  # the executor merges into the container named base
    assert body["spec"]["restartPolicy"] == "Never"


def test_heavy_tasks_and_only_they_carry_a_pod_override(serialized_dags):
    with_pod = {(dag_id, t.task_id) for dag_id, d in serialized_dags.items() for t in d.tasks
                if "pod_override" in (t.executor_config or {})}
    assert with_pod == HEAVY


@pytest.mark.parametrize(("dag_id", "task_id"), sorted(HEAVY))
def test_heavy_task_pod_has_the_usdf_cronjob_resources(serialized_dags, dag_id, task_id):
    from kubernetes.utils import parse_quantity

    body = _valid(_submitted_pod(dag_id, serialized_dags[dag_id].get_task(task_id)))
    base = body["spec"]["containers"][0]
    assert base["name"] == "base" and base["image"] == IMAGE
    limits, requests = base["resources"]["limits"], base["resources"]["requests"]
    assert parse_quantity(limits["cpu"]) == 4 and parse_quantity(limits["memory"]) == 4 * 2**30
    assert parse_quantity(requests["memory"]) == 4 * 2**30
    assert parse_quantity(requests["ephemeral-storage"]) == 16 * 2**30
    tmp = {v["name"]: v for v in body["spec"]["volumes"]}["tmp"]
    assert parse_quantity(tmp["emptyDir"]["sizeLimit"]) == 16 * 2**30
    mounts = {m["mountPath"]: m["name"] for m in base["volumeMounts"]}
    # the override adds /tmp; the template's bundle and log mounts stay
    assert mounts == {"/tmp": "tmp", "/opt/airflow/dags": "dags", "/opt/airflow/logs": "logs"}
    env = {e["name"] for e in base["env"]}
    assert {"FACILITY_INCLUDE", "FACILITY_POD_OVERRIDES", "AIRFLOW_IS_K8S_EXECUTOR_POD"} <= env
    assert base["envFrom"] == [{"secretRef": {"name": "facility-data-connections"}}]
    assert body["metadata"]["labels"]["facility-data/pod-profile"] == "heavy"
    assert body["metadata"]["annotations"]["task_id"] == task_id


def test_light_task_pod_is_the_template_with_the_executor_container(serialized_dags):
    task = serialized_dags["rubin_unembargo_raw"].get_task("select")
    body = _valid(_submitted_pod("rubin_unembargo_raw", task))
    base = body["spec"]["containers"][0]
    assert base["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    assert "tmp" not in {v["name"] for v in body["spec"]["volumes"]}
    assert base["image"] == IMAGE and base["args"][:3] == ["python", "-m", "airflow.sdk.execution_time.execute_workload"]


@pytest.mark.parametrize("value", ["500m", "4", "1.5", "2k", "4Gi", "16Gi", "512Mi", "1Ti"])
def test_placement_quantities_read_as_kubernetes_reads_them(value):
    from kubernetes.utils import parse_quantity

    from facility_data.placement import quantity

    assert quantity(value) == parse_quantity(value)


# --- the Helm chart's values -------------------------------------------------------------------------------------
#: the chart keys values.yaml may use, each looked up by hand in the official chart's documentation
#: (https://airflow.apache.org/docs/helm-chart/: "Adding Connections, Variables and Environment Variables" for `env`
#: and `secret`, "Manage Dag files" for `images.airflow.*` and `dags.gitSync.*`, which mounts the checkout at
#: <dags>/repo); this is our own list, not the chart's values.schema.json (not available offline).
CHART_KEYS = {
    "executor", "images.airflow.repository", "images.airflow.tag", "dags.persistence.enabled",
    "dags.gitSync.enabled", "dags.gitSync.repo", "dags.gitSync.branch", "dags.gitSync.rev", "dags.gitSync.depth",
    "dags.gitSync.subPath", "env", "secret", "config",
}


def _paths(d: dict, prefix: str = ""):
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in CHART_KEYS:
            yield from _paths(value, f"{path}.")
        else:
            yield path


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((K8S / "values.yaml").read_text())


def test_values_use_only_documented_chart_keys(values):
    assert sorted(set(_paths(values)) - CHART_KEYS) == []
    assert values["executor"] == "KubernetesExecutor"


def test_values_config_options_exist_in_airflow(values):
    """Every airflow.cfg option set through the chart's `config` exists in Airflow's or a provider's config."""
    from airflow.configuration import retrieve_configuration_description

    known = retrieve_configuration_description(include_providers=True)
    unknown = [f"[{s}] {o}" for s, opts in values["config"].items() for o in opts
               if o not in known.get(s, {}).get("options", {})]
    assert not unknown and all(isinstance(v, str) for opts in values["config"].values() for v in opts.values())


def test_values_point_the_workers_at_the_bundle_and_turn_pod_overrides_on(values):
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["FACILITY_POD_OVERRIDES"] == "true"
    # git-sync checks the repository out under <dags mount>/repo; the DAG folder is its subPath
    assert values["dags"]["gitSync"]["subPath"] == "dags"
    assert env["FACILITY_INCLUDE"] == "/opt/airflow/dags/repo/include"
    template_env = {e["name"]: e["value"] for e in _valid(_template())["spec"]["containers"][0]["env"]}
    assert template_env["FACILITY_INCLUDE"] == env["FACILITY_INCLUDE"]


def test_values_take_every_rubin_connection_from_a_kubernetes_secret(values):
    from facility_data.rubin.policy import load_policy

    policy = load_policy(REPO / "include" / "embargo_policy.yaml")
    needed = {policy.source.conn_id, policy.rucio.conn_id, *(d.conn_id for d in policy.destinations),
              "aws_embargo"}  # USDF's embargo store is S3 (the commented alternative in the policy)
    by_env = {s["envName"]: s for s in values["secret"]}
    missing = [c for c in sorted(needed) if f"AIRFLOW_CONN_{c.upper()}" not in by_env]
    assert not missing
    assert all(s["secretName"] and s["secretKey"] for s in values["secret"])
    # no connection value written in the file itself
    text = (K8S / "values.yaml").read_text()
    assert "extraSecrets" not in values and "password" not in text.lower()
