"""One scene through one trained run: its detections written as GeoJSON, GeoPackage, summary
and quick-look (the predict_scene job)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from nadir.core.hashing import sha256_of
from nadir.predict.detect import InferenceSettings, detect_scene, reads_ahead
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


def predict_scene(source: SceneSource, weights: Path, run_json: Path,
                  settings: InferenceSettings, outputs: dict[str, Path], threads: int = 1,
                  s3_endpoint: str | None = None, max_raster_values: int | None = None) -> dict:
    """Apply one run to one scene and write its GeoJSON, GeoPackage, summary and quick-look;
    returns the summary. Windows are cut as the run's chips were (the chip parameters its
    model.pt carries)."""
    run = json.loads(Path(run_json).read_text())
    detector, categories, params = window_detector(Path(weights), settings.score_threshold,
                                                   settings.max_detections, threads)
    result = detect_scene(source, params, detector, settings, threads, s3_endpoint,
                          reads_ahead(source, device_name()), max_raster_values)
    if not result.georeferenced:
        log.warning("scene %s (%s) has no georeferencing: its GeoJSON and GeoPackage hold pixel "
                    "coordinates (column, row; y down)", source.name, redact(source.location))
    digest = sha256_of(Path(weights))[:16]
    names = {c["id"]: c["name"] for c in categories}
    rings = [pixel_outline(d) for d in result.detections]
    properties = [feature_properties(d, names, run, digest, source.name)
                  for d in result.detections]
    for path in outputs.values():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_geojson(result, rings, properties, Path(outputs["geojson"]))
    write_geopackage(result, rings, properties, Path(outputs["geopackage"]))
    write_quicklook(result, names, Path(outputs["quicklook"]), settings.score_threshold)
    per_class = {names[cid]: 0 for cid in sorted(names)}
    for det in result.detections:
        per_class[names[det["category_id"]]] += 1
    summary = {
        "scene": source.name, "source": redact(source.location), "width": result.width,
        "height": result.height, "crs": result.crs, "georeferenced": result.georeferenced,
        "transform": result.transform, "dataset": run["dataset"], "model": run["model"],
        "run_digest": digest, "detections": len(result.detections), "per_class": per_class,
        "windows": result.windows, "seconds": round(result.seconds, 2),
        "windows_per_second": round(result.windows["read"] / max(result.seconds, 1e-9), 2),
        "settings": asdict(settings) | {"window": params.size, "overlap": params.overlap,
                                        "bands": list(params.bands) if params.bands else None},
        "radiometry": {"stretch_percentiles": list(params.stretch_percentiles),
                       "nodata_max": params.nodata_max, "pad_value": params.pad_value},
        "pixel_detections": result.detections,
    }
    Path(outputs["summary"]).write_text(json.dumps(summary, indent=1) + "\n")
    log.info("scene %s: %d detections %s", source.name, len(result.detections), per_class)
    return summary


def predict(weights: str | Path, run: str | Path, source: str, scene: str, anonymous: bool,
            settings: dict, outputs: dict[str, str | Path], threads: int = 1,
            max_raster_values: int | None = None) -> dict:
    """The predict_scene job: scene `scene` at `source` (a path, an http(s):// or s3:// URL; a
    redacted URL is looked up in NADIR_URLS, see nadir.storage.urls) through the run's model,
    its files written to `outputs` (geojson, geopackage, summary, quicklook). `anonymous`:
    s3:// read without the user's keys (a bucket the config does not name)."""
    return predict_scene(SceneSource(scene, resolve(source), anonymous), Path(weights),
                         Path(run), InferenceSettings.from_config(settings),
                         {k: Path(v) for k, v in outputs.items()}, threads,
                         s3.storage_endpoint(), max_raster_values)
