"""`nadir <stage> ...`: the entry points the Snakemake rules call, one sub-command per stage."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import sys
from importlib import metadata
from pathlib import Path

from nadir import __version__
from nadir.errors import NadirError

log = logging.getLogger("nadir")


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _versions(packages: list[str]) -> dict:
    out = {"python": platform.python_version(), "nadir": __version__}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cmd_sample(args) -> None:
    from nadir.datasets.sample import SampleSpec, write_scene

    spec = SampleSpec(**json.loads(args.spec))
    scenes = spec.scenes()
    if not len(scenes) == len(args.images) == len(args.labels):
        raise NadirError(f"{len(scenes)} scenes but {len(args.images)} image and "
                         f"{len(args.labels)} label paths were given")
    for n, ((split, scene), image, label) in enumerate(
            zip(scenes, args.images, args.labels, strict=True), start=1):
        write_scene(spec, split, scene, Path(image), Path(label))
        if n % 10 == 0 or n == len(scenes):
            log.info("generated %d/%d scenes", n, len(scenes))


def cmd_index(args) -> None:
    from nadir.datasets import sample
    from nadir.index import SceneSource, build_index

    classes = {"sample": sample.CLASSES}[args.format]
    sources = [SceneSource(Path(image).stem, split, Path(image), Path(label))
               for split, image, label in args.scene]
    counts = build_index(sources, classes, Path(args.out_dir))
    log.info("index: %d scenes, %d objects", counts["scenes"], counts["objects"])


def cmd_chip(args) -> None:
    from nadir.chipping import ChipParams, chip_shard
    from nadir.index import read_annotations, read_scenes

    params = ChipParams.from_config(json.loads(args.params))
    images = {Path(p).stem: Path(p) for p in args.images}
    scenes = [s for s in read_scenes(Path(args.scenes)) if s["scene"] in images]
    if len(scenes) != len(images):
        unknown = sorted(set(images) - {s["scene"] for s in scenes})
        raise NadirError(f"images {unknown} are not in the scene table {args.scenes}")
    result = chip_shard(scenes, read_annotations(Path(args.annotations)), images, params,
                        Path(args.tar), Path(args.json), threads=args.threads)
    chips = sum(counts["chips_written"] for counts in result["scenes"].values())
    log.info("shard %s: %d chips from %d scenes", args.tar, chips, len(scenes))


def cmd_manifest(args) -> None:
    from nadir.chipping import write_manifest

    manifest = write_manifest([Path(p) for p in args.shards], Path(args.out))
    log.info("chips: %s", json.dumps(manifest["totals"]))


def cmd_coco(args) -> None:
    from nadir.coco import write_coco

    stats = write_coco([Path(p) for p in args.shards], Path(args.categories),
                       {"train": Path(args.train), "val": Path(args.val)}, Path(args.stats))
    for split, s in stats.items():
        log.info("%s: %d chips, %d objects %s", split, s["chips"], s["objects"],
                 s["objects_per_class"])


def cmd_train(args) -> None:
    from nadir.training import torchvision_backend

    hp = json.loads(args.hp)
    shards = [Path(p) for p in args.shards]
    out_dir = Path(args.out_dir)
    result = torchvision_backend.train(args.model, hp, Path(args.train), shards, out_dir,
                                       threads=args.threads)
    run = {
        "dataset": args.dataset, "model": args.model, "backend": "torchvision",
        "hyperparameters": hp, "training": result,
        "inputs": {"train_coco": _digest([Path(args.train)]),
                   "chip_manifest": _digest([Path(args.manifest)])},
        "versions": _versions(["torch", "torchvision", "rasterio", "numpy"]),
    }
    (out_dir / "run.json").write_text(json.dumps(run, indent=1) + "\n")


def cmd_evaluate(args) -> None:
    from nadir.evaluation import evaluate
    from nadir.training import torchvision_backend

    hp = json.loads(args.hp)
    shards = [Path(p) for p in args.shards]
    predictions = torchvision_backend.predict(Path(args.weights), Path(args.coco), shards, hp,
                                              threads=args.threads)
    Path(args.predictions).write_text(json.dumps(predictions) + "\n")
    result = evaluate(Path(args.coco), predictions, hp["max_detections"])
    Path(args.metrics).write_text(json.dumps(result, indent=1) + "\n")
    log.info("metrics: %s", json.dumps(result["metrics"]))


def cmd_leaderboard(args) -> None:
    from nadir.report import format_table, write_leaderboard

    runs = []
    for run_json, metrics_json in args.run:
        run = json.loads(Path(run_json).read_text())
        run["evaluation"] = json.loads(Path(metrics_json).read_text())
        runs.append(run)
    rows = write_leaderboard(runs, Path(args.csv), Path(args.html))
    print(format_table(rows))


def cmd_plot_loss(args) -> None:
    from nadir.report import plot_loss_curve

    plot_loss_curve(Path(args.train_log), Path(args.out), args.title)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nadir", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        return p

    p = command("sample", cmd_sample, "generate the embedded sample dataset")
    p.add_argument("--spec", required=True, help="JSON of the dataset's sample settings")
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", required=True)

    p = command("index", cmd_index, "build the scene and annotation tables")
    p.add_argument("--format", required=True, choices=["sample"])
    p.add_argument("--scene", nargs=3, action="append", required=True,
                   metavar=("SPLIT", "IMAGE", "LABEL"))
    p.add_argument("--out-dir", required=True)

    p = command("chip", cmd_chip, "chip scenes into one shard")
    p.add_argument("--params", required=True, help="JSON of the chipping settings")
    p.add_argument("--scenes", required=True)
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", nargs="*", default=[])
    p.add_argument("--tar", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--threads", type=int, default=1)

    p = command("manifest", cmd_manifest, "write the chip manifest from the shard chip lists")
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--out", required=True)

    p = command("coco", cmd_coco, "write COCO JSON per split and dataset statistics")
    p.add_argument("--shards", nargs="+", required=True)
    p.add_argument("--categories", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--stats", required=True)

    for name, func in (("train", cmd_train), ("evaluate", cmd_evaluate)):
        p = command(name, func, f"{name} one model on one dataset")
        p.add_argument("--hp", required=True, help="JSON of the settings")
        p.add_argument("--shards", nargs="+", required=True)
        p.add_argument("--threads", type=int, default=1)
    p = sub.choices["train"]
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out-dir", required=True)
    p = sub.choices["evaluate"]
    p.add_argument("--weights", required=True)
    p.add_argument("--coco", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--metrics", required=True)

    p = command("leaderboard", cmd_leaderboard, "rank every run; print the table")
    p.add_argument("--run", nargs=2, action="append", required=True,
                   metavar=("RUN_JSON", "METRICS_JSON"))
    p.add_argument("--csv", required=True)
    p.add_argument("--html", required=True)

    p = command("plot-loss", cmd_plot_loss, "plot a run's loss and learning-rate curves")
    p.add_argument("--train-log", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--title", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except NadirError as exc:
        log.error("%s", exc)
        print(f"nadir {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0
