"""The index of a fetched dataset (the sample, DOTA, xView, RarePlanes): manifest + labels ->
normalised tables.

Writes the normalised tables (`nadir.datasets.tables`: scenes.csv, annotations.csv,
categories.json) plus `summary.json`: the split and how it was made, objects per class, and
every counted skip.
Annotations are written while they are parsed, so xView's million features never sit in memory.
Scenes left out (an image without labels, under `image_without_label: skip`) stay in scenes.csv
with split `excluded`, so the table still accounts for every fetched image.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import os
from collections import Counter
from pathlib import Path

from nadir.core.errors import InputError
from nadir.core.geometry import polygon_outside
from nadir.datasets import dota, rareplanes, xview
from nadir.datasets.formats import LAYOUTS, OFFICIAL_SPLITS, class_list
from nadir.datasets.records import BadInput, ClassFilter
from nadir.datasets.splits import seeded_split
from nadir.datasets.tables import (
    ANNOTATION_FIELDS,
    EXCLUDED,
    IndexTables,
    categories,
    format_polygon,
    write_categories,
    write_scene_table,
)
from nadir.fetch import read_scene_manifest
from nadir.raster.opener import check_declared_size

log = logging.getLogger(__name__)



def assign_splits(scenes: list[dict], dataset_format: str, split: dict) -> tuple[dict, str]:
    """{scene: split} and a description of how it was made."""
    method = split["method"]
    if not OFFICIAL_SPLITS[dataset_format]:
        method = "seeded"
    if method == "seeded":
        description = (f"seeded by scene (seed {split['seed']}, val fraction "
                       f"{split['val_fraction']})")
        return seeded_split([s["scene"] for s in scenes], split["val_fraction"],
                            split["seed"]), description
    missing = [s["image"] for s in scenes if s["split"] not in ("train", "val")]
    if missing:
        raise InputError(missing[0], f"{len(missing)} image(s) come from a source entry with no "
                                     "split; give that entry `split: train` or `split: val`, "
                                     "or set split.method: seeded")
    return {s["scene"]: s["split"] for s in scenes}, "official (per source entry)"


def _of_split(relative: str, split: str) -> bool:
    """Whether a fetched file came from an entry of this split (its folder `<n>-<split>/`)."""
    return relative.split("/", 1)[0].endswith(f"-{split}")


def unpaired(manifest: dict, split: str) -> str:
    """What the entries of one split brought that did not pair up into labelled scenes."""
    images = [s for s in manifest["scenes"] if s["split"] == split]
    unlabelled = sum(1 for s in images if s.get("label") is None)
    orphans = [p for p in manifest["labels_without_image"] if _of_split(p, split)]
    set_aside = [v for v in manifest.get("set_aside", {}).get("label_variants", [])
                 if _of_split(v["folder"], split)]
    said = [f"{len(images)} image(s), {unlabelled} of them without a label file of the same "
            f"name, and {len(orphans)} label file(s) without an image"]
    if not images:
        said.append("an image archive (e.g. a DOTA part zip) or folder is missing")
    said += [f"{v['files']} label file(s) under {v['folder']} were set aside as {v['reason']}"
             for v in set_aside]
    return "; ".join(said)


def check_splits(splits: dict[str, str], method: str, dataset: str,
                 manifest: dict | None = None) -> None:
    """Stop at index time, not after training, when train or val would hold no scene; say
    what the entries of that split brought when the config already names the split."""
    for wanted in ("train", "val"):
        if wanted in splits.values():
            continue
        entries = [s["url"] for s in (manifest or {}).get("sources", [])
                   if s["split"] == wanted]
        if method == "official" and entries:
            fix = (f"its source entries {entries} have `split: {wanted}`, but brought "
                   f"{unpaired(manifest, wanted)}")
        elif method == "official":
            fix = (f"give a source entry `split: {wanted}` (datasets.{dataset}.source), or set "
                   f"datasets.{dataset}.split.method: seeded")
        else:
            fix = (f"fetch more scenes (a seeded split needs at least 2), or change "
                   f"datasets.{dataset}.split.val_fraction")
        raise InputError(f"datasets.{dataset}", f"the {wanted} split would hold none of the "
                                                f"{len(splits)} labelled scene(s); {fix}")


@functools.cache
def csv_field(text: str) -> str:
    """`text` as csv.writer writes it within a row (quoted when it holds a comma, a quote or a
    line break). Asked once per scene or class name: csv.writer itself checks every character
    of every field, the longest part of writing xView's million rows."""
    out = io.StringIO()
    csv.writer(out).writerow([text, ""])
    return out.getvalue().removesuffix(",\r\n")


class AnnotationWriter:
    """Streams annotation rows to annotations.csv, numbering objects per scene. The rows go to
    a `.partial` file that takes the final name only once the whole index is known good. Rows
    are csv.writer's text: names through `csv_field`, numbers never need quoting."""

    def __init__(self, path: Path, class_filter: ClassFilter, bad: BadInput):
        self.path, self.partial = path, path.with_name(path.name + ".partial")
        self.fh = open(self.partial, "w", newline="")  # noqa: SIM115 - closed in close()
        csv.writer(self.fh).writerow(ANNOTATION_FIELDS)
        self.filter, self.bad = class_filter, bad
        self.seen: set[int] = set()  # hashes of (scene, class, outline) written so far
        self.per_scene: Counter = Counter()
        self.per_class: Counter = Counter()

    def add(self, scene: str, category: str, difficult: int, polygon: list[float],
            where: str, line: int | None = None) -> None:
        """Write one object, unless it repeats an object of its scene (same class, same
        vertices): a duplicate would count twice in training and in the scores."""
        key = hash((scene, category, tuple(polygon)))
        if key in self.seen:
            self.bad.report("duplicate_object", where, f"the same {category} outline as an "
                            f"earlier object of scene {scene}", line)
            return
        self.seen.add(key)
        name = self.filter.apply(category, polygon)
        if name is None:
            return
        self.fh.write(f"{csv_field(scene)},{self.per_scene[scene]},{csv_field(name)},"
                      f"{difficult},{format_polygon(polygon)}\r\n")
        self.per_scene[scene] += 1
        self.per_class[name] += 1

    def close(self) -> None:
        self.fh.close()

    def publish(self) -> None:
        os.replace(self.partial, self.path)


def _class_filter(classes: list[str], spec: dict) -> ClassFilter:
    c = spec["classes"]
    return ClassFilter(classes, merge=c["merge"], keep=c["keep"], min_size=c["min_size"])


def _index_dota(scenes, files_dir, classes, bad, writer_for) -> dict:
    writer = writer_for(classes)
    for n, scene in enumerate(scenes, start=1):
        labels = dota.parse_label_file(files_dir / scene["label"], classes, bad)
        scene["gsd"] = "" if labels.gsd is None else labels.gsd
        for obj in labels.objects:
            if polygon_outside(obj.polygon, scene["width"], scene["height"]):
                bad.report("outside_image", scene["label"], f"polygon {obj.polygon} lies "
                           f"outside the {scene['width']}x{scene['height']} image", obj.line)
                continue
            writer.add(scene["scene"], obj.category, obj.difficult, obj.polygon,
                       scene["label"], obj.line)
        if n % 200 == 0 or n == len(scenes):
            log.info("parsed DOTA labels: %d/%d scenes", n, len(scenes))
    return {}


def _index_xview(scenes, files_dir, label_files, bad, writer_for, featured: set) -> dict:
    writer = writer_for(xview.CLASSES)
    by_image = {Path(s["image"]).name: s for s in scenes}
    sizes = {name: (s["width"], s["height"]) for name, s in by_image.items()}
    counts = xview.XviewCounts()
    for label_file in label_files:
        log.info("streaming xView labels from %s", label_file)
        for obj in xview.read_objects(files_dir / label_file, sizes, bad, counts):
            writer.add(by_image[obj.image]["scene"], obj.category, 0, obj.polygon,
                       f"{label_file}, feature {obj.feature}")
            if counts.kept % 200_000 == 0:
                log.info("xView: %d features read, %d objects kept", counts.features,
                         counts.kept)
    log.info("xView: %d features, %d objects kept, dropped %s", counts.features, counts.kept,
             dict(counts.dropped))
    featured.update(by_image[name]["scene"] for name in counts.images)
    return {"features": counts.features, "dropped": dict(sorted(counts.dropped.items()))}


def _index_rareplanes(scenes, files_dir, spec, bad, writer_for) -> dict:
    parsed = {}
    attribute = spec["class_attribute"]
    for n, scene in enumerate(scenes, start=1):
        parsed[scene["label"]] = rareplanes.read_objects(
            files_dir / scene["label"], attribute, scene["crs"], scene["transform"], bad)
        if n % 200 == 0 or n == len(scenes):
            log.info("parsed RarePlanes labels: %d/%d", n, len(scenes))
    ids = rareplanes.class_ids(parsed, attribute)
    classes = sorted({o.category for objs in parsed.values() for o in objs},
                     key=(lambda c: ids[c]) if ids else rareplanes.class_sort_key)
    log.info("RarePlanes classes from attribute %r: %s", attribute,
             {c: ids[c] for c in classes} if ids else classes)
    writer = writer_for(classes, ids)
    for scene in scenes:
        for obj in parsed[scene["label"]]:
            if polygon_outside(obj.polygon, scene["width"], scene["height"]):
                bad.report("outside_image", scene["label"], f"feature {obj.feature} lies "
                           f"outside the {scene['width']}x{scene['height']} image")
                continue
            writer.add(scene["scene"], obj.category, 0, obj.polygon,
                       f"{scene['label']}, feature {obj.feature}")
    return {"class_attribute": attribute, "classes_in_data": classes,
            "class_ids": f"{attribute}_id" if ids else "sorted values"}


def _name_range(paths: list[str]) -> str:
    names = sorted(Path(p).stem for p in paths)
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]}"


def index_warnings(manifest: dict, summary: dict, bad: BadInput) -> list[dict]:
    """What the index did silently, in words (each {"case", "message"}): classes of a fixed
    class list without a single object, label files without images (a part archive missing),
    images without labels, label variants and copies set aside by the fetch."""
    fmt, warnings = manifest["format"], []

    def warn(case: str, message: str) -> None:
        warnings.append({"case": case, "message": message})

    empty = [c for c, n in summary["objects_per_class"].items() if n == 0]
    if empty and fmt == "dota":
        version = manifest.get("version")
        newer = [c for c in empty if c not in dota.CLASSES_V1_0]
        hint = (f" {', '.join(newer)} first appear(s) in DOTA {version}: are the labels v1.0's "
                f"(labelTxt-v1.0) rather than {version}'s?" if newer and
                version != "v1.0" else " Are all label files of this version fetched?")
        warn("empty_class", f"{len(empty)} of the {len(summary['objects_per_class'])} classes "
                            f"of DOTA {version} have no object at all: {', '.join(empty)}."
                            + hint)
    elif empty:
        warn("empty_class", f"{len(empty)} of the {len(summary['objects_per_class'])} classes "
                            f"have no object at all: {', '.join(empty)} (a subset of the "
                            "images, or labels of another release?)")
    by_split: dict[str, list[str]] = {}
    for path in manifest["labels_without_image"]:  # entry folders are `<n>-<split>/`
        by_split.setdefault(path.split("/", 1)[0].partition("-")[2], []).append(path)
    for split, orphans in sorted(by_split.items()):
        warn("label_without_image", f"{len(orphans)} label file(s) of split {split} have no "
                                    f"image ({_name_range(orphans)}): an image archive of that "
                                    "split (e.g. a DOTA part zip) may be missing from the "
                                    "source")
    if fmt == "xview" and bad.skipped["label_without_image"]:
        warn("label_without_image", f"{bad.skipped['label_without_image']} feature(s) name an "
                                    "image that was not fetched (xView's labels name one image "
                                    "its archive lacks; more: an image archive is missing)")
    unlabelled = bad.skipped["image_without_label"]
    if unlabelled:
        warn("image_without_label", f"{unlabelled} image(s) have no labels and are not used "
                                    "(scenes.csv, split excluded): a label archive or folder "
                                    "may be missing from the source")
    for variant in manifest.get("set_aside", {}).get("label_variants", []):
        warn("label_variant_set_aside", f"{variant['files']} label file(s) under "
                                        f"{variant['folder']} were not read: {variant['reason']}")
    copies = manifest.get("set_aside", {}).get("copies", [])
    if copies:
        warn("copy_set_aside", f"{len(copies)} file(s) were identical copies of files already "
                               f"fetched and were not read twice (e.g. {copies[0]['file']}, a "
                               f"copy of {copies[0]['same_as']})")
    return warnings


def index_dataset(manifest_path: Path, files_dir: Path, spec: dict, tables: IndexTables,
                  max_raster_values: int | None = None) -> dict:
    """Parse a fetched dataset into the normalised tables; returns the summary it writes.
    Image sizes come from the manifest, each within `max_raster_values` (`nadir.raster.opener`)."""
    manifest = read_scene_manifest(manifest_path)
    for scene in manifest["scenes"]:
        check_declared_size(files_dir / scene["image"], scene["width"], scene["height"],
                            scene["bands"], max_raster_values)
    fmt = manifest["format"]
    tables.make_folders()
    bad = BadInput(spec["on_bad_input"])
    for label in manifest["labels_without_image"]:
        bad.report("label_without_image", label, "no image of the same name was fetched")
    scenes = [dict(s, gsd="") for s in manifest["scenes"]]
    labelled = scenes
    if fmt != "xview":
        for s in scenes:
            if s["label"] is None:
                bad.report("image_without_label", s["image"], "no label file of the same name")
        labelled = [s for s in scenes if s["label"] is not None]
    writer: AnnotationWriter | None = None  # opened by the indexer once it knows the classes
    source_ids: dict[str, int] | None = None  # the data's own class ids, where it has them
    featured: set[str] = set()

    def writer_for(classes: list[str], ids: dict[str, int] | None = None) -> AnnotationWriter:
        nonlocal writer, source_ids
        writer = AnnotationWriter(tables.annotations, _class_filter(classes, spec), bad)
        source_ids = ids
        return writer

    try:
        if LAYOUTS[fmt] == "dota":
            details = _index_dota(labelled, files_dir, class_list(fmt, spec), bad,
                                  writer_for)
        elif fmt == "xview":
            details = _index_xview(labelled, files_dir, manifest["label_files"], bad, writer_for,
                                   featured)
        else:
            details = _index_rareplanes(labelled, files_dir, spec, bad, writer_for)
        writer.close()
        if fmt == "xview":  # an xView image without a single feature has no labels at all
            for s in labelled:
                if s["scene"] not in featured:
                    bad.report("image_without_label", s["image"], "no feature names this image")
            labelled = [s for s in labelled if s["scene"] in featured]
        splits, split_how = assign_splits(labelled, fmt, spec["split"])
        check_splits(splits, "official" if split_how.startswith("official") else "seeded",
                     manifest["dataset"], manifest)
        writer.publish()
    except BaseException:
        if writer is not None:  # no annotations.csv that looks complete
            writer.close()
            writer.partial.unlink(missing_ok=True)
        raise
    for s in scenes:
        s["split"] = splits.get(s["scene"], EXCLUDED)
        s["objects"] = writer.per_scene.get(s["scene"], 0)
    write_scene_table(tables.scenes, scenes)
    classes = writer.filter.output_classes()
    ids = writer.filter.output_ids(source_ids)
    write_categories(tables.categories, classes, ids)
    summary = {
        "dataset": manifest["dataset"], "format": fmt, "version": manifest.get("version"),
        "split": split_how,
        "scenes": dict(Counter(s["split"] for s in scenes)),
        "objects": sum(writer.per_class.values()),
        "objects_per_class": {c: writer.per_class.get(c, 0) for c in classes},
        "categories": categories(classes, ids),
        "bad_input": bad.summary(), "class_filter": writer.filter.summary(), **details,
    }
    summary["warnings"] = index_warnings(manifest, summary, bad)
    for warning in summary["warnings"]:
        log.warning("%s", warning["message"])
    tables.summary.write_text(json.dumps(summary, indent=1) + "\n")
    log.info("index of %s: scenes %s, %d objects", manifest["dataset"], summary["scenes"],
             summary["objects"])
    return summary


def index(manifest: str | Path, spec: dict, scenes: str | Path, annotations: str | Path,
          categories: str | Path, summary: str | Path,
          max_raster_values: int | None = None) -> dict:
    """The index job: the dataset whose scene manifest is `manifest` (its files in `files/`
    beside it, as the fetch job left them), indexed under the dataset's settings `spec`."""
    tables = IndexTables(Path(scenes), Path(annotations), Path(categories), Path(summary))
    return index_dataset(Path(manifest), Path(manifest).parent / "files", spec, tables,
                         max_raster_values)
