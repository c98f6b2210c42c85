"""Rule compare: paired bootstrap between a dataset's runs, their files named by run."""

from pathlib import Path

from nadir.cli import run_rule_script
from nadir.compare.bootstrap import compare_files

inp, out, params = snakemake.input, snakemake.output, snakemake.params
run_rule_script(snakemake, lambda: compare_files(
    inp, Path(inp.val), Path(inp.annotations), max_detections=params.max_detections,
    metric=params.metric, resamples=params.resamples, seed=params.seed,
    json_out=Path(out.json), html_out=Path(out.html)))
