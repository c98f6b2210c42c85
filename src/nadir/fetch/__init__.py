"""The fetch stage: bring a dataset's files into one folder and describe them in a scene manifest.

A dataset's `source` lists entries, each a local path (folder, file or archive the user placed),
an http(s):// URL, or an s3://bucket/prefix/ (anonymous by default, for public buckets); the
sample is generated (`nadir.fetch.sources`). The scan pairs images with labels and reads every
image's header (`nadir.fetch.scan`); the manifest lists the scenes for the index and chip jobs
(`nadir.fetch.manifest`).
"""

from nadir.fetch.dataset import fetch, fetch_dataset
from nadir.fetch.manifest import read_scene_manifest

__all__ = ["fetch", "fetch_dataset", "read_scene_manifest"]
