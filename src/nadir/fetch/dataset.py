"""The fetch job: every source entry of a dataset fetched, scanned and described in its manifest."""

from __future__ import annotations

import logging
from pathlib import Path

from nadir.core.errors import InputError
from nadir.fetch.manifest import write_scene_manifest
from nadir.fetch.scan import classify, scan
from nadir.fetch.sources import LOOKED_FOR, WHERE_TO_GET, SourceEntry, generate_sample, obtain
from nadir.storage.download import FetchSettings
from nadir.storage.urls import redact, resolve

log = logging.getLogger(__name__)


def fetch_dataset(name: str, spec: dict, files_dir: Path, settings: FetchSettings,
                  max_raster_values: int | None = None) -> dict:
    """Fetch every source entry of a dataset into `files_dir` and return its scene manifest
    (images larger than `max_raster_values` are refused: `nadir.raster.opener`)."""
    dataset_format, tiled = spec["format"], spec.get("tiled", True)
    version = spec.get("version") if dataset_format == "dota" else None
    files_dir.mkdir(parents=True, exist_ok=True)
    entries, fetched = [], []
    if dataset_format == "sample":
        entries = generate_sample(spec, files_dir)
        fetched = [{"url": entry.url, "split": entry.split} for entry, _ in entries]
    for i, raw in enumerate(spec.get("source") or []):
        # The workflow hands URLs over in their recorded form (nadir.storage.urls): resolved here.
        entry = SourceEntry(**{**raw, "url": resolve(raw["url"])})
        folder = files_dir / f"{i:02d}-{entry.split or 'all'}"
        log.info("source %d/%d: %s", i + 1, len(spec["source"]), redact(entry.url))
        fetched.append(obtain(entry, folder, dataset_format,
                              lambda rel: classify(rel, dataset_format, tiled, version),
                              settings))
        entries.append((entry, folder))
    manifest = {"dataset": name, "format": dataset_format, "version": spec.get("version"),
                "sources": fetched, **scan(files_dir, entries, dataset_format, tiled, version,
                                           max_raster_values)}
    if not manifest["scenes"]:
        raise InputError(files_dir, f"no {dataset_format} images found in the sources "
                                    f"{[redact(e.url) for e, _ in entries]}"
                                    f"{LOOKED_FOR[dataset_format]}. {WHERE_TO_GET[dataset_format]}")
    log.info("%s: %d scenes, %d label files without an image", name, len(manifest["scenes"]),
             len(manifest["labels_without_image"]))
    return manifest


def fetch(dataset: str, spec: dict, settings: dict, files: str | Path, manifest: str | Path,
          max_raster_values: int | None = None) -> dict:
    """The fetch job: `fetch_dataset` with the config's `fetch` settings, its manifest
    written to `manifest`."""
    found = fetch_dataset(dataset, spec, Path(files), FetchSettings.from_config(settings),
                          max_raster_values)
    write_scene_manifest(found, Path(manifest))
    return found
