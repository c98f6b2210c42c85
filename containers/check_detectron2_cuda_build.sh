#!/usr/bin/env bash
# Compile detectron2's CUDA operators outside Docker, on a machine without a GPU or a CUDA
# install, with nvcc and the CUDA headers from PyPI: the step containers/Dockerfile runs in its
# build stage, checked without building the image.
#
#   containers/check_detectron2_cuda_build.sh SRC_DIR [WORK_DIR]
#
# SRC_DIR: a detectron2 checkout at the commit the Dockerfile pins (DETECTRON2_COMMIT).
# WORK_DIR (default: a new temporary directory): where the CUDA packages are installed and the
# wheel is written. PYTHON (default: python3) must have the pinned torch (envs/requirements.txt)
# installed, with its nvidia-* dependencies; MAX_JOBS (default 2) parallel compilations;
# TORCH_CUDA_ARCH_LIST (default: the Dockerfile's) the architectures.
#
# The CUDA packages (envs/cuda-build.txt) are the versions torch 2.14.1's wheel was built with;
# they go into WORK_DIR/cuda with `pip install --target`, never into the Python environment.
# Needs g++ (Debian 12's g++ 12 was used) and, for parallel compilation, ninja.
#
# On a small machine, in parts of one architecture each (every part compiles all operators for
# it; the CUDA packages are installed once in WORK_DIR, each part replaces WORK_DIR/wheels):
#   for arch in 7.5 8.0 8.6 8.9 9.0 10.0 12.0+PTX; do
#     TORCH_CUDA_ARCH_LIST=$arch nice -n 19 containers/check_detectron2_cuda_build.sh SRC WORK
#   done
set -euo pipefail

SRC_DIR=$(cd "${1:?usage: $0 SRC_DIR [WORK_DIR]}" && pwd)
WORK_DIR=${2:-$(mktemp -d)}
mkdir -p "$WORK_DIR"
WORK_DIR=$(cd "$WORK_DIR" && pwd)
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
ARCH_LIST=$(sed -n 's/^ENV .*TORCH_CUDA_ARCH_LIST="\([^"]*\)".*/\1/p' "$HERE/Dockerfile")
[ -n "$ARCH_LIST" ] || { echo "no TORCH_CUDA_ARCH_LIST in $HERE/Dockerfile" >&2; exit 1; }
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH_LIST}
export MAX_JOBS=${MAX_JOBS:-2} FORCE_CUDA=1
REQUIREMENTS=${CUDA_REQUIREMENTS:-$HERE/../envs/cuda-build.txt}

echo "torch: $("$PYTHON" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
echo "architectures: $TORCH_CUDA_ARCH_LIST; parallel jobs: $MAX_JOBS; work dir: $WORK_DIR"
if [ ! -x "$WORK_DIR/cuda/nvidia/cu13/bin/cuobjdump" ]; then
    "$PYTHON" -m pip install --quiet --no-deps --target "$WORK_DIR/cuda" -r "$REQUIREMENTS"
fi

# One CUDA_HOME as torch.utils.cpp_extension expects it: nvcc's package gives bin/, nvvm/, lib/
# and most headers; the cuBLAS/cuSPARSE/cuSOLVER headers ATen includes come with torch's own
# nvidia-* wheels (site-packages/nvidia/cu13/include), linked in file by file.
CUDA_HOME="$WORK_DIR/cuda_home"
rm -rf "$CUDA_HOME" && mkdir -p "$CUDA_HOME/include"
PACKAGED="$WORK_DIR/cuda/nvidia/cu13"
ln -s "$PACKAGED/bin" "$PACKAGED/nvvm" "$CUDA_HOME/"
# The libraries, plus the unversioned libcudart.so the linker's -lcudart looks for: the wheel
# ships only libcudart.so.13 (the extension loads that one, which torch's own wheels provide).
mkdir "$CUDA_HOME/lib64"
ln -s "$PACKAGED/lib/"* "$CUDA_HOME/lib64/"
ln -s "$(ls "$PACKAGED"/lib/libcudart.so.* | head -1)" "$CUDA_HOME/lib64/libcudart.so"
ln -s lib64 "$CUDA_HOME/lib"
TORCH_NVIDIA=$("$PYTHON" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
for include in "$PACKAGED/include" "$TORCH_NVIDIA/include"; do
    for entry in "$include"/*; do
        [ -e "$CUDA_HOME/include/$(basename "$entry")" ] || ln -s "$entry" "$CUDA_HOME/include/"
    done
done
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH"
nvcc --version | tail -2

cd "$SRC_DIR"
rm -rf "$WORK_DIR/wheels"
start=$(date +%s)
"$PYTHON" -m pip wheel --no-deps --no-build-isolation --wheel-dir "$WORK_DIR/wheels" .
end=$(date +%s)
wheel=$(ls "$WORK_DIR"/wheels/detectron2-*.whl)
# The extension must hold device code for every architecture asked for.
"$PYTHON" - "$wheel" <<'EOF'
import re, subprocess, sys, tempfile, zipfile
wheel = sys.argv[1]
with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
    [library] = [n for n in archive.namelist() if re.search(r"detectron2/_C.*\.so$", n)]
    path = archive.extract(library, tmp)
    listed = subprocess.run(["cuobjdump", "--list-elf", "--list-ptx", path],
                            capture_output=True, text=True, check=True).stdout
    found = sorted(set(re.findall(r"sm_(\d+)", listed)))
    print(f"{library}: device code for sm_{', sm_'.join(found)}")
EOF
echo "detectron2 CUDA build: $((end - start)) s -> $wheel"
