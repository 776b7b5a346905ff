#!/usr/bin/env bash
# The checks for a machine with an NVIDIA GPU (and, on the machine we can borrow, an Intel Xeon
# with AMX) and no network, in one call with a short lease.
#
#   benchmarks/gpu_check.sh SKELETON.gguf LLAMA WHEELS_DIR PART...
#
# SKELETON.gguf: `python benchmarks/random_gguf.py skeleton MODEL.gguf skel.gguf` (metadata and
#   shapes, ~2 MB); the check builds random weights of that shape there (no weights can be fetched).
# LLAMA: an installed llama_cpp package folder built elsewhere (e.g. a CUDA build made on a CPU
#   machine with the toolkit, see docs/hardware.md, "GPU"), or a llama-cpp-python source archive, built here
#   CPU-only natively (the `cpu` part needs no CUDA) or with CUDA when LLAMA_CUDA=1.
#   The H200 check (docs/hardware.md, "GPU") carried a build made on a 2-core CPU machine (~70 min) with
#   CUDA 13.0's nvcc and pip's nvidia-cublas headers/libraries merged into one CUDAToolkit_ROOT:
#   CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_FA=OFF
#   -DGGML_CUDA_NO_VMM=ON -DGGML_NATIVE=OFF -DGGML_AVX512=ON (+ VBMI, VNNI, BF16, AMX_TILE/INT8/BF16)
#   -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" (NO_VMM: no libcuda
#   to link against there); at run time it finds libcudart/libcublas in the machine's torch. Such a
#   build runs only on CPUs with those instruction sets. The machine's own compiler links libstdc++
#   statically, which llama.cpp does not survive (docs/hardware.md): do not build there.
# WHEELS_DIR: wheels of the Python packages the machine lacks (installed with --no-deps).
# PART: cpu (AMX host: load ladder, tests/test_cpu.py), buffers (extra buffers on/off per type), gpu (engine on CUDA vs
#   CPU), train (LoRA training on CUDA vs TRL's defaults), adapter (a LoRA trained on CUDA, applied by
#   llama.cpp on the GPU vs the CPU), bench (generation vs transformers on the GPU), loop (a shortened
#   quickstart on the GPU, stage times), nf4 (QLoRA through transformers + bitsandbytes on CUDA), unsloth
#   (Unsloth's import and training). LLAMA "-": no llama.cpp (the training parts only).
# Each step has its own time limit, so a hang or crash costs that step only. Output: stdout, and the
# run's status under $OUT when set.
set -uo pipefail
skel=$1; llama=$2; wheels=$3; shift 3
here=$(cd "$(dirname "$0")/.." && pwd)
work=${TMPDIR:-/tmp}/humpback-gpu-check; mkdir -p "$work/site"
export PYTHONPATH="$work/site:$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HUMPBACK_HOME="$work/home"
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
# run LIMIT_S CMD...: a step that may hang or crash without ending the check
run() { local t=$1; shift; timeout -k 5 "$t" "$@"; local rc=$?; [ $rc -eq 124 ] && echo "(step timed out after ${t}s)"; return $rc; }
m=$work/model

step "machine"
grep -m1 "model name" /proc/cpuinfo; echo "cpus: $(nproc)"
echo "AMX flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep '^amx' | tr '\n' ' ')"
echo "AVX-512 flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -c '^avx512')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
echo "stack limit: $(ulimit -s); locale: LANG=${LANG:-} LC_ALL=${LC_ALL:-}; debuggers: $(command -v gdb cuda-gdb | tr '\n' ' ')"
python3 -c "import sys, torch, transformers, peft; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"

step "setup: wheels and llama-cpp-python"
ls "$wheels"/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$wheels"/*.whl 2>&1 | grep -v WARNING
# the CUDA runtime and cuBLAS of the machine's own torch (a carried CUDA build links against them)
for d in $(python3 -c "import site; print(' '.join(site.getsitepackages()))"); do
  for lib in "$d"/nvidia/*/lib "$d"/nvidia/*/*/lib; do [ -d "$lib" ] && LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"; done
done
export LD_LIBRARY_PATH
if [ "$llama" = - ]; then
  echo "no llama.cpp: training parts only"
elif [ -d "$llama" ]; then
  cp -r "$llama" "$work/site/llama_cpp"
else
  tar xzf "$llama" -C "$work"
  flags="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
  # FA kernels off and no tools/tests/examples: 235 s instead of >330 s on 16 cores (docs/hardware.md, "GPU")
  [ "${LLAMA_CUDA:-0}" = 1 ] && flags="$flags -DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90-real -DGGML_CUDA_FA=OFF"
  CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip install -q --no-build-isolation --no-deps \
    --no-compile --target "$work/site" "$work"/llama_cpp_python-* > "$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
fi
[ "$llama" = - ] || python3 -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'GPU offload:', llama_cpp.llama_supports_gpu_offload())" || exit 1

step "random model of the skeleton's shape, and its tensor types"
python3 "$here/benchmarks/random_gguf.py" build "$skel" "$m.gguf" || exit 1
[ "$llama" = - ] || python3 - "$m.gguf" <<'EOF' || exit 1
import sys
from pathlib import Path
import llama_cpp
from humpback_lite.runtime import quantize_gguf, runtime_gguf
src = Path(sys.argv[1])
for t in ("q8_0", "bf16"):
    runtime_gguf(src, t)
quantize_gguf(src, src.with_name(src.stem + ".q4_1.gguf"), llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1)
print(" ".join(sorted(p.name for p in src.parent.glob("model*.gguf"))))
EOF

part_cpu() {
  step "cpu: load ladder, Q4_1 on the CPU only (GPU hidden): the first rung that dies is the difference"
  CUDA_VISIBLE_DEVICES= run 150 python3 "$here/benchmarks/load_bisect.py" "$m.q4_1.gguf" --backtrace
  step "cpu: tests/test_cpu.py on the random Q4_1 model (GPU hidden)"
  CUDA_VISIBLE_DEVICES= HUMPBACK_TEST_GGUF="$m.q4_1.gguf" run 120 python3 -m pytest -q -p no:cacheprovider \
    "$here/tests/test_cpu.py" -rA 2>&1 | tail -15
}

part_buffers() {
  step "buffers: extra buffers on vs off per tensor type, fresh processes (GPU hidden)"
  CUDA_VISIBLE_DEVICES= run 150 python3 "$here/benchmarks/bench_extra_buffers.py" --gguf "$m.q4_1.gguf" --repeats 2
}

part_gpu() {
  step "gpu: load ladder with every layer on the GPU"
  run 120 python3 "$here/benchmarks/load_bisect.py" "$m.q8_0.gguf" --gpu-layers -1 --backtrace
  for t in q8_0 bf16 q4_1; do
    step "gpu: engine with every layer on the GPU vs the CPU, $t"
    run 120 python3 "$here/benchmarks/engine_check.py" --gguf "$m.$t.gguf" --gpu-layers -1
  done
}

part_train() {
  step "train: our trainer vs TRL's defaults on CUDA (transformers + peft, bf16 LoRA)"
  run 200 python3 "$here/benchmarks/bench_train.py" --model "$m.gguf" --steps 12 --repeats 2
  if python3 -c "import unsloth" 2>/dev/null; then echo "unsloth importable"; else echo "unsloth: not installed here"; fi
}

part_adapter() {
  step "adapter: humpback train on CUDA, then the adapter applied by llama.cpp on the GPU vs the CPU"
  run 200 python3 -m humpback_lite train "$here/humpback_lite/data/seed.jsonl" -o "$work/adapter" \
    --model "$m.gguf" max_steps=20 quantize=none && \
  run 120 python3 "$here/benchmarks/engine_check.py" --gguf "$m.q8_0.gguf" --adapter "$work/adapter/adapter.gguf" --gpu-layers -1
}

# nf4 and unsloth: BNB_SITE / UNSLOTH_SITE are folders of unpacked packages (bitsandbytes with only
# the machine's CUDA library; Unsloth, unsloth_zoo and the packages they pin, e.g. trl<=1.15,
# datasets<5), carried apart because with the CUDA build of llama.cpp they exceed what one call carries.
# Made on the CPU machine: `pip download --no-deps --only-binary=:all: --python-version 3.12` of
# bitsandbytes, unsloth, unsloth_zoo and their missing pure dependencies (tyro, msgspec, cut_cross_entropy,
# sentencepiece, ...), unzipped; without bitsandbytes' other CUDA libraries, unsloth's studio/, diffusers,
# torchao and hf_transfer (not imported by a training) BNB_SITE is 4.5 MB and UNSLOTH_SITE 41 MB.
part_nf4() {
  step "nf4: QLoRA on CUDA (bitsandbytes nf4 + transformers + peft) vs the bf16 base, 20 steps each"
  for q in none nf4; do
    PYTHONPATH="${BNB_SITE:-}:$PYTHONPATH" run 200 python3 -m humpback_lite train "$here/humpback_lite/data/seed.jsonl" \
      -o "$work/adapter_$q" --model "$m.gguf" max_steps=20 quantize=$q backend=transformers 2>&1 | tail -3
  done
  [ -f "$work/site/llama_cpp/__init__.py" ] && \
    run 120 python3 "$here/benchmarks/engine_check.py" --gguf "$m.q8_0.gguf" --adapter "$work/adapter_nf4/adapter.gguf" --gpu-layers -1
}

part_unsloth() {
  step "unsloth: import, then humpback train backend=unsloth (bf16 LoRA, nf4 QLoRA), 20 steps each"
  local pp="${UNSLOTH_SITE:-}:${BNB_SITE:-}:$PYTHONPATH"
  ( cd "$work" && PYTHONPATH="$pp" run 150 python3 -c "import unsloth, unsloth_zoo, trl, datasets; print('unsloth', unsloth.__version__, 'zoo', unsloth_zoo.__version__, 'trl', trl.__version__, 'datasets', datasets.__version__)" 2>&1 | tail -25 ) || return 1
  for q in none nf4; do
    ( cd "$work" && PYTHONPATH="$pp" run 200 python3 -m humpback_lite train "$here/humpback_lite/data/seed.jsonl" \
      -o "$work/unsloth_$q" --model "$m.gguf" max_steps=20 quantize=$q backend=unsloth 2>&1 | tail -12 )
  done
  ls "$work"/unsloth_*/adapter.gguf 2>&1
}

part_bench() {
  step "bench: batched llama.cpp on the GPU vs transformers generate on the GPU"
  run 200 python3 "$here/benchmarks/bench_engine.py" --model "$m.gguf" --gpu-layers -1 --pairs "${BENCH_PAIRS:-64}" \
    --repeats "${BENCH_REPEATS:-2}" --parallel 16 --hf-batches 16,64
}

part_loop() {
  step "loop: the quickstart, one round, on the GPU (random weights: every generation runs to its cap)"
  run "${LOOP_LIMIT:-240}" python3 -m humpback_lite run "$here/recipes/quickstart.yaml" --out "$work/run" \
    model="$m.gguf" rounds=1 engine.n_gpu_layers=-1 2>&1 | tail -25
  python3 -m humpback_lite status "$work/run" 2>&1 | tail -40
  if [ -n "${OUT:-}" ]; then
    cp "$work/run/manifest.json" "$OUT/loop_manifest.json" 2>/dev/null
    for f in index.html README.md metrics.json; do find "$work/run" -name "$f" -size -2M -exec cp {} "$OUT/loop_$f" \; ; done
  fi
}

# toolchain: why a llama-cpp-python built on this machine crashes in its tokenizer (seen here:
# SIGSEGV in std::regex's locale code, a frame inside libggml.so). Starts a native CPU-only build
# of the source archive in the background now; the part, listed last, compares its libraries
# with the carried ones.
native=$work/native
if [[ " $* " == *" toolchain "* ]] && [ -n "${NATIVE_SRC:-}" ]; then
  ( mkdir -p "$native" && tar xzf "$NATIVE_SRC" -C "$native" && \
    CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL=8 nice python3 -m pip install -q --no-build-isolation --no-deps --no-compile \
      --target "$native/site" "$native"/llama_cpp_python-* > "$native/build.log" 2>&1; echo $? > "$native/rc" ) &
fi
part_toolchain() {
  step "toolchain: compiler and flags here"
  env | grep -E '^(CC|CXX|CFLAGS|CXXFLAGS|CPPFLAGS|LDFLAGS|CMAKE_[A-Z_]*|LD_[A-Z_]*)=' | cut -c1-300
  c++ --version | head -1; echo "c++ is $(readlink -f "$(command -v c++)")"
  echo 'int f() { return 0; }' > "$work/t.cpp"
  c++ -shared -fPIC "$work/t.cpp" -o "$work/t.so" -v 2>&1 | grep -E "collect2|/ld " | tr ' ' '\n' | grep -E "stdc|static|\.a$|specs" | sort -u | head
  [ -d "$native" ] && for _ in $(seq 1 60); do [ -f "$native/rc" ] && break; sleep 2; done
  echo "native build rc: $(cat "$native/rc" 2>/dev/null || echo 'not finished')"
  for d in "$native/site/llama_cpp/lib" "$work/site/llama_cpp/lib"; do
    [ -d "$d" ] || continue
    echo "-- $d"
    for f in "$d"/libggml.so.0 "$d"/libggml-base.so.0 "$d"/libllama.so; do
      [ -f "$f" ] || continue
      printf '%s: text %s bytes, libstdc++ symbols defined: %s (locale: %s), NEEDED: %s\n' "$(basename "$f")" \
        "$(size -A "$f" | awk '$1==".text"{print $2}')" \
        "$(nm -D --defined-only "$f" | c++filt | grep -c ' std::')" \
        "$(nm -D --defined-only "$f" | c++filt | grep -c 'std::locale')" \
        "$(readelf -d "$f" | grep NEEDED | grep -o '\[.*\]' | tr '\n' ' ')"
    done
  done
  [ -d "$native/site/llama_cpp" ] && PYTHONPATH="$native/site:$here" python3 "$here/benchmarks/load_bisect.py" "$m.q4_1.gguf" 2>&1 | head -3
  grep -iE "static|stdc\+\+" "$native/build.log" | head -5
}

rc=0
for p in "$@"; do "part_$p" || rc=1; done
step "done"
exit $rc
