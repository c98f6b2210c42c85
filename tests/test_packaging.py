"""The container image installs exactly the pinned runtime that CI tests (envs/requirements.txt)."""

from __future__ import annotations

import re
from importlib import metadata

import pytest
from conftest import ROOT

DOCKERFILE = (ROOT / "containers" / "Dockerfile").read_text()


def pins(path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, sep, version = line.partition("==")
            assert sep, f"{path}: {line!r} is not pinned with =="
            found[name.lower()] = version
    return found


REQUIREMENTS = pins(ROOT / "envs" / "requirements.txt")


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert match, f"containers/Dockerfile has no default for ARG {name}"
    return match.group(1)


ENV_FILES = ["requirements.txt", "detectors.txt", "detectron2.txt"]


def test_image_installs_the_env_files_and_no_other_pins():
    copied = re.search(r"^COPY ((?:envs/\S+ )+)(\S+)/$", DOCKERFILE, re.M)
    assert copied, "the image must COPY the env files into one folder"
    assert copied.group(1).split() == [f"envs/{name}" for name in ENV_FILES]
    install = re.search(r"^RUN pip install --no-cache-dir ((?:-r \S+ ?(?:\\\n\s*)?)+)$",
                        DOCKERFILE, re.M)
    assert install, "the image must pip install the copied env files"
    assert re.findall(r"-r (\S+)", install.group(1)) == [
        f"{copied.group(2)}/{name}" for name in ENV_FILES]
    # nothing pinned beside them: every version the image installs comes from those files
    assert not re.search(r"pip (?:install|wheel)[^\n]*==", DOCKERFILE)
    for name in ENV_FILES + ["yolox.txt"]:
        pins(ROOT / "envs" / name)  # each line pinned with ==


def test_base_image_torch_is_the_pinned_torch():
    torch_in_image = dockerfile_arg("PYTORCH_TAG").split("-")[0]
    assert torch_in_image == REQUIREMENTS["torch"]


def test_detectron2_is_pinned_to_a_commit():
    assert re.fullmatch(r"[0-9a-f]{40}", dockerfile_arg("DETECTRON2_COMMIT"))
    assert "detectron2.git@${DETECTRON2_COMMIT}" in DOCKERFILE


@pytest.mark.parametrize("package", ["snakemake", "snakemake-executor-plugin-kubernetes",
                                     "snakemake-storage-plugin-s3", "boto3"])
def test_pods_find_snakemake_and_its_plugins_in_the_image(package):
    assert package in REQUIREMENTS


def test_this_environment_is_the_pinned_one():
    """CI installs requirements.txt; the image installs it too: both run these versions."""
    differing = {name: (pinned, metadata.version(name)) for name, pinned in REQUIREMENTS.items()
                 if metadata.version(name).split("+")[0] != pinned}
    assert differing == {}


def test_the_executor_plugin_is_packaged_for_discovery():
    from setuptools import find_packages

    packages = find_packages(str(ROOT / "src"))
    assert "snakemake_executor_plugin_kubernetes_pods" in packages
    assert "nadir" in packages
