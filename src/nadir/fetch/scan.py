"""What the fetched files are: images, labels, sidecars and variants, paired into scenes.

Every entry lands in its own sub-folder `<n>-<split>/` of the dataset's files folder; the scan
then lists each scene (image, label, sidecars, split, size, georeferencing) with paths relative
to it, and what was set aside: label variants (DOTA's horizontal-box copies, labels of another
version) and identical copies of an image.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from nadir.core.errors import InputError
from nadir.core.hashing import sha256_of
from nadir.core.names import check_relative_path
from nadir.datasets.formats import LAYOUTS
from nadir.fetch.sources import SourceEntry
from nadir.raster.georeferencing import IMAGE_SUFFIXES, is_sidecar_of, sidecar_image_stem
from nadir.raster.opener import image_header

log = logging.getLogger(__name__)

# DOTA's label archives come in variants beside the oriented labels nadir reads: horizontal-box
# copies (v1.0's `*reclabelTxt*`, v1.5's `*_hbb*`) and the labels of each version, in folders
# and archives named by it (`labelTxt-v1.0/`, `DOTA-v1.5_train.zip`).
HORIZONTAL_COPY = re.compile(r"reclabel|(?:^|[^a-z0-9])hbb(?:$|[^a-z0-9])", re.IGNORECASE)
VERSION_TAG = re.compile(r"(?:^|[^a-z0-9])v(\d+\.\d+)(?:$|[^0-9])", re.IGNORECASE)


def label_variant(folders: list[str], version: str | None) -> str | None:
    """Why a DOTA label file in these folders is set aside (None: it is read): a horizontal-box
    copy, or the labels of another version than the configured one."""
    if any(HORIZONTAL_COPY.search(folder) for folder in folders):
        return "horizontal-box copies (DOTA's reclabel/_hbb labels), not the oriented labels"
    for folder in folders:
        tag = VERSION_TAG.search(folder)
        if tag and version and f"v{tag.group(1)}" != version:
            return f"labels of DOTA v{tag.group(1)}, not of the configured version {version}"
    return None


def classify(relative: str, dataset_format: str, tiled: bool = True,
             version: str | None = None) -> str | None:
    """Whether a file (path relative to its source entry) is an image, a label, an image's
    georeferencing sidecar, a label variant set aside (`label_variant`), or none of these."""
    parts = [p for p in relative.replace("\\", "/").split("/") if p]
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    name = parts[-1].lower()
    if name.endswith(".part"):
        return None
    suffix = Path(name).suffix
    folders = parts[:-1]
    sidecar = sidecar_image_stem(name) is not None
    layout = LAYOUTS[dataset_format]
    if layout == "dota":
        if suffix in IMAGE_SUFFIXES:
            return "image"
        if sidecar:
            return "sidecar"
        if suffix == ".txt":
            return "variant" if label_variant(folders, version) else "label"
    elif layout == "xview":
        if suffix in (".tif", ".tiff"):
            return "image"
        if sidecar:
            return "sidecar"
        if suffix in (".geojson", ".json"):
            return "label"
    elif layout == "rareplanes":
        image_dir, label_dir = (("PS-RGB_tiled", "geojson_aircraft_tiled") if tiled
                                else ("PS-RGB", "geojson_aircraft"))
        if image_dir in folders and suffix in IMAGE_SUFFIXES:
            return "image"
        if image_dir in folders and sidecar:
            return "sidecar"
        if label_dir in folders and suffix == ".geojson":
            return "label"
    return None


def _same_file(a: Path, b: Path) -> bool:
    """Whether two files hold the same bytes (DOTA's Drive holds a copy of train part1.zip)."""
    return a.stat().st_size == b.stat().st_size and sha256_of(a) == sha256_of(b)


class Scan:
    """What a walk over the fetched entries found: scenes by name, labels by (split, name),
    sidecars by folder and image stem, and what was set aside."""

    def __init__(self, root: Path, dataset_format: str, tiled: bool, version: str | None):
        self.root, self.format, self.tiled, self.version = root, dataset_format, tiled, version
        self.scenes: dict[str, dict] = {}
        self.labels: dict[tuple, str] = {}
        self.label_files: list[str] = []
        self.sidecars: dict[tuple[Path, str], list[Path]] = {}  # by folder and image stem
        self.variants: dict[str, dict] = {}  # folder -> {"files": n, "reason": ...}
        self.copies: list[dict] = []  # identical copies of an image or label, set aside

    def add(self, entry: SourceEntry, folder: Path, path: Path) -> None:
        within = path.relative_to(folder).as_posix()
        kind = classify(within, self.format, self.tiled, self.version)
        relative = path.relative_to(self.root).as_posix()
        if kind in ("image", "label", "sidecar"):  # its path reaches the manifest and commands
            check_relative_path(relative, path, "file name")
        if kind == "image":
            first = self.scenes.get(path.stem)
            if first is None:
                self.scenes[path.stem] = {"scene": path.stem, "split": entry.split,
                                          "image": relative}
            elif not self._copy_of(first["image"], first["split"], path, entry.split):
                raise InputError(path, f"scene name {path.stem!r} is also used by "
                                       f"{first['image']}; scene names (image file names "
                                       "without suffix) must be unique")
        elif kind == "sidecar":
            key = (path.parent, sidecar_image_stem(path.name))
            self.sidecars.setdefault(key, []).append(path)
        elif kind == "variant":
            group = Path(relative).parent.as_posix()
            reason = label_variant(Path(within).parent.parts, self.version)
            self.variants.setdefault(group, {"folder": group, "files": 0, "reason": reason})
            self.variants[group]["files"] += 1
        elif kind == "label" and self.format == "xview":
            self.label_files.append(relative)
        elif kind == "label":
            key = (entry.split, path.stem)
            if key not in self.labels:
                self.labels[key] = relative
            elif not self._copy_of(self.labels[key], entry.split, path, entry.split):
                raise InputError(path, f"a second label file for {path.stem!r} (the first "
                                       f"is {self.labels[key]})")

    def _copy_of(self, first: str, first_split: str | None, path: Path,
                 split: str | None) -> bool:
        """Set `path` aside when it is an identical copy of `first` from the same split."""
        if first_split != split or not _same_file(self.root / first, path):
            return False
        self.copies.append({"file": path.relative_to(self.root).as_posix(), "same_as": first})
        return True

    def sidecars_of(self, image: Path) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix()
                      for p in self.sidecars.get((image.parent, image.stem), [])
                      if is_sidecar_of(p.name, image.name))


def scan(root: Path, entries: list[tuple[SourceEntry, Path]], dataset_format: str,
         tiled: bool, version: str | None = None, max_raster_values: int | None = None) -> dict:
    """Pair images and labels by file name (per split), attach each image's sidecars and read
    every image's header (its sidecar's georeferencing included; see `image_header`)."""
    found = Scan(root, dataset_format, tiled, version)
    for entry, folder in entries:  # shallower first: a copy sits deeper than its original
        for path in sorted((p for p in folder.rglob("*") if p.is_file()),
                           key=lambda p: (len(p.parts), p)):
            found.add(entry, folder, path)
    ordered = [found.scenes[name] for name in sorted(found.scenes)]
    for n, scene in enumerate(ordered, start=1):
        if dataset_format != "xview":
            scene["label"] = found.labels.pop((scene["split"], scene["scene"]), None)
        scene["sidecars"] = found.sidecars_of(root / scene["image"])
        scene.update(image_header(root / scene["image"], max_raster_values))
        if n % 100 == 0 or n == len(ordered):
            log.info("read image headers: %d/%d", n, len(ordered))
    for variant in found.variants.values():
        log.warning("set aside %d label file(s) under %s: %s", variant["files"],
                    variant["folder"], variant["reason"])
    if found.copies:
        log.warning("set aside %d identical copies of files already fetched (e.g. %s, a copy "
                    "of %s)", len(found.copies), found.copies[0]["file"],
                    found.copies[0]["same_as"])
    return {"scenes": ordered, "label_files": sorted(found.label_files),
            "labels_without_image": sorted(found.labels.values()),
            "set_aside": {"label_variants": sorted(found.variants.values(),
                                                   key=lambda v: v["folder"]),
                          "copies": found.copies}}
