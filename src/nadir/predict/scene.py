"""One scene through one trained run, in two jobs so that a GPU pod runs only the model:
predict_scene (`detect`, on a GPU) reads the scene's windows and writes the model's window
detections and the quick-look's overview; predict_outputs (`write_outputs`, on a CPU) merges
them into the scene and writes its GeoJSON, GeoPackage, summary and quick-look.
`predict_scene` does both in one process."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nadir.core.hashing import sha256_of
from nadir.predict.detect import (
    InferenceSettings,
    SceneResult,
    SceneWindows,
    detect_windows,
    merge_windows,
    reads_ahead,
)
from nadir.predict.outputs import (
    feature_properties,
    pixel_outline,
    write_geojson,
    write_geopackage,
    write_quicklook,
)
from nadir.predict.sources import SceneSource
from nadir.storage import s3
from nadir.storage.urls import redact, resolve
from nadir.train import device_name, window_detector

log = logging.getLogger(__name__)


def scene_windows(source: SceneSource, weights: Path, settings: InferenceSettings,
                  threads: int = 1, s3_endpoint: str | None = None,
                  max_raster_values: int | None = None) -> tuple[SceneWindows, dict]:
    """The model step: one run's window detections in one scene, and what the outputs say of
    the run and its windows (categories, the weights' digest, the chip parameters). Windows
    are cut as the run's chips were (the chip parameters its model.pt carries)."""
    detector, categories, params = window_detector(Path(weights), settings.score_threshold,
                                                   settings.max_detections, threads)
    found = detect_windows(source, params, detector, settings, threads, s3_endpoint,
                           reads_ahead(source, device_name()), max_raster_values)
    about = {
        "source": redact(source.location), "categories": categories,
        "settings": {k: v for k, v in asdict(settings).items() if k != "nms_iou"},
        "run_digest": sha256_of(Path(weights))[:16],
        "window": {"window": params.size, "overlap": params.overlap,
                   "bands": list(params.bands) if params.bands else None},
        "radiometry": {"stretch_percentiles": list(params.stretch_percentiles),
                       "nodata_max": params.nodata_max, "pad_value": params.pad_value},
    }
    return found, about


def scene_outputs(result: SceneResult, about: dict, run_json: Path, nms_iou: float,
                  outputs: dict[str, Path]) -> dict:
    """Write a scene's GeoJSON, GeoPackage, summary and quick-look (`result`: merged at
    `nms_iou`; `about`: from `scene_windows`); returns the summary."""
    run = json.loads(Path(run_json).read_text())
    if not result.georeferenced:
        log.warning("scene %s (%s) has no georeferencing: its GeoJSON and GeoPackage hold pixel "
                    "coordinates (column, row; y down)", result.scene, about["source"])
    names = {c["id"]: c["name"] for c in about["categories"]}
    rings = [pixel_outline(d) for d in result.detections]
    properties = [feature_properties(d, names, run, about["run_digest"], result.scene)
                  for d in result.detections]
    for path in outputs.values():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_geojson(result, rings, properties, Path(outputs["geojson"]))
    write_geopackage(result, rings, properties, Path(outputs["geopackage"]))
    write_quicklook(result, names, Path(outputs["quicklook"]),
                    about["settings"]["score_threshold"])
    per_class = {names[cid]: 0 for cid in sorted(names)}
    for det in result.detections:
        per_class[names[det["category_id"]]] += 1
    summary = {
        "scene": result.scene, "source": about["source"], "width": result.width,
        "height": result.height, "crs": result.crs, "georeferenced": result.georeferenced,
        "transform": result.transform, "dataset": run["dataset"], "model": run["model"],
        "run_digest": about["run_digest"], "detections": len(result.detections),
        "per_class": per_class, "windows": result.windows, "seconds": round(result.seconds, 2),
        "windows_per_second": round(result.windows["read"] / max(result.seconds, 1e-9), 2),
        "settings": about["settings"] | {"nms_iou": nms_iou} | about["window"],
        "radiometry": about["radiometry"],
        "pixel_detections": result.detections,
    }
    Path(outputs["summary"]).write_text(json.dumps(summary, indent=1) + "\n")
    log.info("scene %s: %d detections %s", result.scene, len(result.detections), per_class)
    return summary


def predict_scene(source: SceneSource, weights: Path, run_json: Path,
                  settings: InferenceSettings, outputs: dict[str, Path], threads: int = 1,
                  s3_endpoint: str | None = None, max_raster_values: int | None = None) -> dict:
    """Apply one run to one scene and write its GeoJSON, GeoPackage, summary and quick-look,
    both steps in this process; returns the summary."""
    found, about = scene_windows(source, weights, settings, threads, s3_endpoint,
                                 max_raster_values)
    return scene_outputs(merge_windows(found, settings.nms_iou), about, run_json,
                         settings.nms_iou, outputs)


def detect(weights: str | Path, source: str, scene: str, anonymous: bool, settings: dict,
           windows: str | Path, overview: str | Path, threads: int = 1,
           max_raster_values: int | None = None) -> None:
    """The predict_scene job (the model step): scene `scene` at `source` (a path, an http(s)://
    or s3:// URL; a redacted URL is looked up in NADIR_URLS, see nadir.storage.urls) through
    the run's model; its window detections written to `windows` (JSON) and the quick-look's
    overview to `overview` (PNG). `anonymous`: s3:// read without the user's keys (a bucket the
    config does not name)."""
    from PIL import Image

    found, about = scene_windows(SceneSource(scene, resolve(source), anonymous), Path(weights),
                                 InferenceSettings.from_config(settings), threads,
                                 s3.storage_endpoint(), max_raster_values)
    Path(windows).parent.mkdir(parents=True, exist_ok=True)
    Path(windows).write_text(json.dumps(found.record() | about) + "\n")
    Image.fromarray(np.ascontiguousarray(found.quicklook.transpose(1, 2, 0))).save(overview,
                                                                                   "PNG")


def write_outputs(windows: str | Path, overview: str | Path, run: str | Path, nms_iou: float,
                  outputs: dict[str, str | Path]) -> dict:
    """The predict_outputs job: the predict_scene job's window detections merged into the
    scene at `nms_iou`, its files written to `outputs` (geojson, geopackage, summary,
    quicklook); returns the summary."""
    from PIL import Image

    record = json.loads(Path(windows).read_text())
    with Image.open(overview) as image:
        quicklook = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    found = SceneWindows(**{k: record[k] for k in SceneWindows.__dataclass_fields__
                            if k != "quicklook"}, quicklook=quicklook)
    about = {k: record[k] for k in ("source", "categories", "settings", "run_digest", "window",
                                    "radiometry")}
    return scene_outputs(merge_windows(found, nms_iou), about, Path(run), nms_iou,
                         {k: Path(v) for k, v in outputs.items()})
