"""`nadir <command>`: what a user runs by hand. The workflow's rules call the stages through
their scripts (workflow/scripts/), not through this command line."""

from __future__ import annotations

import argparse
import sys

from nadir import __version__
from nadir.core.jobs import report_errors, sleeping_openmp_threads
from nadir.core.log_tee import tee_stderr_if_asked


def fetch_weights(args) -> None:
    from nadir.train import fetch_catalogue_weights

    fetch_catalogue_weights(args.file, args.out, args.url)


def config_reference(args) -> None:
    from nadir.config.reference import render

    print(render(), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nadir", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch-weights", help="download, or check a file placed by hand, and "
                       "record a pretrained weights file of the catalogue")
    p.add_argument("--file", required=True, help="file name from the model catalogue")
    p.add_argument("--url", help="fetch from here instead of the catalogue's URL (a mirror)")
    p.add_argument("--out", required=True, help="where the file is (or goes), e.g. "
                   "weights/<file>; its record is written beside it")
    p.set_defaults(func=fetch_weights)
    p = sub.add_parser("config-reference",
                       help="print config/README.md, generated from the config schema")
    p.set_defaults(func=config_reference)
    return parser


def main(argv: list[str] | None = None) -> int:
    tee_stderr_if_asked()
    sleeping_openmp_threads()
    args = build_parser().parse_args(argv)
    return report_errors(args.command, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
