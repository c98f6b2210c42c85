"""Summary rules read their files by name (KIND:OWNER), never by their place in a list."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nadir.core.errors import NadirError
from nadir.core.named_inputs import files_by_owner, files_by_run, input_name, run_inputs

SRC = Path(__file__).resolve().parents[1] / "src"


def test_files_are_grouped_by_owner_whatever_order_they_are_named_in():
    named = {"scene:b": "b/scene.json", "chip:a": "a/chip.json", "other": "val.json",
             "scene:a": "a/scene.json", "chip:b": "b/chip.json", "extra:a": "a/extra.json"}
    grouped = files_by_owner(named.items(), ["chip", "scene"])
    assert list(grouped) == ["b", "a"]  # owners in the order they first appear
    assert grouped == {"b": {"chip": Path("b/chip.json"), "scene": Path("b/scene.json")},
                       "a": {"chip": Path("a/chip.json"), "scene": Path("a/scene.json")}}
    with_optional = files_by_owner(named.items(), ["chip"], ["extra"])
    assert with_optional["a"]["extra"] == Path("a/extra.json") and "extra" not in with_optional["b"]


def test_an_owner_without_a_required_file_is_an_error_naming_it():
    with pytest.raises(NadirError, match=r"inputs of 'b': no scene file; each needs one named "
                                         r"chip:b and scene:b"):
        files_by_owner({"chip:a": "1", "scene:a": "2", "chip:b": "3"}.items(), ["chip", "scene"])


def test_run_inputs_name_each_runs_files_and_files_by_run_reads_them_back():
    runs = [("dota", "fcos"), ("dota", "fcos--repeat-2"), ("xview", "fcos")]
    named = run_inputs(runs, {"run": "results/{dataset}/models/{model}/run.json",
                              "train_benchmark": "bench/{dataset}/train-{model}.tsv"})
    assert named[input_name("run", "dota/fcos--repeat-2")] == \
        "results/dota/models/fcos--repeat-2/run.json"
    by_run = files_by_run(named.items(), ["run", "train_benchmark"])
    assert list(by_run) == runs
    assert by_run[("xview", "fcos")]["train_benchmark"] == Path("bench/xview/train-fcos.tsv")


RULE_SCRIPT = """
import sys
from types import SimpleNamespace
from nadir.core.jobs import run_job
from nadir.core.errors import NadirError
import logging

def job():
    logging.getLogger("nadir").info("reading the runs")
    raise NadirError(sys.argv[2])

run_job(SimpleNamespace(log=[sys.argv[1]], rule="leaderboard"), job)
"""


@pytest.mark.parametrize("in_pod", [False, True])
def test_a_rule_script_logs_to_the_rules_log_and_fails_with_the_message(tmp_path, in_pod):
    log = tmp_path / "leaderboard.log"
    env = {"PYTHONPATH": str(SRC), **({"NADIR_TEE_STDERR": "1"} if in_pod else {})}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RULE_SCRIPT), str(log),
                           "run.json: no 'training'"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 1
    text = log.read_text()
    assert "INFO nadir: reading the runs" in text
    assert "nadir leaderboard: error: run.json: no 'training'" in text
    assert proc.stderr == ""  # as with `2> {log}`
    # In a pod the log is also the container's output (kubectl logs).
    assert ("nadir leaderboard: error" in proc.stdout) == in_pod
