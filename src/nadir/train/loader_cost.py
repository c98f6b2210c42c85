"""What the training loader costs on a CPU per chip, and so the CPUs a GPU job needs.

Measured by bench/loader_cost.py (figures and machine in bench/README.md, "The loader's CPU
cost per chip"): one loader worker's CPU seconds per 1,024 px chip to decode it, apply its
symmetry and collate it (the conversion to float happens on the model's device). Decoding and
the symmetry are linear in the pixels, so other chip sizes scale by the pixel count.

A GPU job feeding its GPU R images per second needs ceil(R x seconds per chip / WORKER_BUSY)
loader workers (a worker kept at most 80 % busy leaves room for a shared node's noise) and one
CPU more for the process that drives the GPU: `gpu_job_cpus`, the CPU request the GPU rules'
pods should carry (their `threads`: a profile's `set-threads`).
"""

from __future__ import annotations

import math

# CPU seconds per 1,024 px chip (decode + symmetry + collate), bench/loader_cost.py, 2026-12-07,
# after chips went to the device as stored (before: JPEG 0.0263, PNG 0.0424 with the float).
# TIFF chips (N bands, any bit depth) are not measured yet: PNG's figure stands in for them
# (bench/loader_cost.py has no TIFF case; a 128 px 3-band 16-bit TIFF chip took about 0.02 s of
# CPU to decode through GDAL on a loaded machine, mostly per-chip overhead).
SECONDS_PER_CHIP = {"jpeg": 0.0152, "png": 0.0304, "tiff": 0.0304}
MEASURED_SIDE = 1024
WORKER_BUSY = 0.8


def seconds_per_chip(image_format: str, side: int) -> float:
    return SECONDS_PER_CHIP[image_format] * (side / MEASURED_SIDE) ** 2


def loader_capacity(workers: int, image_format: str, side: int) -> float:
    """Chips per second `workers` loader processes deliver (the training process itself with
    none), at WORKER_BUSY of their CPU."""
    return max(1, workers) * WORKER_BUSY / seconds_per_chip(image_format, side)


def gpu_job_cpus(images_per_second: float, image_format: str, side: int) -> int:
    """CPUs a GPU training or evaluation job needs to feed `images_per_second`."""
    return math.ceil(images_per_second * seconds_per_chip(image_format, side) / WORKER_BUSY) + 1
