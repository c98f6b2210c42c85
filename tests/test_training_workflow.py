"""The train rule's wiring: pretrained weights as inputs, checkpoint locations, no needless
reruns."""

from __future__ import annotations

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
                         "--replace-workflow-config", "-n", "-p", *extra, env=env)


def test_pretrained_models_fetch_each_weights_file_once(tmp_path):
    config = config_file(tmp_path, models={
        "fcos_resnet18_fpn": {"pretrained": "imagenet"},
        "fasterrcnn_resnet50_fpn_v2": {"pretrained": "imagenet"},
        "retinanet_resnet50_fpn_v2": {"pretrained": "imagenet"},
        "ssdlite320_mobilenet_v3_large": None})
    proc = dry_run(tmp_path, config)
    jobs, out = planned_jobs(proc), proc.stdout + proc.stderr
    # Two ResNet-50 detectors share one download; ResNet-18 is the other; SSDlite needs none.
    assert jobs["fetch_weights"] == 2 and jobs["train"] == 4
    assert "--pretrained-weights weights/resnet50-0676ba61.pth" in out
    assert "--file resnet18-f37072fd.pth --out weights/resnet18-f37072fd.pth" in out
    assert "--checkpoints checkpoints/sample/fcos_resnet18_fpn --checkpoint-every 100" in out


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
    assert ("--checkpoints s3://nadir-wiring/run1/checkpoints/sample/"
            "ssdlite320_mobilenet_v3_large") in out
    assert f"--s3-endpoint {s3.endpoint}" in out
    assert s3.secret_key not in out and s3.access_key not in out
