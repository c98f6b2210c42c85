"""The training loop of the torchvision, transformers and yolox backends, and their prediction.

`_loop` reads top to bottom like torchvision's detection reference: load the chips, build the
model and its optimiser, resume, then per iteration `_train_step` (forward, backward, clip,
step), record the losses, log, checkpoint; last, write the outputs. With several processes (one
per GPU, or `world_size` on the CPU with gloo) each takes its slice of every global batch and
DistributedDataParallel averages the gradients; only rank 0 logs, checkpoints and writes outputs.
The helpers at the top (device, processes, loader, schedule, random state) are the detectron2
adapter's too, so that `lr`, the data order and a resumed run's random stream mean the same
whichever backend trains.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from nadir.config.catalogue import entry
from nadir.core.errors import NadirError
from nadir.raster.chip_params import ChipParams
from nadir.train.backends import TrainJob, saved_chip_params, saved_input_scaling
from nadir.train.checkpoints import LiveCurves
from nadir.train.data import (
    LoaderBatches,
    SeededBatches,
    ShardChips,
    as_made,
    category_labels,
    model_targets,
)
from nadir.train.loader_cost import gpu_job_cpus, loader_capacity
from nadir.train.models import build_detector
from nadir.train.models.bands import RGB, input_bands
from nadir.train.provenance import base_resolved_config, fingerprint, installed_versions
from nadir.train.recipes import ModelEMA, build_optimizer, lr_factor, model_ema
from nadir.train.selection import Scored, SelectionScorer, coco_detections, detections
from nadir.train.weights import read_weights

log = logging.getLogger(__name__)


def device_name() -> str:
    """The device predictions and training run on here: "cuda" or "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def world_size_for(requested: int | None) -> int:
    """Processes to train with: as requested, else one per visible GPU, else one."""
    if requested is not None:
        return max(1, requested)
    return max(1, torch.cuda.device_count())


def loader_workers(threads: int, world_size: int, device: torch.device) -> int:
    """Data loader processes per training process, from the job's threads.

    On a GPU every thread but one decodes chips (the one drives the GPU); on the CPU the
    threads do the model's arithmetic and the main process decodes (JPEG decoding is cheap
    next to a CPU training step).
    """
    per_process = max(1, threads // world_size)
    return 0 if device.type == "cpu" else min(8, max(1, per_process - 1))


def loader_generator(seed: int) -> torch.Generator:
    """The data loader's own generator.

    Without one, every loader iterator draws its worker seed from torch's global generator, so a
    resumed run, which restores that generator's state and then starts its loader, would be one
    draw ahead of the uninterrupted run from then on (Faster R-CNN samples from that stream).
    """
    return torch.Generator().manual_seed(seed)


# cuBLAS's workspace setting that makes its results repeatable (CUDA's documentation): set
# before cuBLAS makes its first handle, i.e. before the first matrix product on the GPU.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def seed_and_determinism(hp: dict) -> dict:
    """Seed torch from `seed`; with `deterministic`, also Python's and NumPy's generators,
    PyTorch's deterministic algorithms (an operation without one stops the run, naming it),
    cuBLAS's workspace setting and no cuDNN autotuning. Returns what run.json records."""
    torch.manual_seed(hp["seed"])
    if hp.get("deterministic"):
        random.seed(hp["seed"])
        np.random.seed(hp["seed"] % 2**32)
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return {"seed": hp["seed"], "deterministic": bool(hp.get("deterministic")),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def rng_state(device: torch.device) -> dict:
    """torch's random state on the CPU and, when training there, on the GPU."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopBackend:
    """The torchvision, transformers and yolox backends: models of all three are wrapped to
    torchvision's detection interface (`nadir.train.models`), so they share this loop
    unchanged; a backend only names itself and records its library's versions."""

    def __init__(self, name: str = "torchvision"):
        self.name = name

    def train(self, job: TrainJob) -> dict:
        world = world_size_for(job.world_size)
        if world == 1:
            return _train_process(0, job, 1, None, None)
        with tempfile.TemporaryDirectory(prefix="nadir-ddp-") as result_dir:
            log.info("starting %d training processes (DistributedDataParallel)", world)
            torch.multiprocessing.spawn(_train_process, args=(job, world, _free_port(),
                                                              result_dir),
                                        nprocs=world, join=True)
            return json.loads((Path(result_dir) / "result.json").read_text())

    def processes(self, job: TrainJob) -> int:
        """Training processes of the job: its global batch is batch_size times this."""
        return world_size_for(job.world_size)

    def resume(self, job: TrainJob) -> dict | None:
        if job.checkpoints is None:
            return None
        newest = job.checkpoints.newest()
        if newest is None:
            return None
        iteration, data = newest
        # Tensors and plain data only (checkpoints may come from shared storage).
        state = read_weights(io.BytesIO(data), f"checkpoint {iteration} in "
                                               f"{job.checkpoints.describe()}")
        if state.get("fingerprint") != fingerprint(job) or state["iteration"] != iteration:
            raise NadirError(f"checkpoint {iteration} in {job.checkpoints.describe()} belongs "
                             "to another run (its fingerprint differs); remove it to start over")
        return state

    def predict(self, weights: Path, coco_json: Path, shards: list[str], hp: dict,
                threads: int = 1) -> list[dict]:
        return predict(weights, coco_json, shards, hp, threads)

    def resolved_config(self, job: TrainJob) -> dict:
        world = world_size_for(job.world_size)
        device = device_name()
        config = base_resolved_config(job) | {"runtime": {
            "device": device, "processes": world,
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            "amp": bool(job.hp["amp"]) and device == "cuda",
            "loader_workers": loader_workers(job.threads, world, torch.device(device)),
            "torch_threads": max(1, job.threads // world),
            "cuda_build": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
            if device == "cuda" else None}}
        architecture = entry(job.model).architecture
        if self.name == "transformers":
            config["versions"] |= installed_versions(["transformers", "scipy"])
            config["transformers"] = {"architecture": architecture,
                                      "init": "random, transformers ResNet backbone (no download)"}
        elif self.name == "yolox":
            config["versions"] |= installed_versions(["yolox"])
            config["yolox"] = {"architecture": architecture}
        return config


def backend(name: str) -> LoopBackend:
    """The backend `name` (torchvision, transformers or yolox): the registry's entry point."""
    return LoopBackend(name)


def _train_process(rank: int, job: TrainJob, world: int, port: int | None,
                   result_dir: str | None) -> dict:
    """One training process (rank 0 alone without DDP); returns rank 0's summary."""
    distributed = world > 1
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                init_method=f"tcp://127.0.0.1:{port}")
    try:
        summary = _loop(rank, job, world, device)
    finally:
        if distributed:
            dist.destroy_process_group()
    if rank == 0 and result_dir is not None:
        (Path(result_dir) / "result.json").write_text(json.dumps(summary))
    return summary if rank == 0 else {}


@dataclass
class Optimisation:
    """The model and what updates it: everything a checkpoint saves besides the progress."""

    model: torch.nn.Module
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp: bool
    clip_grad_norm: float | None = None
    ema: ModelEMA | None = None  # the recipe's weight average (YOLOX), saved as model.pt

    def state(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}
        return state | ({"ema": self.ema.state_dict()} if self.ema is not None else {})

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


@dataclass
class Progress:
    """Iterations done, time spent and losses recorded, carried across a resume.

    Per-iteration losses stay on the device (`window`) until a log line or checkpoint needs
    them: one synchronisation per interval instead of one per loss per iteration.
    """

    start: int = 0
    seconds_before: float = 0.0  # spent by the runs this one resumes
    history: list = field(default_factory=list)  # one row per log interval: train_log.json
    loss_names: list = field(default_factory=list)
    window: list = field(default_factory=list)
    began: float = field(default_factory=time.perf_counter)
    # With `eval_every`: the selection scores of the best weights so far, and the weights.
    best: dict | None = None
    best_weights: dict | None = None

    @classmethod
    def from_checkpoint(cls, state: dict, device: torch.device) -> Progress:
        return cls(start=state["iteration"], seconds_before=state["seconds"],
                   history=state["history"], loss_names=state["loss_names"],
                   window=[torch.tensor(values, device=device) for values in state["window"]],
                   best=state.get("best"), best_weights=state.get("best_weights"))

    def state(self) -> dict:
        return {"history": self.history, "loss_names": self.loss_names,
                "window": [values.tolist() for values in self.window],
                "seconds": self.seconds(), "best": self.best, "best_weights": self.best_weights}

    def record_selection(self, done: int, scores: dict, weights: dict) -> bool:
        """Log the selection scores of iteration `done` (they arrive later than its loss
        row: the row goes in at its iteration, so train_log.json reads the same whenever
        they arrive); keep `weights` (a CPU copy of those scored) when they are the best yet
        (by AP, then AP50; the earlier iteration wins a tie). True when they are."""
        at = next((i for i, row in enumerate(self.history) if row["iteration"] > done),
                  len(self.history))
        self.history.insert(at, {"iteration": done, **scores})
        key = (scores["selection_AP"], scores["selection_AP50"])
        if self.best is not None and key <= (self.best["selection_AP"],
                                             self.best["selection_AP50"]):
            return False
        self.best = {"iteration": done, **scores}
        self.best_weights = weights
        return True

    def seconds(self) -> float:
        """Training time so far, the resumed runs' included."""
        return self.seconds_before + time.perf_counter() - self.began

    def record(self, loss: torch.Tensor, losses: dict) -> None:
        self.loss_names = self.loss_names or ["loss", *losses]
        self.window.append(torch.stack([loss.detach().float()] +
                                       [v.detach().float() for v in losses.values()]))

    def window_means(self, model: str, done: int, lr: float) -> torch.Tensor:
        """The mean of each loss since the last log line; a non-finite loss stops training."""
        means = torch.stack(self.window).mean(0)
        if not torch.isfinite(means).all():
            raise NadirError(
                f"{model}: the loss became {means[0].item()} between iterations "
                f"{done - len(self.window) + 1} and {done}; lower the learning rate (now "
                f"{lr}) or lengthen the warm-up")
        return means

    def log_interval(self, means: torch.Tensor, done: int, total: int, lr: float,
                     images_per_step: int) -> None:
        """Close the interval: one train_log row and one log line with the ETA."""
        seconds = time.perf_counter() - self.began
        per_iteration = seconds / (done - self.start)
        row = {"iteration": done, "lr": lr, "seconds": round(self.seconds_before + seconds, 2),
               "images_per_second": round(images_per_step / per_iteration, 2)}
        row |= dict(zip(self.loss_names, means.tolist(), strict=True))
        self.history.append(row)
        self.window = []
        log.info("iteration %d/%d (%.0f%%)  loss %.4f  lr %.2e  %.2fs/it  %.1f img/s  "
                 "ETA %.0fs", done, total, 100 * done / total, row["loss"], row["lr"],
                 per_iteration, row["images_per_second"], per_iteration * (total - done))


def _loop(rank: int, job: TrainJob, world: int, device: torch.device) -> dict:
    """One process's run: set up, then train step by step, logging and checkpointing."""
    hp, lead, iterations = job.hp, rank == 0, job.hp["iterations"]
    determinism = seed_and_determinism(hp)
    torch.set_num_threads(max(1, job.threads // world))
    dataset = _load_chips(job)
    chips = job.chip_params
    size, num_classes = chips.size, len(dataset.categories)
    optimisation = _build_optimisation(job, num_classes, size, device,
                                       len(dataset), hp["batch_size"] * world)
    progress = _resume(job, optimisation, rank, world, device)
    trained = _distributed(optimisation.model, world, device)
    workers = loader_workers(job.threads, world, device)
    batches = _batches(dataset, hp, progress.start, rank, world, workers, device)
    if lead:
        log.info("training %s on %d chips, %d classes, %d px, iterations %d..%d, device %s x%d, "
                 "AMP %s, %d loader worker(s) per process (about %.0f chips/s, "
                 "nadir.train.loader_cost)", job.model, len(dataset), num_classes,
                 size, progress.start, iterations, device.type, world,
                 "on" if optimisation.amp else "off", workers,
                 loader_capacity(workers, chips.image_format, size))
    scorer = live = None
    if lead:
        live = LiveCurves(job.checkpoints, job.outputs.weights.parent, progress.start)
        if hp.get("eval_every"):
            scorer = SelectionScorer(job.selection_json, job.shards, dataset.categories,
                                     hp["batch_size"], scaling=dataset.scaling)
    progress.began = time.perf_counter()
    try:
        for step in range(progress.start, iterations):
            loss, losses = _train_step(trained, next(batches), dataset, optimisation, device)
            done = step + 1
            checkpoint_now = job.checkpoints is not None and job.checkpoint_every and \
                done % job.checkpoint_every == 0 and done < iterations
            log_now = done % hp["log_interval"] == 0 or done == iterations
            if not lead:
                if checkpoint_now:
                    _gather_rng_states(world, device)
                continue
            progress.record(loss, losses)
            lr = optimisation.scheduler.get_last_lr()[0]
            if log_now or checkpoint_now:
                means = progress.window_means(job.model, done, hp["lr"])
            if log_now:
                progress.log_interval(means, done, iterations, lr, hp["batch_size"] * world)
                live.add(done, _curves(progress.history[-1], device))
            if scorer is not None:
                arrived = scorer.arrived()
                if done % hp["eval_every"] == 0 or done == iterations:
                    arrived += scorer.submit(done, optimisation.model, device,
                                             _saved_weights(optimisation))
                _record_selection(arrived, progress, live)
            if checkpoint_now:
                if scorer is not None:  # the checkpoint holds every score up to its step
                    _record_selection(scorer.arrived(keep=0), progress, live)
                _save_checkpoint(job, done, optimisation, progress,
                                 _gather_rng_states(world, device))
                live.publish()
        if scorer is not None:
            _record_selection(scorer.arrived(keep=0), progress, live)
    finally:
        if scorer is not None:
            scorer.close()
    if not lead:
        return {}
    if device.type == "cuda":
        this_run = time.perf_counter() - progress.began  # a resumed run's own iterations
        _log_loader_need(hp["batch_size"] * (iterations - progress.start) / this_run, chips,
                         job.threads // world)
    live.close()
    _write_outputs(job, optimisation, dataset, chips, progress)
    return {"seconds": round(progress.seconds(), 2), "iterations": iterations,
            "resumed_from": progress.start, "device": device.type, "processes": world,
            "amp": optimisation.amp, "chips": len(dataset),
            "selection": _selection_record(job, scorer, progress), "determinism": determinism}


def _log_loader_need(rate: float, chips: ChipParams, threads: int) -> None:
    """How many CPUs a process training at this rate needs to be fed (the GPU rules' CPU
    request, nadir.train.loader_cost), against the threads it had."""
    needed = gpu_job_cpus(rate, chips.image_format, chips.size)
    log.info("%.1f images/s per process: feeding that takes %d CPU(s) per process "
             "(nadir.train.loader_cost), it had %d%s", rate, needed, threads,
             "" if threads >= needed else ": the GPU may have waited for chips")


def _curves(row: dict, device: torch.device) -> dict:
    """TensorBoard scalars of one train_log row: loss terms, lr, throughput, GPU memory."""
    curves = {f"loss/{k}": v for k, v in row.items()
              if k not in ("iteration", "lr", "seconds", "images_per_second")}
    curves |= {"lr": row["lr"], "images_per_second": row["images_per_second"]}
    if device.type == "cuda":
        curves["gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return curves


def _saved_weights(optimisation: Optimisation) -> dict | None:
    """The weights model.pt would hold now: the recipe's average where it keeps one (YOLOX's
    EMA), else None (the model's own)."""
    ema = optimisation.ema
    return None if ema is None else ema.weights(optimisation.model)


def _record_selection(arrived: list[Scored], progress: Progress, live: LiveCurves) -> None:
    """Record scores that came back from the scoring process, oldest first."""
    for scored in arrived:
        scores = scored.scores
        best = progress.record_selection(scored.iteration, scores, scored.weights)
        live.add(scored.iteration, {"selection/AP": scores["selection_AP"],
                                    "selection/AP50": scores["selection_AP50"]})
        log.info("iteration %d: selection split AP %.4f, AP50 %.4f (scored in %.1fs beside "
                 "training)%s", scored.iteration, scores["selection_AP"],
                 scores["selection_AP50"], scored.seconds, ", the best so far" if best else "")


def _selection_record(job: TrainJob, scorer: SelectionScorer | None, progress: Progress):
    """What run.json says about checkpoint selection: which split selected, which weights."""
    if scorer is None:
        return None
    return {"split": "selection: train scenes held out by scene (seeded), "
                     f"{len(scorer.dataset)} chips", "every": job.hp["eval_every"],
            "weights": job.hp["select"], "best": progress.best,
            "scored_on": "val (the evaluate job)"}


def _load_chips(job: TrainJob) -> ShardChips:
    dataset = ShardChips(job.train_json, job.shards, augment=job.hp["augment"],
                         scaling=job.input_scaling)
    if len(dataset) == 0:
        raise NadirError(f"{job.train_json} holds no chips: check the split and chipping settings")
    return dataset


def _build_optimisation(job: TrainJob, num_classes: int, size: int, device: torch.device,
                        chips: int, global_batch: int) -> Optimisation:
    """The catalogue model, the optimiser and schedule of its recipe (`nadir.train.recipes`:
    AdamW, warm-up then cosine under `common`) and the AMP scaler."""
    hp = job.hp
    model = build_detector(job.model, num_classes, size, hp["pretrained"], job.weights_file,
                           input_bands(job.chip_params, hp["band_mixing"]))
    model.to(device).train()
    plan = job.training_plan(chips, global_batch)
    optimizer, params = build_optimizer(model, plan, job.model, hp["pretrained"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(plan))
    amp = bool(hp["amp"]) and device.type == "cuda"
    return Optimisation(model, params, optimizer, scheduler,
                        torch.amp.GradScaler("cuda", enabled=amp), amp, plan.clip_grad_norm,
                        model_ema(model, plan))


def _resume(job: TrainJob, optimisation: Optimisation, rank: int, world: int,
            device: torch.device) -> Progress:
    """Load the newest matching checkpoint into `optimisation`; the progress it had reached."""
    lead = rank == 0
    state = LoopBackend().resume(job)
    if state is None:
        if lead and job.checkpoints is not None:
            log.info("no checkpoint in %s: starting at iteration 0", job.checkpoints.describe())
        return Progress()
    optimisation.load(state)
    if len(state["rng"]) == world:
        set_rng_state(state["rng"][rank], device)
    elif lead:
        log.warning("checkpoint was written by %d process(es), this run has %d: random "
                    "states are not restored", len(state["rng"]), world)
    if lead:
        log.info("resuming from the checkpoint at iteration %d/%d in %s", state["iteration"],
                 job.hp["iterations"], job.checkpoints.describe())
    return Progress.from_checkpoint(state, device)


def _distributed(model: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """The model as the loop calls it: wrapped in DistributedDataParallel when world > 1."""
    if world == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def _batches(dataset: ShardChips, hp: dict, start: int, rank: int, world: int, workers: int,
             device: torch.device):
    """This process's batches from iteration `start` on, in the seeded order; for a GPU in
    pinned memory, so that their copies to it do not hold up the step (`model_inputs`)."""
    sampler = SeededBatches(len(dataset), hp["batch_size"], hp["seed"], start, rank, world,
                            hp["augment"])
    return iter(torch.utils.data.DataLoader(
        LoaderBatches(dataset, sampler), batch_size=None, num_workers=workers,
        collate_fn=as_made, persistent_workers=workers > 0, pin_memory=device.type == "cuda",
        generator=loader_generator(hp["seed"])))


def _train_step(model: torch.nn.Module, batch: tuple, dataset: ShardChips,
                optimisation: Optimisation, device: torch.device) -> tuple[torch.Tensor, dict]:
    """Forward, backward, clip, step (and the weight average, if the recipe keeps one): one
    iteration; returns the total loss and its parts."""
    images, targets = batch
    images = dataset.model_inputs(images, device)
    targets = model_targets(model, targets, device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=optimisation.amp):
        losses = model(images, targets)
        loss = sum(losses.values())
    optimisation.optimizer.zero_grad(set_to_none=True)
    optimisation.scaler.scale(loss).backward()
    optimisation.scaler.unscale_(optimisation.optimizer)
    if optimisation.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(optimisation.params, optimisation.clip_grad_norm)
    optimisation.scaler.step(optimisation.optimizer)
    optimisation.scaler.update()
    optimisation.scheduler.step()
    if optimisation.ema is not None:
        optimisation.ema.update(optimisation.model)
    return loss, losses


def _gather_rng_states(world: int, device: torch.device) -> list:
    """Every process's random state (one entry per rank); every rank must call it."""
    if world == 1:
        return [rng_state(device)]
    states = [None] * world
    dist.all_gather_object(states, rng_state(device))
    return states


def _save_checkpoint(job: TrainJob, done: int, optimisation: Optimisation, progress: Progress,
                     rng: list) -> None:
    buffer = io.BytesIO()
    torch.save({"fingerprint": fingerprint(job), "iteration": done, **optimisation.state(),
                "rng": rng, **progress.state()}, buffer)
    job.checkpoints.save(done, buffer.getvalue())


def _write_outputs(job: TrainJob, optimisation: Optimisation, dataset: ShardChips,
                   chips: ChipParams, progress: Progress) -> None:
    """model.pt (the weights `select` picks, with what predicting needs: the classes and the
    chip parameters) and train_log.json. The last weights are the recipe's average where it
    keeps one (YOLOX's EMA).

    With `eval_every` and a checkpoint location, the best and the last weights are also kept
    there (best.pt, last.pt), whichever model.pt holds.
    """
    job.outputs.weights.parent.mkdir(parents=True, exist_ok=True)
    last = _saved_weights(optimisation) or optimisation.model.state_dict()
    weights = {"last": last, "best": progress.best_weights}
    header = {"model": job.model, "num_classes": len(dataset.categories),
              "chipping": chips.to_record(), "categories": dataset.categories,
              "input": {"scaling": dataset.scaling.to_record(),
                        "band_mixing": job.hp["band_mixing"]}}
    chosen = job.hp.get("select", "last")
    if weights[chosen] is None:
        raise NadirError(f"{job.model}: select: best needs eval_every > 0 and a selection split")
    torch.save({**header, "state_dict": weights[chosen], "weights": chosen,
                "selection": progress.best}, job.outputs.weights)
    if job.checkpoints is not None and progress.best_weights is not None:
        for name, state in weights.items():
            buffer = io.BytesIO()
            torch.save({**header, "state_dict": state, "weights": name}, buffer)
            job.checkpoints.put(f"{name}.pt", buffer.getvalue())
    job.outputs.train_log.write_text(json.dumps(progress.history, indent=1) + "\n")


@torch.no_grad()
def predict(weights: Path, coco_json: Path, shards: list[str], hp: dict,
            threads: int = 1) -> list[dict]:
    """COCO-format detections (xywh boxes, category ids, scores) for every image of a split."""
    torch.set_num_threads(max(1, threads))
    device = torch.device(device_name())
    saved = read_weights(weights)
    model = prediction_model(saved, saved_chip_params(saved, weights).size,
                             hp["score_threshold"], hp["max_detections"], device)
    dataset = ShardChips(coco_json, shards, scaling=saved_input_scaling(saved, weights))
    results = detections(model, dataset, saved["categories"], hp["batch_size"], device,
                         log_progress=True)
    log.info("predicted %d detections on %d chips", len(results), len(dataset))
    return results


def prediction_model(saved: dict, image_size: int, score_threshold: float,
                     max_detections: int, device: torch.device) -> torch.nn.Module:
    """A saved model (model.pt's record) built for `image_size` px inputs, in eval mode on
    `device`, keeping detections above `score_threshold`, at most `max_detections` per image:
    how evaluation and inference on new scenes both run a trained model."""
    bands = RGB  # a record without chip parameters: the RGB model
    if saved.get("chipping") is not None:
        bands = input_bands(ChipParams.from_record(saved["chipping"], saved["model"]),
                            saved.get("input", {}).get("band_mixing", False))
    model = build_detector(saved["model"], saved["num_classes"], image_size, bands=bands)
    model.load_state_dict(saved["state_dict"])
    model.to(device).eval()
    for head in (model, getattr(model, "roi_heads", None)):
        if head is not None and hasattr(head, "score_thresh"):
            head.score_thresh = score_threshold
        if head is not None and hasattr(head, "detections_per_img"):
            head.detections_per_img = max_detections
    return model


WindowDetector = Callable[[list[np.ndarray]], list[list[dict]]]


def window_detector(weights: Path, score_threshold: float, max_detections: int,
                    threads: int = 1) -> tuple[WindowDetector, list[dict], ChipParams]:
    """(detect, categories, chip parameters) of a model.pt: `detect` maps (bands, size, size)
    windows (in the chips' type, scaled as training scaled them) to their COCO detections
    (xywh in window pixels, category id, score, rounded as evaluation rounds them); the chip
    parameters are those the model learnt from, which inference cuts its windows with.

    The one place inference meets a backend: models of this loop (torchvision, transformers,
    yolox) are built as evaluation builds them. detectron2 runs are not supported yet.
    """
    torch.set_num_threads(max(1, threads))
    device = torch.device(device_name())
    saved = read_weights(weights)
    if entry(saved["model"]).backend == "detectron2":
        raise NadirError(f"{weights}: inference does not support detectron2 runs yet")
    chips = saved_chip_params(saved, weights)
    scaling = saved_input_scaling(saved, weights)
    model = prediction_model(saved, chips.size, score_threshold, max_detections, device)
    category_of = {label: cid for cid, label in category_labels(saved["categories"]).items()}
    log.info("model %s (%d classes) on %s", saved["model"], saved["num_classes"], device.type)

    @torch.no_grad()
    def detect(windows: list[np.ndarray]) -> list[list[dict]]:
        stacked = np.stack(windows)
        pixels = torch.from_numpy(stacked if stacked.dtype == np.uint8
                                  else stacked.astype(np.float32)).to(device)
        if pixels.shape[1] == 1:  # grey chips reach the model as RGB, as at training time
            pixels = pixels.expand(-1, 3, -1, -1)
        return [coco_detections(out, category_of)
                for out in model(list(scaling.apply(pixels.float())))]

    return detect, saved["categories"], chips
