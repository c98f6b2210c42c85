"""The train rule's wiring: pretrained weights as inputs, checkpoint locations, no needless
reruns."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from conftest import ROOT, planned_jobs, run_snakemake


def config_file(tmp_path: Path, **changes) -> Path:
    config = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    for key, value in changes.items():
        config[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(tmp_path: Path, config: Path, *extra: str, env: dict | None = None):
    return run_snakemake(tmp_path / "work", "--configfile", str(config),
                         "--replace-workflow-config", "-n", *extra, env=env)


def job_lines(output: str, message: str) -> str:
    """The planned job whose message starts with `message`, and its reason (the inputs other
    jobs make)."""
    lines = output.splitlines()
    found = [i for i, line in enumerate(lines) if message in line]
    assert found, f"no job {message!r} in {output[-2000:]}"
    return "\n".join(lines[found[0]:found[0] + 2])


def test_pretrained_models_fetch_each_weights_file_once(tmp_path):
    """Explicit weights per model; SSDlite left at `pretrained: auto` (the default): its COCO
    weights on the DOTA-format dataset, none on the sample beside it."""
    dota = {"format": "dota", "version": "v1.0", "source": [
        {"url": str(tmp_path / "DOTA" / "train"), "split": "train"},
        {"url": str(tmp_path / "DOTA" / "val"), "split": "val"}]}
    sample = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())["datasets"]["sample"]
    config = config_file(tmp_path, datasets={"sample": sample, "dota": dota}, models={
        "fcos_resnet18_fpn": {"pretrained": "imagenet"},
        "fasterrcnn_resnet50_fpn_v2": {"pretrained": "imagenet"},
        "retinanet_resnet50_fpn_v2": {"pretrained": "imagenet"},
        "ssdlite320_mobilenet_v3_large": None})
    proc = dry_run(tmp_path, config)
    jobs, out = planned_jobs(proc), proc.stdout + proc.stderr
    # Two ResNet-50 detectors share one download; ResNet-18 is another, SSDlite's COCO
    # detector (DOTA only) the third.
    assert jobs["fetch_weights"] == 3 and jobs["train"] == 8
    # Each detector trains on the weights file its download writes, with the record beside it.
    for dataset, model, weights in (
            ("sample", "fasterrcnn_resnet50_fpn_v2", "resnet50-0676ba61.pth"),
            ("sample", "retinanet_resnet50_fpn_v2", "resnet50-0676ba61.pth"),
            ("sample", "fcos_resnet18_fpn", "resnet18-f37072fd.pth"),
            ("dota", "fcos_resnet18_fpn", "resnet18-f37072fd.pth"),
            ("dota", "ssdlite320_mobilenet_v3_large",
             "ssdlite320_mobilenet_v3_large_coco-a79551df.pth")):
        inputs = set(re.split(r"[,:;]\s*|\s+",
                              job_lines(out, f"Training {model} on {dataset}")))
        assert {f"weights/{weights}", f"weights/{weights}.json"} <= inputs
    assert "weights/" not in job_lines(out, "Training ssdlite320_mobilenet_v3_large on sample")
    assert "Fetching pretrained weights resnet18-f37072fd.pth" in out
    assert "Fetching pretrained weights ssdlite320_mobilenet_v3_large_coco-a79551df.pth" in out
    assert "checkpoints in checkpoints/sample/fcos_resnet18_fpn" in out


def test_weights_a_model_does_not_offer_stop_the_run_before_any_job(tmp_path):
    config = config_file(tmp_path, models={"fasterrcnn_swin_t_fpn": {"pretrained": "coco"}})
    proc = run_snakemake(tmp_path / "work", "--configfile", str(config),
                         "--replace-workflow-config", "-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "models.fasterrcnn_swin_t_fpn" in output and "no 'coco' weights" in output


def test_s3_storage_puts_checkpoints_under_the_storage_prefix(tmp_path, s3):
    config = config_file(tmp_path)
    proc = dry_run(tmp_path, config, "--default-storage-provider", "s3",
                   "--default-storage-prefix", "s3://nadir-wiring/run1",
                   "--storage-s3-endpoint-url", s3.endpoint, env=s3.env())
    out = proc.stdout + proc.stderr
    assert ("checkpoints in s3://nadir-wiring/run1/checkpoints/sample/"
            "ssdlite320_mobilenet_v3_large") in out
    assert s3.secret_key not in out and s3.access_key not in out
