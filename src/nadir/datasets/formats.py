"""The dataset formats nadir reads, and what each means for fetching and indexing.

The sample is generated in DOTA's layout with DOTA's labels, so it is a DOTA source with a
class list of its own: its files are classified, its labels parsed and its scenes split as a
DOTA dataset's.
"""

from __future__ import annotations

from nadir.datasets import dota, sample

# How a format's files are laid out and its labels parsed.
LAYOUTS = {"dota": "dota", "sample": "dota", "xview": "xview", "rareplanes": "rareplanes"}
# Whether a format comes with train and val splits (xView's labels are one file).
OFFICIAL_SPLITS = {"dota": True, "sample": True, "rareplanes": True, "xview": False}


def class_list(dataset_format: str, spec: dict) -> list[str] | None:
    """The classes a format fixes (DOTA's per version, the sample's per band count); None: they
    come from the data (xView's ids, RarePlanes' attribute values). `spec`: the dataset's
    config entry."""
    if dataset_format == "dota":
        return dota.CLASSES_BY_VERSION[spec.get("version")]
    if dataset_format == "sample":
        return sample.classes(spec.get("bands", 3))
    return None
