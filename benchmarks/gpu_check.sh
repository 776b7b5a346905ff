#!/usr/bin/env bash
# One-call check of the engine on a machine with an NVIDIA GPU and no network.
#
#   benchmarks/gpu_check.sh SKELETON.gguf [LLAMA_CPP_PYTHON_SRC.tar.gz] [WHEELS_DIR]
#
# SKELETON.gguf: `python benchmarks/random_gguf.py skeleton MODEL.gguf skel.gguf` (metadata and
# shapes, ~2 MB); the check builds random weights of that shape there. Builds llama-cpp-python with
# CUDA from the source archive when the installed one cannot offload, with the flags that keep the
# build short (see README, "GPU"). Then: the CPU's AMX flags and extra-buffer speeds (GPU hidden),
# and the engine on the GPU against the CPU (generation, rubric digits, log-probs).
set -uo pipefail
skel=$1; src=${2:-}; wheels=${3:-}
here=$(cd "$(dirname "$0")/.." && pwd)
work=${TMPDIR:-/tmp}/humpback-gpu-check; mkdir -p "$work/site"
export PYTHONPATH="$work/site:$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HUMPBACK_HOME="$work/home"
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

step "machine"
grep -m1 "model name" /proc/cpuinfo; nproc
echo "AMX flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep '^amx' | tr '\n' ' ')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1

if [ -n "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$wheels"/*.whl || exit 1
fi
if ! python3 -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" 2>/dev/null; then
  [ -n "$src" ] || { echo "llama-cpp-python has no GPU offload and no source archive was given"; exit 1; }
  step "build llama-cpp-python with CUDA"
  tar xzf "$src" -C "$work"
  # FA kernels off and no tools/tests/examples: 235 s instead of >330 s on 16 cores (README, "GPU")
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-native} -DGGML_CUDA_FA=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip install -q --no-build-isolation --no-deps --no-compile \
    --target "$work/site" "$work"/llama_cpp_python-* > "$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
fi

step "random model of the skeleton's shape"
python3 "$here/benchmarks/random_gguf.py" build "$skel" "$work/model.gguf" || exit 1

step "load: plain llama_cpp.Llama vs Engine, one difference at a time (a crash seen before)"
python3 "$here/benchmarks/load_bisect.py" "$work/model.gguf" --gpu-layers -1

step "CPU only (GPU hidden): extra buffers on vs off, per tensor type"
CUDA_VISIBLE_DEVICES= python3 "$here/benchmarks/bench_extra_buffers.py" --gguf "$work/model.gguf" --repeats 3

step "CPU only: engine with extra_buffers=on vs the default"
CUDA_VISIBLE_DEVICES= python3 "$here/benchmarks/engine_check.py" --gguf "$work/model.q8_0.gguf" --gpu-layers 0 --extra-buffers on

step "engine on the GPU (all layers) vs CPU, Q8_0 and BF16"
rc=0
for t in q8_0 bf16; do
  python3 "$here/benchmarks/engine_check.py" --gguf "$work/model.$t.gguf" --gpu-layers -1 || rc=1
done
step "engine on the GPU with extra_buffers=on (the crash reported before: is it the CPU's AMX path?)"
python3 "$here/benchmarks/engine_check.py" --gguf "$work/model.q8_0.gguf" --gpu-layers -1 --extra-buffers on || rc=1
step "done"
exit $rc
