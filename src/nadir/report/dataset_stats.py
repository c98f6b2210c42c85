"""Per-dataset statistics from the index tables (nadir.report.figures draws them for the report).

Objects per class (per split), object sizes (square root of the box area, in pixels) and
objects per image. The tables are streamed, so xView's million rows need little memory; the
class panel uses a log scale so that a class with 17 objects is as visible as one with 300,000.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
from array import array
from collections import Counter
from pathlib import Path

from nadir.core.html import heading, page, paragraph, table
from nadir.datasets.tables import EXCLUDED
from nadir.raster.chip_params import ChipParams
from nadir.report.figures import plot_statistics

log = logging.getLogger(__name__)

SIZE_BINS_PX = [0, 4, 8, 16, 32, 64, 128, 256, 512, 1024, math.inf]


def _box_sides(polygon: str) -> tuple[float, float]:
    values = [float(v) for v in polygon.split()]
    xs, ys = values[0::2], values[1::2]
    return max(xs) - min(xs), max(ys) - min(ys)


def _percentile(sorted_values, q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 2)


def dataset_statistics(scenes_csv: Path, annotations_csv: Path, categories_json: Path) -> dict:
    """Objects per class and split, object size distribution, objects per image."""
    with open(scenes_csv, newline="") as fh:
        split_of = {row["scene"]: row["split"] for row in csv.DictReader(fh)}
    classes = [c["name"] for c in json.loads(Path(categories_json).read_text())]
    per_class: dict[str, Counter] = {}
    per_image: Counter = Counter()
    sizes = array("f")
    longest: dict[str, float] = {}  # per class, the longest box side
    with open(annotations_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            split = split_of.get(row["scene"], EXCLUDED)
            per_class.setdefault(split, Counter())[row["category"]] += 1
            per_image[row["scene"]] += 1
            width, height = _box_sides(row["polygon"])
            sizes.append(math.sqrt(width * height))
            longest[row["category"]] = max(longest.get(row["category"], 0.0), width, height)
    ordered = sorted(sizes)
    splits = sorted(set(split_of.values()))
    images = {s: [per_image.get(scene, 0) for scene, sp in split_of.items() if sp == s]
              for s in splits}
    size_histogram = Counter()
    for value in sizes:
        for lo, hi in zip(SIZE_BINS_PX, SIZE_BINS_PX[1:], strict=False):
            if lo <= value < hi:
                size_histogram[f"{lo}-{hi}"] += 1
                break
    counts = [sum(per_class.get(s, Counter()).get(c, 0) for s in splits) for c in classes]
    nonzero = [n for n in counts if n]
    return {
        "images": {s: len(images[s]) for s in splits},
        "objects": {s: sum(per_class.get(s, Counter()).values()) for s in splits},
        "objects_per_class": {s: {c: per_class.get(s, Counter()).get(c, 0) for c in classes}
                              for s in splits},
        "class_imbalance": round(max(nonzero) / min(nonzero), 1) if nonzero else None,
        "longest_box_side_px": {c: round(longest[c], 1) for c in classes if c in longest},
        "object_size_px": {"p5": _percentile(ordered, 0.05), "median": _percentile(ordered, 0.5),
                           "p95": _percentile(ordered, 0.95),
                           "histogram": {f"{lo}-{hi}": size_histogram.get(f"{lo}-{hi}", 0)
                                         for lo, hi in zip(SIZE_BINS_PX, SIZE_BINS_PX[1:],
                                                           strict=False)}},
        "objects_per_image": {s: {"mean": round(sum(v) / len(v), 2) if v else 0,
                                  "max": max(v, default=0), "histogram": _image_histogram(v)}
                              for s, v in images.items()},
    }


def _image_histogram(values: list[int]) -> dict[str, int]:
    edges = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, math.inf]
    out = {}
    for lo, hi in zip(edges, edges[1:], strict=False):
        out[f"{lo}-{hi - 1}" if hi - lo > 1 else str(lo)] = sum(lo <= v < hi for v in values)
    return out


def chipping_warnings(stats: dict, coco_stats: dict, chipping: ChipParams) -> list[dict]:
    """Classes with objects in a split's scenes and none in its chips, with the likely reason:
    boxes longer than the chip side cannot keep `min_visible` of their area in one chip."""
    warnings = []
    size = chipping.size
    for split in ("train", "val"):
        indexed = stats["objects_per_class"].get(split, {})
        chipped = coco_stats.get(split, {}).get("objects_per_class", {})
        lost = [c for c, n in indexed.items() if n and not chipped.get(c)]
        if not lost:
            continue
        longest = stats.get("longest_box_side_px", {})
        too_big = [c for c in lost if longest.get(c, 0) > size]
        named = ", ".join(f"{c} ({indexed[c]} objects, longest box side {longest.get(c)} px)"
                          for c in lost)
        reason = (f"the {size} px chips are too small for {', '.join(too_big)} (an object is "
                  f"kept where {chipping.min_visible} of its area lies in one chip): raise "
                  "chipping.size for this dataset, e.g. DOTA's usual {size: 1024, overlap: "
                  "200}" if too_big else
                  "their objects were cut by chip borders below chipping.min_visible, or lay "
                  "in chips skipped as nodata (chipping.nodata_max)")
        warnings.append({"case": "class_lost_in_chipping",
                         "message": f"{len(lost)} class(es) with objects in the {split} scenes "
                                    f"have none in the {split} chips: {named}; {reason}"})
    return warnings


def dataset_summary_html(title: str, summary: dict, stats: dict, coco_stats: dict) -> str:
    """One dataset's page in the report: every warning (what the index and the chipping did
    silently), then scenes and objects per class in the index and in the chips, per split."""
    splits = [s for s in ("train", "val") if s in stats["objects_per_class"]]
    warnings = stats.get("warnings", [])
    items = "".join(f"<li><b>{html.escape(w['case'])}</b>: {html.escape(w['message'])}</li>"
                    for w in warnings) or "<li>none</li>"
    classes = list(next(iter(stats["objects_per_class"].values()), {}))
    header = ["class", *(f"{s} {where}" for s in splits
                         for where in ("scenes (index)", "chips (COCO)"))]
    rows = [[c, *(count for s in splits for count in (
        stats["objects_per_class"][s].get(c, 0),
        coco_stats.get(s, {}).get("objects_per_class", {}).get(c, 0)))] for c in classes]
    scenes = ", ".join(f"{k}: {v}" for k, v in sorted(stats["images"].items()))
    return page(title, heading(2, title), heading(3, f"Warnings ({len(warnings)})"),
                f"<ul>{items}</ul>",
                paragraph(f"Scenes: {scenes or 'n/a'}; split "
                          f"{summary.get('split', 'as generated')}."),
                heading(3, "Objects per class"), table(header, rows),
                *band_section(stats.get("band_stats")))


def band_section(band_stats: dict | None) -> list[str]:
    """The train chips' per-band statistics as a table (nothing before they were recorded)."""
    if not band_stats:
        return []
    percentiles = sorted(band_stats["percentiles"] or {}, key=float)
    names = band_stats["bands"] or list(range(1, len(band_stats["mean"]) + 1))
    rows = [[str(name), band_stats["mean"][i], band_stats["std"][i],
             *(band_stats["percentiles"][p][i] for p in percentiles)]
            for i, name in enumerate(names)]
    return [heading(3, f"Bands of the train chips ({band_stats['dtype']})"),
            table(["band", "mean", "std", *(f"p{p}" for p in percentiles)], rows)]


def write_dataset_stats(scenes: str | Path, annotations: str | Path, categories: str | Path,
                        summary: str | Path, coco_stats: str | Path, chip_manifest: str | Path,
                        json_out: str | Path, png: str | Path, html_out: str | Path,
                        title: str) -> dict:
    """The dataset_stats job: a dataset's statistics (`json_out`), their figure (`png`) and
    its summary page with every warning of the index and the chipping (`html_out`)."""
    stats = dataset_statistics(Path(scenes), Path(annotations), Path(categories))
    index_summary = json.loads(Path(summary).read_text())
    chipped = json.loads(Path(coco_stats).read_text())
    stats["warnings"] = index_summary.get("warnings", []) + chipping_warnings(
        stats, chipped, ChipParams.of_manifest(chip_manifest))
    # The train chips' per-band mean, std and percentiles: what training normalises with.
    stats["band_stats"] = json.loads(Path(chip_manifest).read_text()).get("band_stats")
    for warning in stats["warnings"]:
        log.warning("%s", warning["message"])
    Path(json_out).write_text(json.dumps(stats, indent=1) + "\n")
    plot_statistics(stats, Path(png), title)
    Path(html_out).write_text(dataset_summary_html(title, index_summary, stats, chipped))
    log.info("statistics: images %s, objects %s, class imbalance %s, %d warning(s)",
             stats["images"], stats["objects"], stats["class_imbalance"], len(stats["warnings"]))
    return stats
