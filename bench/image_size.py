"""Estimated installed size of the image's two targets (containers/Dockerfile), from this
environment's installed packages: no Docker engine here to build them.

    python bench/image_size.py

The CUDA target installs envs/requirements.txt, detectors.txt and detectron2.txt with their
dependencies (torch's CUDA 13.0 libraries come as nvidia-* wheels); the `cpu` target installs
requirements.txt with torch's CPU wheels instead (envs/cpu.txt). The CPU torch is estimated as
the installed CUDA torch less its CUDA libraries (torch/lib/*cuda*): the +cpu build of the same
version is not installable here. Sizes are the files each package installed (its RECORD), in
MiB; the Python base image (python:3.11-slim-bookworm) and git come on top of both.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ENVS = Path(__file__).resolve().parents[1] / "envs"
MIB = 2**20


def pinned(name: str) -> list[str]:
    names = []
    for line in (ENVS / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[=<>!~\[ ;]", line)[0])
    return names


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str], skip: set[str]) -> set[str]:
    """The installed distributions `roots` need, following their requirements (extras left
    out, environment markers evaluated here)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in skip:
            continue
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return seen


def installed_mib(name: str, leave_out: str | None = None) -> float:
    files = metadata.distribution(name).files or []
    total = 0
    for file in files:
        if leave_out and re.search(leave_out, str(file)):
            continue
        path = file.locate()
        if path.is_file():
            total += path.stat().st_size
    return total / MIB


def main() -> None:
    cuda = closure(pinned("requirements.txt") + pinned("detectors.txt")
                   + pinned("detectron2.txt"), set())
    torch_libs = {"torch", "torchvision"}
    cuda_libraries = {n for n in cuda if n.startswith(("nvidia-", "cuda-")) or n == "triton"}
    cpu = closure(pinned("requirements.txt"), torch_libs) - cuda_libraries
    cuda_total = sum(installed_mib(n) for n in cuda)
    cpu_torch = installed_mib("torch", r"torch/lib/[^/]*cuda") + installed_mib("torchvision")
    cpu_total = sum(installed_mib(n) for n in cpu) + cpu_torch
    print(f"CUDA target: {len(cuda)} packages, {cuda_total:,.0f} MiB installed, of which "
          f"{sum(installed_mib(n) for n in cuda_libraries):,.0f} MiB CUDA libraries "
          f"({', '.join(sorted(cuda_libraries)[:4])}, ...) and "
          f"{installed_mib('torch'):,.0f} MiB torch")
    print(f"cpu target:  {len(cpu) + 2} packages, {cpu_total:,.0f} MiB installed, of which "
          f"{cpu_torch:,.0f} MiB torch and torchvision without their CUDA libraries "
          f"(estimate); no nvidia-* or cuda-* package")
    print(f"ratio cpu / CUDA: {cpu_total / cuda_total:.2f}")


if __name__ == "__main__":
    main()
