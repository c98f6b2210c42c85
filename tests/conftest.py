"""Shared fixtures: the repository's source on sys.path, a real S3 server, Snakemake runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
# As every nadir job sets it (nadir.core.jobs): tests that train in the pytest process would
# otherwise spin idle OpenMP threads, which under pytest-xdist's two workers on two cores made
# each worker several times slower. OpenMP reads it when torch is first imported, after this.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import s3server  # noqa: E402
from dataset_builders import (  # noqa: E402
    FileServer,
    as_placed,
    docs_datasets,
    make_dota_drive,
    make_rareplanes,
    make_xview,
    sha256,
    upload_tree,
)

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# The jobs of one (dataset, model) run, and the summary jobs that gather every run: what an
# edit of one model's settings reruns.
RUN_JOBS = ["train", "evaluate", "evaluate_chips", "evaluate_scenes", "loss_curve", "plot_pr",
            "plot_detections"]
SUMMARY_JOBS = ["plot_class_ap", "compare", "leaderboard", "cost", "summary", "all"]
TEST_CONFIG = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
# The rules the Kubernetes profiles run on a GPU: the model steps only (docs/kubernetes.md).
GPU_RULES = {rule for profile in ("nautilus", "kubernetes") for rule, resources in yaml.safe_load(
    (ROOT / "profiles" / profile / "config.yaml").read_text())["set-resources"].items()
    if resources.get("gpu")}
SAMPLE_MODEL = "ssdlite320_mobilenet_v3_large"
S3_BUCKET = "nadir-e2e"
RAREPLANES_BUCKET = "rareplanes-public"  # the public bucket's name, on the tests' server


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """One SeaweedFS server for the whole test session (ready in about a second). Like the
    real one, its bucket `rareplanes-public` anyone may read and list (RarePlanes' replica,
    tests/test_distributions.py); every other bucket needs the credentials."""
    server = s3server.start(tmp_path_factory.mktemp("seaweedfs"),
                            anonymous_actions=[f"{action}:{RAREPLANES_BUCKET}"
                                               for action in ("Read", "List")])
    yield server
    server.stop(grace=1.0)


@pytest.fixture(scope="session")
def rareplanes_bucket(s3, tmp_path_factory) -> dict:
    """RarePlanes' public bucket in miniature (dataset_builders.make_rareplanes) on the
    session's S3 server: its local copy (`root`) and what each tile holds (`tiles`)."""
    root = tmp_path_factory.mktemp("rareplanes") / RAREPLANES_BUCKET
    tiles = make_rareplanes(root)
    client = s3.client()
    if RAREPLANES_BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=RAREPLANES_BUCKET)
    upload_tree(client, RAREPLANES_BUCKET, root)
    return {"root": root, "tiles": tiles}


# The session fixtures that run a whole pipeline. Under pytest-xdist a session fixture is made
# once per worker that uses it, so the tests of each live in one module (test_pipeline.py,
# test_s3_pipeline.py) and `--dist loadscope` sends a module to one worker.
SHARED_RUNS = ("local_sample_run", "s3_run")


# Seconds each long module took in a CI run (two workers on this 2-core machine, 2026-12-07),
# longest first: only the order in which workers take modules, so that both end together.
MODULE_SECONDS = {
    "tests/test_s3_pipeline.py": 390, "tests/test_kubernetes_e2e.py": 327,
    "tests/test_pipeline.py": 147, "tests/test_training_models.py": 142,
    "tests/test_kubernetes_failures.py": 135, "tests/test_training_resume.py": 118,
    "tests/test_models_detr_yolox.py": 61, "tests/test_faults.py": 32,
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """In a pytest-xdist worker (`make test`: `-n 2 --dist loadscope --no-loadscope-reorder`):
    the longest modules first (MODULE_SECONDS, then by their number of slow tests), so that a
    long module never starts last while the other worker idles; a shared run read from a
    second module is an error. A plain run keeps its order."""
    if not hasattr(config, "workerinput"):
        return
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    for run in SHARED_RUNS:
        readers = sorted(m for m, members in modules.items()
                         if any(run in item.fixturenames for item in members))
        if len(readers) > 1:
            raise pytest.UsageError(f"the session fixture {run} is used by {readers}: under "
                                    "pytest-xdist it would run once per worker; keep its "
                                    "tests in one module")

    def weight(members: list) -> tuple[float, int, int]:
        slow = sum(1 for m in members if m.get_closest_marker("slow"))
        return (MODULE_SECONDS.get(members[0].nodeid.split("::")[0], 0), slow, len(members))

    items[:] = [item for name in sorted(modules, key=lambda m: weight(modules[m]), reverse=True)
                for item in modules[name]]


def run_snakemake(workdir: Path, *args: str, env: dict | None = None,
                  check: bool = True, planner: bool = False) -> subprocess.CompletedProcess:
    """Run the repository's workflow in `workdir` (its own results, logs and metadata); with
    `planner`, through tests/planned_resources.py (the planned jobs' resources printed too)."""
    snakemake = [sys.executable, str(ROOT / "tests" / "planned_resources.py")] if planner \
        else SNAKEMAKE
    cmd = [*snakemake, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({proc.returncode}): {' '.join(args)}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}")
    return proc


VAL_SCENES = ["V0000", "V0001"]  # config/test.yaml's sample: 2 val scenes
INFERENCE_RUN = f"sample/{SAMPLE_MODEL}"  # the run the local run infers with


def local_run_config() -> dict:
    """The local sample run's configuration: config/test.yaml, with inference (`snakemake
    predict`) on its val scenes, scored as the scene-level evaluation scores them. PNG chips
    (lossless) and every window chipped, so that evaluation saw exactly the windows, and the
    pixels, that inference reads from the scene: tests/test_pipeline.py compares the two."""
    config = json.loads(json.dumps(TEST_CONFIG))
    config["chipping"] |= {"image_format": "png", "empty_keep": 1.0}
    evaluation = {"score_threshold": 0.01, "max_detections": 100, "batch_size": 8,
                  "scene_nms_iou": 0.3}
    config["evaluation"] = evaluation
    # Inference applies the model as evaluation does (its batch size, detections per window
    # and merge); it keeps what evaluation scores from the same score on.
    config["inference"] = {
        "runs": [INFERENCE_RUN],
        "scenes": [f"raw/sample/files/01-val/images/{s}.tif" for s in VAL_SCENES],
        "score_threshold": evaluation["score_threshold"]}
    return config


def write_config(path: Path, edit: Callable[[dict], None] | None = None) -> list[str]:
    """The local run's configuration (local_run_config), changed by `edit`, written to
    `path`; the arguments that use it."""
    config = local_run_config()
    if edit:
        edit(config)
    path.write_text(yaml.safe_dump(config))
    return ["--configfile", str(path), "--replace-workflow-config"]


def report_command(workdir: Path, args: list[str]) -> list[str]:
    """`snakemake --report`, as the README says: no --cores needed."""
    return [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
            *args, "--report", str(workdir / "report.html")]


@dataclass
class SampleRun:
    """A finished run of the sample pipeline and its report."""

    workdir: Path
    args: list[str]  # the configuration (and storage) arguments it ran with
    run: subprocess.CompletedProcess
    report: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def local_sample_run(tmp_path_factory) -> SampleRun:
    """The sample pipeline on local files (local_run_config), and inference on its val
    scenes, run once for every end-to-end test that reads it or dry-runs on it; a test that
    changes files works on a copy. Checkpoints every 2 iterations, so the run also writes one
    and clears it."""
    workdir = tmp_path_factory.mktemp("local-sample")
    args = write_config(workdir / "config.yaml",
                        lambda c: c.setdefault("checkpoints", {}).update(every=2))
    run = run_snakemake(workdir, *args, "all", "predict")
    report = subprocess.run(report_command(workdir, args), check=True, capture_output=True,
                            text=True, timeout=600)
    return SampleRun(workdir, args, run, report)


def s3_args(s3, prefix: str, configfile: Path = ROOT / "config" / "test.yaml") -> list[str]:
    """The arguments of a run of `configfile` with S3 as its storage, under `prefix`."""
    return ["--configfile", str(configfile), "--replace-workflow-config",
            "--default-storage-provider", "s3",
            "--default-storage-prefix", f"s3://{S3_BUCKET}/{prefix}",
            "--storage-s3-endpoint-url", s3.endpoint]


@dataclass
class DatasetsRun(SampleRun):
    """The S3 run of a DOTA-format and an xView-format dataset (dataset_builders)."""

    xview: dict  # what make_xview built: its files and object counts
    tile: str  # the RarePlanes tile (in the replica bucket) the run's inference read
    served: list  # the requests the HTTP server answered: (path with query, Range header)


# The query of a pre-signed URL, as S3 and CDNs issue them: a secret for as long as it is
# valid. The S3 run fetches and infers from URLs carrying it; it must appear in no record.
PRESIGNED_SECRETS = ["AKIAEXAMPLE7Q", "5ec4e7a1f00dbadc0ffee5ec4e7a1f00d", "tok-8c1d2e3f4a5b"]
PRESIGNED_QUERY = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}&X-Amz-Signature={}&"
                   "token={}".format(*PRESIGNED_SECRETS))


@pytest.fixture(scope="session")
def s3_run(s3, rareplanes_bucket, tmp_path_factory) -> DatasetsRun:
    """The pipeline with S3 as the default storage (prefix `run1` of S3_BUCKET) on two datasets
    as they are distributed, made by the tests: DOTA v1.5 from its Drive folders as
    docs/datasets.md configures it (the test config's chipping), xView's archives over HTTP,
    the images' archive from a pre-signed URL; inference with the DOTA run on a RarePlanes PNG
    tile in the replica public bucket (its CRS is in its `.aux.xml` beside it there) and on an
    xView scene at a pre-signed URL; and the report. Run once for every end-to-end S3 test
    (tests/test_s3_pipeline.py). The sample dataset's own S3 run is the Kubernetes test's
    (tests/test_kubernetes_e2e.py)."""
    root = tmp_path_factory.mktemp("s3-datasets")
    make_dota_drive(root / "data" / "DOTA")
    built = make_xview(root / "xview", images=4, size=320)
    server = FileServer(root / "xview")
    config = json.loads(json.dumps(TEST_CONFIG))
    dota15 = as_placed(docs_datasets()["dota_v1_5"], root / "data")
    del dota15["chipping"]  # the test config's small chips
    tile = sorted(t for t, info in rareplanes_bucket["tiles"].items()
                  if info["split"] == "test")[0]
    config["datasets"] = {
        "dota15": dota15,
        "xv": {"format": "xview", "split": {"val_fraction": 0.25, "seed": 1}, "source": [
            {"url": f"{server.url}/{built['images'].name}?{PRESIGNED_QUERY}",
             "sha256": sha256(built["images"])},
            {"url": f"{server.url}/{built['label_archive'].name}"}]},
    }
    # Real datasets train from the best weights by default (`pretrained: auto`); this
    # machine and CI are offline, so from scratch.
    config["training"]["pretrained"] = "none"
    config["inference"] = {
        "runs": [f"dota15/{SAMPLE_MODEL}"],
        "scenes": [f"s3://{RAREPLANES_BUCKET}/real/test/PS-RGB_tiled/{tile}.png",
                   {"name": "remote",
                    "source": f"{server.url}/unpacked/train_images/1000.tif?{PRESIGNED_QUERY}"}]}
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    workdir = tmp_path_factory.mktemp("s3-run")
    args = s3_args(s3, "run1", config_path)
    run = run_snakemake(workdir, *args, env=s3.env())
    report = run_snakemake(workdir, *args, "--report", "report.html", env=s3.env())
    yield DatasetsRun(workdir, args, run, report, built, tile, server.requests)
    server.stop()


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a run or dry run as {rule: count}.

    An empty dict is returned only when Snakemake said there was nothing to be done, so a test
    asserting `== {}` cannot pass on output that merely lacks the table.
    """
    output = proc.stdout + proc.stderr
    if "Nothing to be done" in output:
        return {}
    jobs, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
            if line.startswith("---"):
                continue
            if not match:
                break
            if match.group(1) != "total":
                jobs[match.group(1)] = int(match.group(2))
    if not jobs:
        raise AssertionError(f"no job table and no 'Nothing to be done' in:\n{output[-3000:]}")
    return jobs
