"""The shipped profiles as a cluster takes them: profiles/nautilus's GPU classes in a fresh NRP
Nautilus namespace of the API double (tests/k8s_double.py: its policy, priority classes, quotas
and nodes), its defaults, its Role against the docs; profiles/kubernetes's options as Snakemake
reads them. The pipeline runs with profiles/nautilus in tests/test_kubernetes_e2e.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import kubernetes.client
import kubernetes.config
import pytest
import yaml
from conftest import ROOT
from k8s_double import (
    NAUTILUS_FACTS,
    KubernetesDouble,
    NautilusPolicy,
    Node,
    fact,
    nautilus_namespace,
    role_from_manifests,
)

from snakemake_executor_plugin_kubernetes_pods.pod_settings import (
    apply_pod_settings,
    load_pod_settings,
)

NAUTILUS = ROOT / "profiles" / "nautilus"
CONFIG = yaml.safe_load((NAUTILUS / "config.yaml").read_text())
ON_GPU_NODES = {fact("gpu_node_label"): "true", "nvidia.com/cuda.driver.major": "580"}
NODE = {"cpu": "64", "memory": "512Gi", "ephemeral-storage": "2Ti"}


def gpu_node(name: str, product: str, resource: str, driver: str = "580") -> Node:
    return Node(name, {**ON_GPU_NODES, "nvidia.com/gpu.product": product,
                       "nvidia.com/cuda.driver.major": driver}, {**NODE, resource: "4"})


# Nautilus-like nodes, those the profile must not pick first (the scheduler takes the first fit).
NODES = [
    gpu_node("rtx3090-old-driver", "NVIDIA-GeForce-RTX-3090", "nvidia.com/gpu", driver="550"),
    gpu_node("a100-node", "NVIDIA-A100-SXM4-80GB", "nvidia.com/a100"),
    gpu_node("h100-node", "NVIDIA-H100-80GB-HBM3", "nvidia.com/h100"),
    gpu_node("h200-node", "NVIDIA-H200", "nvidia.com/h200"),
    gpu_node("a40-node", "NVIDIA-A40", "nvidia.com/a40"),
    gpu_node("rtx3090-node", "NVIDIA-GeForce-RTX-3090", "nvidia.com/gpu"),
    Node("cpu-node", {"kubernetes.io/hostname": "cpu-node"}, NODE),
]


def upstream_like_job(name: str, gpu: bool) -> dict:
    """A Job as snakemake-executor-plugin-kubernetes 0.5.1 builds it (scale 0)."""
    amounts = {"cpu": "1000m", "memory": "4000M", **({"nvidia.com/gpu": "1"} if gpu else {})}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "snakemake", "image": "nadir:ci", "command": ["/bin/sh"],
                                "args": ["-c", "true"], "resources": {
                                    "requests": dict(amounts), "limits": dict(amounts)}}]}}}}


def test_each_nautilus_class_lands_on_its_cards_and_gated_ones_wait_for_a_grant(tmp_path):
    """In a namespace with Nautilus' default quotas: the default GPU settings and the ungated
    class run on their cards (not on a node with an old driver); A100/H100/H200 are refused at
    once until the namespace's request is granted, but the opportunistic classes (which bypass
    the GPU quota) run on them; CPU pods keep off every GPU node."""
    settings = load_pod_settings(NAUTILUS / "pods.yaml")
    double = KubernetesDouble(tmp_path / "k8s", Path(sys.executable).parent,
                              namespace="nadir-ci", nodes=NODES, **nautilus_namespace()).start()
    batch = kubernetes.client.BatchV1Api(
        kubernetes.config.new_client_from_config(str(double.kubeconfig)))
    cases = {None: "rtx3090-node", "a40": "a40-node", "a100": None, "h100": None, "h200": None,
             "opportunistic-a100": "a100-node", "opportunistic-h100": "h100-node"}
    assert set(cases) - {None} == set(settings.gpu_classes)
    try:
        for gpu_class, node in cases.items():
            name = f"gpu-{gpu_class or 'default'}"
            batch.create_namespaced_job(double.namespace, apply_pod_settings(
                upstream_like_job(name, gpu=True), settings.for_job(True, gpu_class),
                rule="train", run_id="r", requests_gpu=True))
            pod = double.jobs[name].pod
            if node is None:
                [refusal] = [e["message"] for e in double.events
                             if e["involvedObject"]["name"] == name]
                assert "exceeded quota: gpu-quota" in refusal and pod is None, name
            else:
                assert pod.node_name == node, name
        batch.create_namespaced_job(double.namespace, apply_pod_settings(
            upstream_like_job("cpu", gpu=False), settings.for_job(False), rule="chip",
            run_id="r"))
        assert double.jobs["cpu"].pod.node_name == "cpu-node"
    finally:
        double.stop()
    # by default, every model's GPU is one that needs no request
    for model, gpu_class in settings.model_classes.items():
        resource = settings.for_job(True, gpu_class).gpuResource
        assert resource in fact("ungated_gpu_resources"), (model, resource)


def test_the_nautilus_profile_runs_a_sweep_unattended():
    """keep-going (one failed job stops only what depends on it), a deadline for every rule, a
    longer queue wait for GPU jobs than any other wait, and a restarted controller that takes
    outputs finished while it was down."""
    assert CONFIG["keep-going"] is True and CONFIG["ignore-incomplete"] is True
    assert CONFIG["default-resources"]["runtime"] > 0
    assert CONFIG["kubernetes-pods-gpu-queue-timeout"] > CONFIG["kubernetes-pods-stuck-timeout"]
    endpoints = (NAUTILUS / "config.yaml").read_text()
    for region in ("rook-ceph-rgw-nautiluss3.rook", "rook-ceph-rgw-centrals3.rook-central",
                   "rook-ceph-rgw-easts3.rook-east"):
        assert f"http://{region}" in endpoints  # the in-cluster endpoint of each region


def test_the_policy_refuses_what_nautilus_refuses():
    policy = NautilusPolicy()
    job = {"spec": {"template": {"spec": {"containers": [{
        "name": "snakemake", "command": ["/bin/sh"], "args": ["-c", "python -m snakemake"],
        "resources": {"requests": {"cpu": "1", "memory": "2G"},
                      "limits": {"cpu": "1", "memory": "2G"}}}]}}}}
    policy.check(job)
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    cases = [
        (lambda c: c["args"].__setitem__(1, "sleep infinity"), "`sleep infinity`"),
        (lambda c: c["resources"]["limits"].update(memory="8G"), "more than 1.2 times"),
        (lambda c: c["resources"]["limits"].pop("cpu"), "requests and limits of cpu"),
        (lambda c: c["resources"]["requests"].update({"nvidia.com/v100": "1"}),
         "GPU resource 'nvidia.com/v100' is not offered"),
    ]
    for mutate, expected in cases:
        case = yaml.safe_load(yaml.safe_dump(job))
        mutate(case["spec"]["template"]["spec"]["containers"][0])
        with pytest.raises(Exception, match=expected.replace("(", r"\(")):
            policy.check(case)
    assert resources["limits"]["memory"] == "2G"  # the cases worked on copies
    for name, known in NAUTILUS_FACTS.items():  # each fact says where it comes from
        assert re.match(r"https://(nrp\.ai|nationalresearchplatform\.org)/", known.source), name


def test_both_profiles_pod_settings_load_and_name_known_classes():
    for profile in ("kubernetes", "nautilus"):
        settings = load_pod_settings(ROOT / "profiles" / profile / "pods.yaml")
        assert set(settings.model_classes.values()) <= set(settings.gpu_classes)
        for name in settings.gpu_classes:
            affinity = settings.for_job(True, name).affinity["nodeAffinity"]
            terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]
            keys = [e["key"] for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]]
            assert "nvidia.com/cuda.driver.major" in keys  # CUDA 13.0 needs driver 580+
        # pods without a GPU keep off GPU nodes
        cpu = settings.for_job(False).affinity["nodeAffinity"]
        [term] = cpu["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert term["matchExpressions"] == [
            {"key": fact("gpu_node_label"), "operator": "NotIn", "values": ["true"]}]


def test_the_docs_rights_check_covers_the_shipped_role():
    """docs/kubernetes.md tells users to check their rights with `kubectl auth can-i`: the list
    covers every right of the Role shipped in profiles/nautilus/controller.yaml, and the docs
    carry no Role of their own that could drift from it."""
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    role = role_from_manifests(NAUTILUS / "controller.yaml", "ns")
    loop = re.search(r"for r in (.*?); do", docs, re.S).group(1)
    checked = set(re.findall(r'"(\w+) ([\w/]+)"', loop))
    granted = {(verb, resource) for rule in role.rules for resource in rule["resources"]
               for verb in rule["verbs"]}
    assert checked == granted
    assert "kind: Role" not in docs


@pytest.mark.slow
def test_the_generic_profile_is_read_by_snakemake(s3, tmp_path):
    """profiles/kubernetes: every option a valid one (a dry run reads them all)."""
    workflow = tmp_path / "workflow"
    workflow.mkdir()
    (workflow / "Snakefile").write_text(textwrap.dedent("""
        rule train:
            output: "out/model.pt"
            shell: "echo model > {output}"
        """))
    env = {**os.environ, **s3.env(), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--workflow-profile",
         str(ROOT / "profiles" / "kubernetes"), "--default-storage-prefix",
         "s3://nadir-k8s-profiles/generic", "--storage-s3-endpoint-url", s3.endpoint, "-n"],
        cwd=workflow, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train" in proc.stdout
