"""The container image installs exactly the pinned runtime that CI tests (envs/requirements.txt)."""

from __future__ import annotations

import re
import sys
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
# The runtime stage: what pods run (the build stage before it only compiles wheels).
RUNTIME_STAGE = DOCKERFILE[DOCKERFILE.rindex("\nFROM "):]


def test_image_installs_the_env_files_and_no_other_pins():
    copied = re.search(r"^COPY ((?:envs/\S+ )+)(\S+)/$", RUNTIME_STAGE, re.M)
    assert copied, "the image must COPY the env files into one folder"
    assert copied.group(1).split() == [f"envs/{name}" for name in ENV_FILES]
    install = re.search(r"^RUN pip install --no-cache-dir ((?:-r \S+ ?(?:\\\n\s*)?)+)$",
                        RUNTIME_STAGE, re.M)
    assert install, "the image must pip install the copied env files"
    assert re.findall(r"-r (\S+)", install.group(1)) == [
        f"{copied.group(2)}/{name}" for name in ENV_FILES]
    # nothing pinned beside them: every version the image installs comes from those files
    assert not re.search(r"pip (?:install|wheel)[^\n]*==", DOCKERFILE)
    for name in ENV_FILES + ["yolox.txt", "cuda-build.txt", "cpu.txt"]:
        pins(ROOT / "envs" / name)  # each line pinned with ==


def test_torch_comes_from_the_pins_not_from_a_base_image():
    """No CUDA or PyTorch base image: torch and its CUDA 13.0 libraries come from PyPI at the
    pinned versions, on the Python CI runs."""
    assert "pytorch/pytorch" not in DOCKERFILE and "nvidia/cuda" not in DOCKERFILE
    base = dockerfile_arg("PYTHON_IMAGE")
    assert base.startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}-slim")
    assert "torch" in REQUIREMENTS


def test_cuda_build_packages_are_those_torch_was_built_with():
    """nvcc and headers for detectron2's operators match torch's CUDA (cuda-toolkit's pins)."""
    toolkit = next(r for r in metadata.requires("torch") if r.startswith("cuda-toolkit"))
    toolkit_version = re.search(r"==([\d.]+)", toolkit).group(1)
    assert metadata.version("cuda-toolkit").removesuffix(".0") == toolkit_version
    pinned_by_toolkit = {}
    for requirement in metadata.requires("cuda-toolkit"):
        match = re.match(r"([\w-]+)==([\d.]+)\.\*; .*extra == 'nvcc'", requirement)
        if match:
            pinned_by_toolkit[match.group(1)] = match.group(2)
    build = pins(ROOT / "envs" / "cuda-build.txt")
    assert {"nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvvm",
            "nvidia-cuda-runtime"} <= set(pinned_by_toolkit)
    for name, version in pinned_by_toolkit.items():
        assert build[name] == version, name


def test_detectron2_is_pinned_to_a_commit_and_built_for_the_clusters_cards():
    assert re.fullmatch(r"[0-9a-f]{40}", dockerfile_arg("DETECTRON2_COMMIT"))
    assert 'checkout --detach "${DETECTRON2_COMMIT}"' in DOCKERFILE
    arch_list = re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', DOCKERFILE).group(1)
    architectures = [a.removesuffix("+PTX") for a in arch_list.split(";")]
    # Turing (T4, RTX 20xx) to Hopper at least; CUDA 13 builds nothing older than 7.5
    assert {"7.5", "8.0", "8.6", "8.9", "9.0"} <= set(architectures)
    assert "check_detectron2_cuda_build.sh /src/detectron2" in DOCKERFILE


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


def test_uv_gets_the_indexes_pip_is_configured_with():
    """`make` installs with uv, which reads no pip configuration: pip's mirrors and wheel
    folders are handed over, each once, in pip's order; other settings are not."""
    sys.path.insert(0, str(ROOT / "envs"))
    from pip_indexes import uv_options

    listed = ("global.cert='/etc/ssl/certs/ca.crt'\n"
              ":env:.find-links='/opt/wheels'\n"
              "global.extra-index-url='file:///a/simple https://mirror/simple'\n"
              "global.find-links='/opt/wheels'\n"
              "user.index-url='https://proxy/pypi/simple'\n")
    assert uv_options(listed) == [
        "--find-links", "/opt/wheels",
        "--extra-index-url", "file:///a/simple", "--extra-index-url", "https://mirror/simple",
        "--index-url", "https://proxy/pypi/simple"]
    assert uv_options("") == []


# The `cpu` target: what pods without a GPU run.
CPU_STAGE = DOCKERFILE[DOCKERFILE.index(" AS cpu\n"):DOCKERFILE.index(" AS cuda\n")]


def dependency_closure(roots: list[str], skip: set[str]) -> set[str]:
    """The installed distributions `roots` need here, following their requirements (no
    extras), less `skip` and what only they need."""
    from packaging.requirements import Requirement

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    seen, todo = set(), [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in skip:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return seen


def test_the_cpu_target_installs_torch_without_cuda():
    """CPU pods pull an image without CUDA's libraries (about a quarter of the CUDA image:
    bench/image_size.py): torch's CPU build of the pinned versions, the runtime's other pins,
    nothing that depends on nvidia-* or cuda-* packages."""
    install = re.search(r"^RUN pip install --no-cache-dir (.*)$", CPU_STAGE, re.M).group(1)
    assert re.findall(r"-r /opt/nadir/(\S+)", install) == ["cpu.txt", "requirements.txt"]
    cpu = pins(ROOT / "envs" / "cpu.txt")
    assert cpu == {name: f"{REQUIREMENTS[name]}+cpu" for name in ("torch", "torchvision")}
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in \
        (ROOT / "envs" / "cpu.txt").read_text()
    cuda = re.compile(r"^(nvidia-|cuda-|triton$)")
    pinned = {*cpu, *REQUIREMENTS}
    assert not [name for name in pinned if cuda.match(name)]
    # everything else the runtime's pins pull in, as installed here (torch's CUDA build and its
    # nvidia-* wheels are what the +cpu build replaces)
    needed = dependency_closure([n for n in REQUIREMENTS if n not in cpu], skip=set(cpu))
    assert not sorted(name for name in needed if cuda.match(name))
    assert "NVIDIA" not in CPU_STAGE.split("\nENV ", 1)[1]


def test_no_image_shows_a_pod_every_gpu_of_its_node():
    """NVIDIA_VISIBLE_DEVICES is the device plugin's to set (to the GPUs a pod was given)."""
    environment = " ".join(re.findall(r"^ENV (.*(?:\\\n.*)*)$", DOCKERFILE, re.M))
    assert "NVIDIA_DRIVER_CAPABILITIES" in environment
    assert "NVIDIA_VISIBLE_DEVICES" not in environment


def test_the_profiles_image_tags_say_version_and_cuda():
    """`<version>-cu130` for the CUDA image (torch 2.14.1 needs CUDA 13.0's cuda-toolkit),
    `<version>-cpu` for the cpu target, in both profiles."""
    import yaml

    toolkit = next(r for r in metadata.requires("torch") if r.startswith("cuda-toolkit"))
    major, minor = re.search(r"==(\d+)\.(\d+)", toolkit).groups()
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(),
                        re.M).group(1)
    for profile in ("nautilus", "kubernetes"):
        config = yaml.safe_load((ROOT / "profiles" / profile / "config.yaml").read_text())
        assert config["container-image"].endswith(f":{version}-cu{major}{minor}"), profile
        assert config["kubernetes-pods-cpu-image"].endswith(f":{version}-cpu"), profile
