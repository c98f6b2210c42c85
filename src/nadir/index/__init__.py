"""The index stage: a fetched dataset's manifest and labels as the normalised tables.

One path for every format (`nadir.index.normalise.index_dataset`): the sample is a DOTA source
like any other.
"""

from __future__ import annotations

from pathlib import Path

from nadir.datasets.tables import IndexTables
from nadir.index.normalise import index_dataset

__all__ = ["index", "index_dataset"]


def index(manifest: str | Path, spec: dict, scenes: str | Path, annotations: str | Path,
          categories: str | Path, summary: str | Path,
          max_raster_values: int | None = None) -> dict:
    """The index job: the dataset whose scene manifest is `manifest` (its files in `files/`
    beside it, as the fetch job left them), indexed under the dataset's settings `spec`."""
    tables = IndexTables(Path(scenes), Path(annotations), Path(categories), Path(summary))
    return index_dataset(Path(manifest), Path(manifest).parent / "files", spec, tables,
                         max_raster_values)
