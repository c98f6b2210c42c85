"""The files a summary rule reads, each named by what it is and whose it is.

The summary rules (compare, plot_class_ap, leaderboard, cost) read several files per run or per
job. Their rules name every such input `KIND:OWNER` (`metrics:sample/ssd`, a run's chip
metrics; `benchmark:chip/sample/000`, a job's benchmark file), and the stage functions group the
files by owner here, so no file is ever matched with its run by its place in a list. Snakemake
stages named inputs from storage as it does any other, and hands them to the rule's script as
`snakemake.input`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from nadir.core.errors import NadirError

SEPARATOR = ":"


def input_name(kind: str, owner: str) -> str:
    """The name of one input: `kind` says what the file is, `owner` whose it is."""
    if SEPARATOR in kind:
        raise ValueError(f"an input kind must not contain {SEPARATOR!r}: {kind!r}")
    return f"{kind}{SEPARATOR}{owner}"


def run_owner(dataset: str, run: str) -> str:
    """The owner of a run's files: `DATASET/RUN` (neither name holds a `/`: both are folders)."""
    return f"{dataset}/{run}"


def run_inputs(runs: Iterable[tuple[str, str]], paths: Mapping[str, str]) -> dict[str, str]:
    """The named inputs of every (dataset, run): `paths` maps each kind of file to its path
    pattern with `{dataset}` and `{model}` (the run's name, the rules' wildcard)."""
    return {input_name(kind, run_owner(dataset, run)): pattern.format(dataset=dataset, model=run)
            for dataset, run in runs for kind, pattern in paths.items()}


def files_by_owner(named: Iterable[tuple[str, str | Path]], required: Iterable[str],
                   optional: Iterable[str] = ()) -> dict[str, dict[str, Path]]:
    """{owner: {kind: path}} of the inputs whose kind is `required` or `optional`, owners in the
    order they first appear. Other inputs (the rule's own, unnamed by owner) are left out.

    `named` is (name, path) pairs, such as `snakemake.input.items()`. An owner that lacks a
    required kind is an error naming it, since its row or bar would be silently wrong.
    """
    required = list(required)
    kinds = {*required, *optional}
    grouped: dict[str, dict[str, Path]] = {}
    for name, path in named:
        kind, separator, owner = name.partition(SEPARATOR)
        if separator and kind in kinds:
            grouped.setdefault(owner, {})[kind] = Path(path)
    for owner, files in grouped.items():
        missing = [kind for kind in required if kind not in files]
        if missing:
            raise NadirError(f"inputs of {owner!r}: no {', '.join(missing)} file; each needs "
                             f"one named {' and '.join(input_name(k, owner) for k in required)}")
    return grouped


def files_by_run(named: Iterable[tuple[str, str | Path]], required: Iterable[str],
                 optional: Iterable[str] = ()) -> dict[tuple[str, str], dict[str, Path]]:
    """files_by_owner for files named by `run_inputs`: {(dataset, run): {kind: path}}."""
    runs = {}
    for owner, files in files_by_owner(named, required, optional).items():
        dataset, separator, run = owner.partition("/")
        if not separator:
            raise NadirError(f"input owner {owner!r} is not DATASET/RUN")
        runs[(dataset, run)] = files
    return runs
