"""The chip manifest: every shard's parameters, versions and counts in one file.

Training digests it to tie a run to its chips and reads the chip parameters from it
(`ChipParams.of_manifest`), which it then carries in the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from nadir.chip.shard import SceneCounts
from nadir.core.errors import InputError
from nadir.raster.band_stats import BandSums
from nadir.raster.chip_params import ChipParams
from nadir.storage.shards import read_chip_list

log = logging.getLogger(__name__)


def train_band_stats(shards: list[dict], out: str | Path) -> dict | None:
    """The dataset's per-band statistics of its train chips (`BandSums.summary`), from every
    shard's sums; None when no shard holds a train chip."""
    merged = None
    for shard in shards:
        if shard.get("train_band_sums") is None:
            continue
        sums = BandSums.from_record(shard["train_band_sums"])
        try:
            merged = sums if merged is None else (merged.add(sums) or merged)
        except ValueError as exc:
            raise InputError(out, f"shards disagree on their chips' bands ({exc}); rerun "
                                  "chipping") from None
    if merged is None:
        return None
    params = ChipParams.from_record(shards[0]["params"], out)
    return {"bands": list(params.bands) if params.bands else None,
            **merged.summary(tuple(sorted({1.0, 50.0, 99.0, *params.stretch_percentiles})))}


def write_chip_manifest(chip_lists: list[str | Path], out: str | Path) -> dict:
    """The chip_manifest job: everything needed to reproduce and audit a dataset's chips, from
    its shards' chip lists: parameters, versions, counts."""
    shards = [read_chip_list(Path(p)) for p in chip_lists]
    params = {json.dumps(s["params"], sort_keys=True) for s in shards}
    if len(params) != 1:
        raise InputError(out, "shards were cut with different parameters; rerun chipping")
    scenes: dict[str, dict] = {}
    for i, shard in enumerate(shards):
        for scene, counts in shard["scenes"].items():
            scenes[scene] = {"shard": i, **counts}
    totals = {key: sum(c[key] for c in scenes.values())
              for key in asdict(SceneCounts())}
    manifest = {"nadir_version": shards[0]["nadir_version"], "params": shards[0]["params"],
                "shards": len(shards), "totals": totals, "scenes": dict(sorted(scenes.items())),
                "band_stats": train_band_stats(shards, out)}
    Path(out).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    log.info("chips: %s", json.dumps(totals))
    return manifest
