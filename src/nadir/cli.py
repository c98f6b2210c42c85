"""`nadir <stage> ...`: the entry points the Snakemake rules call, one sub-command per stage."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from nadir import __version__
from nadir.errors import NadirError

log = logging.getLogger("nadir")


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

    raw = json.loads(args.params)
    raw["bands"] = tuple(raw["bands"]) if raw.get("bands") else None
    params = ChipParams(**{k: v for k, v in raw.items() if k != "shards"})
    images = {Path(p).stem: Path(p) for p in args.images}
    scenes = [s for s in read_scenes(Path(args.scenes)) if s["scene"] in images]
    if len(scenes) != len(images):
        unknown = sorted(set(images) - {s["scene"] for s in scenes})
        raise NadirError(f"images {unknown} are not in the scene table {args.scenes}")
    result = chip_shard(scenes, read_annotations(Path(args.annotations)), images, params,
                        Path(args.tar), Path(args.json), threads=args.threads)
    log.info("shard %s: %d chips from %d scenes", args.tar, len(result["chips"]), len(scenes))


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
    from nadir.training.backend import TrainJob, fingerprint, get_backend, input_digests
    from nadir.training.catalogue import entry, weight_source
    from nadir.training.checkpoints import open_store
    from nadir.training.weights import verify_file

    hp = json.loads(args.hp)
    out_dir = Path(args.out_dir)
    model = entry(args.model)
    weights_file = Path(args.pretrained_weights) if args.pretrained_weights else None
    source = weight_source(args.model, hp["pretrained"])
    if source is not None and weights_file is None:
        raise NadirError(f"{args.model} with pretrained: {hp['pretrained']} needs "
                         f"--pretrained-weights ({source.file_name})")
    if source is not None:
        verify_file(weights_file, source.sha256)
    job = TrainJob(dataset=args.dataset, model=args.model, hp=hp, train_json=Path(args.train),
                   manifest=Path(args.manifest), shards=[Path(p) for p in args.shards],
                   out_dir=out_dir, threads=args.threads, checkpoint_every=args.checkpoint_every,
                   weights_file=weights_file, world_size=args.world_size)
    job.input_digests = input_digests(job)
    if args.checkpoints:
        job.checkpoints = open_store(f"{args.checkpoints.rstrip('/')}/{fingerprint(job)}",
                                     args.s3_endpoint, args.checkpoint_keep)
    backend = get_backend(model.backend)
    resolved = backend.resolved_config(job)
    result = backend.train(job)
    resolved["training"] = result
    Path(args.resolved_config or out_dir / "resolved_config.json").write_text(
        json.dumps(resolved, indent=1) + "\n")
    run = {
        "dataset": args.dataset, "model": args.model, "backend": model.backend,
        "hyperparameters": hp, "training": result, "inputs": job.input_digests,
        "code": resolved["code"], "versions": resolved["versions"],
    }
    (out_dir / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    if job.checkpoints is not None:
        job.checkpoints.clear()  # the run is complete: its weights are in the outputs
        log.info("removed the run's checkpoints from %s", job.checkpoints.describe())


def cmd_fetch_weights(args) -> None:
    from nadir.training.catalogue import weight_files
    from nadir.training.weights import fetch_weights

    files = weight_files()
    if args.file not in files:
        raise NadirError(f"{args.file!r} is not a weights file of the catalogue; known files: "
                         f"{sorted(files)}")
    source = files[args.file]
    fetch_weights(args.url or source.url, source.sha256, Path(args.out))


def cmd_evaluate(args) -> None:
    from nadir.evaluation import evaluate
    from nadir.training.backend import backend_of_weights

    hp = json.loads(args.hp)
    shards = [Path(p) for p in args.shards]
    predictions = backend_of_weights(Path(args.weights)).predict(
        Path(args.weights), Path(args.coco), shards, hp, threads=args.threads)
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
    p.add_argument("--resolved-config", help="default: OUT_DIR/resolved_config.json")
    p.add_argument("--pretrained-weights", help="the weights file `pretrained` asks for")
    p.add_argument("--checkpoints", help="checkpoint location: a directory or s3://BUCKET/PREFIX "
                   "(a subfolder per run fingerprint is made); none: no checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=0, help="iterations between them")
    p.add_argument("--checkpoint-keep", type=int, default=2, help="newest checkpoints kept")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL for s3:// checkpoints (keys come "
                   "from SNAKEMAKE_STORAGE_S3_ACCESS_KEY/_SECRET_KEY)")
    p.add_argument("--world-size", type=int, help="training processes (default: one per GPU)")
    p = sub.choices["evaluate"]
    p.add_argument("--weights", required=True)
    p.add_argument("--coco", required=True)
    p.add_argument("--predictions", required=True)
    p.add_argument("--metrics", required=True)

    p = command("fetch-weights", cmd_fetch_weights, "download and verify a weights file")
    p.add_argument("--file", required=True, help="file name from the model catalogue")
    p.add_argument("--url", help="fetch from here instead of the catalogue's URL (a mirror)")
    p.add_argument("--out", required=True)

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
