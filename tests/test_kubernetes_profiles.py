"""The shipped profiles on a cluster that checks them: profiles/nautilus under NRP Nautilus'
admission policy and a scheduler with Nautilus-like GPU nodes, through Snakemake and the API
double (tests/k8s_double.py), on a tiny workflow whose rules carry the pipeline's rule names.
profiles/kubernetes passes the plain schema in tests/test_kubernetes_e2e.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from k8s_double import KubernetesDouble, NautilusPolicy, Node

from snakemake_executor_plugin_kubernetes_pods.pod_settings import (
    S3_ENDPOINT_VARIABLE,
    load_pod_settings,
)

pytestmark = pytest.mark.slow  # Snakemake runs through the API double

NAUTILUS = ROOT / "profiles" / "nautilus"
BUCKET = "nadir-k8s-profiles"
DEFAULT_MODEL, LARGE_MODEL = "ssdlite320_mobilenet_v3_large", "fasterrcnn_convnext_tiny_fpn"
SNAKEFILE = f'''
MODELS = ["{DEFAULT_MODEL}", "{LARGE_MODEL}"]

rule all:
    input: expand("out/{{model}}.eval", model=MODELS), "out/scenes.txt", "out/shard.txt"

rule chip:
    output: "out/shard.txt"
    shell: "echo shard > {{output}}"

rule train:
    output: "out/{{model}}.pt"
    shell: "echo {{wildcards.model}} > {{output}}"

rule evaluate:
    input: "out/{{model}}.pt"
    output: "out/{{model}}.eval"
    shell: "cat {{input}} > {{output}}"

rule evaluate_scenes:
    output: "out/scenes.txt"
    shell: "echo scenes > {{output}}"
'''
GPU_NODE = {"cpu": "64", "memory": "512Gi"}
NODES = [
    # listed first: a fitting card, but a driver too old for torch's CUDA 13.0
    Node("rtx3090-old-driver", {"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-3090",
                                "nvidia.com/cuda.driver.major": "550"},
         {**GPU_NODE, "nvidia.com/gpu": "8"}),
    Node("a100-node", {"nvidia.com/gpu.product": "NVIDIA-A100-80GB-PCIe",
                       "nvidia.com/cuda.driver.major": "580"},
         {**GPU_NODE, "nvidia.com/a100": "4"}),
    Node("rtx3090-node", {"nvidia.com/gpu.product": "NVIDIA-GeForce-RTX-3090",
                          "nvidia.com/cuda.driver.major": "580"},
         {**GPU_NODE, "nvidia.com/gpu": "8"}),
    Node("cpu-node", {}, {"cpu": "64", "memory": "256Gi"}),
]


@pytest.fixture(scope="module")
def nautilus_run(s3, tmp_path_factory):
    base = tmp_path_factory.mktemp("k8s-profiles")
    workflow = base / "workflow"
    workflow.mkdir()
    (workflow / "Snakefile").write_text(textwrap.dedent(SNAKEFILE))
    subprocess.run(["git", "init", "-q"], cwd=workflow, check=True)
    subprocess.run(["git", "add", "-A"], cwd=workflow, check=True)
    double = KubernetesDouble(base / "double", Path(sys.executable).parent,
                              namespace="nadir-ci", nodes=NODES, policy=NautilusPolicy()).start()
    env = {**os.environ, **s3.env(), "KUBECONFIG": str(double.kubeconfig),
           "PYTHONPATH": str(ROOT / "src")}
    # The controller reaches S3 by one name, pods by another (as outside/inside Nautilus).
    outside = s3.endpoint.replace("127.0.0.1", "localhost")
    cmd = [sys.executable, "-m", "snakemake", "--workflow-profile", str(NAUTILUS),
           "--kubernetes-pods-namespace", double.namespace, "--jobs", "8",
           "--default-storage-prefix", f"s3://{BUCKET}/nautilus",
           "--storage-s3-endpoint-url", outside,
           "--kubernetes-pods-s3-endpoint-in-pods", s3.endpoint,
           "--seconds-between-status-checks", "1", "--set-threads", "train=1", "evaluate=1"]
    proc = subprocess.run(cmd, cwd=workflow, env=env, capture_output=True, text=True,
                          timeout=600)
    yield double, proc, outside
    double.stop()


def jobs_of(double: KubernetesDouble, rule: str) -> list[dict]:
    return [j for j in double.accepted("Job")
            if j["metadata"]["labels"]["snakemake-rule"] == rule]


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_nautilus_profile_passes_the_admission_policy_and_runs(nautilus_run, s3):
    double, proc, _ = nautilus_run
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert [r.error for r in double.received if not r.accepted] == []
    assert len(double.accepted("Job")) == 6
    stored = s3.client().get_object(Bucket=BUCKET, Key=f"nautilus/out/{LARGE_MODEL}.eval")
    assert stored["Body"].read().decode().strip() == LARGE_MODEL


def test_a_model_that_asks_for_a_larger_card_gets_it(nautilus_run):
    double, _, _ = nautilus_run
    placed = {}
    for rule in ("train", "evaluate"):
        for job in jobs_of(double, rule):
            model = next(m for m in (DEFAULT_MODEL, LARGE_MODEL)
                         if m in container(job)["args"][-1])
            pod = double.pod_of(job["metadata"]["name"])
            placed[rule, model] = (pod.node_name, container(job)["resources"]["limits"])
    for rule in ("train", "evaluate"):
        node, limits = placed[rule, LARGE_MODEL]
        assert node == "a100-node" and limits["nvidia.com/a100"] == "1"
        assert "nvidia.com/gpu" not in limits
        node, limits = placed[rule, DEFAULT_MODEL]
        # the old-driver node comes first and fits the card, but not torch's CUDA 13.0
        assert node == "rtx3090-node" and limits["nvidia.com/gpu"] == "1"


def test_small_rules_ask_one_cpu_two_gb_and_no_gpu(nautilus_run):
    double, _, _ = nautilus_run
    for rule in ("chip", "evaluate_scenes"):
        [job] = jobs_of(double, rule)
        resources = container(job)["resources"]
        assert not any("nvidia.com" in name for name in resources["requests"])
        assert resources["requests"] == resources["limits"]  # within any limit/request ratio
        assert "affinity" not in job["spec"]["template"]["spec"]
    [scenes] = jobs_of(double, "evaluate_scenes")
    assert container(scenes)["resources"]["requests"]["cpu"] == "1000m"
    assert container(scenes)["resources"]["requests"]["memory"] == "2000M"


def test_pods_reach_s3_at_the_in_cluster_endpoint(nautilus_run, s3):
    double, _, outside = nautilus_run
    [secret] = double.accepted("Secret")
    assert secret["data"]  # the controller's endpoint travels in the run's Secret...
    for job in double.accepted("Job"):
        env = {e["name"]: e for e in container(job)["env"]}
        # ...and each pod's environment names the in-cluster one instead
        assert env[S3_ENDPOINT_VARIABLE] == {"name": S3_ENDPOINT_VARIABLE, "value": s3.endpoint}
        assert outside not in str(job)


def test_the_policy_refuses_what_nautilus_refuses():
    policy = NautilusPolicy()
    job = {"spec": {"template": {"spec": {"containers": [{
        "name": "snakemake", "command": ["/bin/sh"], "args": ["-c", "python -m snakemake"],
        "resources": {"requests": {"cpu": "1", "memory": "2G"},
                      "limits": {"cpu": "1", "memory": "2G"}}}]}}}}
    policy.check(job)
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    cases = [
        (lambda c: c["args"].__setitem__(1, "sleep infinity"), "`sleep`"),
        (lambda c: c["resources"]["limits"].update(memory="8G"), "more than 1.2 times"),
        (lambda c: c["resources"]["limits"].pop("cpu"), "requests and limits of cpu"),
        (lambda c: c["resources"]["requests"].update({"nvidia.com/h100": "1"}),
         "GPU resource 'nvidia.com/h100' is not offered"),
    ]
    for mutate, expected in cases:
        case = yaml.safe_load(yaml.safe_dump(job))
        mutate(case["spec"]["template"]["spec"]["containers"][0])
        with pytest.raises(Exception, match=expected.replace("(", r"\(")):
            policy.check(case)
    assert resources["limits"]["memory"] == "2G"  # the cases worked on copies


def test_both_profiles_pod_settings_load_and_name_known_classes():
    for profile in ("kubernetes", "nautilus"):
        settings = load_pod_settings(ROOT / "profiles" / profile / "pods.yaml")
        assert set(settings.model_classes.values()) <= set(settings.gpu_classes)
        for name in settings.gpu_classes:
            affinity = settings.for_job(True, name).affinity["nodeAffinity"]
            terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
            keys = [e["key"] for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]]
            assert "nvidia.com/cuda.driver.major" in keys  # CUDA 13.0 needs driver 580+
