#!/usr/bin/env bash
# The one prepared GPU check (issue 12): on a CUDA machine with torch and triton installed and
# nothing to fetch, run the CUDA tests (kernels, training, CUDA-graph capture), the library step
# against a hand-written loop (eager and graph-captured), the kernel report (GPU time, kernels per
# call, memory floor) and the pytest benchmarks, writing every figure under one folder.  The
# timeouts add up to under 8 minutes.
#
#   bash bench/gpu.sh [OUT_DIR]        (default: $OUT, else gpu-results)
#
# Works without installing: it copies asvae_kit/ with plugins/ and kernels/ placed inside it (as
# setuptools' package-dir installs them) plus tests/ and bench/ into a scratch folder and runs there.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(mkdir -p "${1:-${OUT:-gpu-results}}" && cd "${1:-${OUT:-gpu-results}}" && pwd)"
work="$(mktemp -d)"
cp -r "$repo/asvae_kit" "$work/asvae_kit" && cp -r "$repo/plugins" "$work/asvae_kit/plugins" && cp -r "$repo/kernels" "$work/asvae_kit/kernels"
cp -r "$repo/tests" "$repo/bench" "$repo/pyproject.toml" "$work/"
cd "$work" && export PYTHONPATH="$work" PYTHONDONTWRITEBYTECODE=1
unset TRITON_INTERPRET

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  lscpu | grep -E 'Model name|^CPU\(s\)'; } > "$out/machine.txt" 2>&1
cat "$out/machine.txt"

echo "== tests on CUDA"
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_step_graph.py tests/test_kernels.py tests/test_kernels_triton.py \
  tests/test_training.py > "$out/tests_cuda.txt" 2>&1
echo "exit $?" >> "$out/tests_cuda.txt"; tail -3 "$out/tests_cuda.txt"

echo "== library step vs hand-written loop (eager, and each captured in a CUDA graph)"
timeout 90 python bench/step_compare.py --device cuda --steps 200 --repeats 3 --out "$out/step_compare.json" 2>&1 | tail -1

echo "== the same with the library step in bf16, and compiled (eager only)"
timeout 45 python bench/step_compare.py --device cuda --steps 200 --repeats 2 --precision bf16 --out "$out/step_compare_bf16.json" 2>&1 | tail -1
timeout 60 python bench/step_compare.py --device cuda --steps 200 --repeats 2 --compile --no-graphs --out "$out/step_compare_compile.json" 2>&1 | tail -1

echo "== fused_disc_head: wall and GPU time, kernels per call, memory floor"
timeout 60 python bench/kernel_report.py --out "$out/kernel_report.json" > "$out/kernel_report.txt" 2>&1
echo "exit $?" >> "$out/kernel_report.txt"; tail -16 "$out/kernel_report.txt"

echo "== pytest benchmarks: kernel at N=4096 and call overhead, training step"
timeout 40 python -m pytest -q -p no:cacheprovider bench/test_fused_disc_head.py --benchmark-only -k "N4096-D1024 or overhead" \
  --benchmark-json="$out/bench_kernel.json" --benchmark-columns=min,median,rounds > "$out/bench_kernel.txt" 2>&1
echo "exit $?" >> "$out/bench_kernel.txt"; tail -25 "$out/bench_kernel.txt"
timeout 30 python -m pytest -q -p no:cacheprovider bench/test_train_step.py --benchmark-only \
  --benchmark-json="$out/bench_step.json" --benchmark-columns=min,median,rounds > "$out/bench_step.txt" 2>&1
echo "exit $?" >> "$out/bench_step.txt"; tail -8 "$out/bench_step.txt"
rm -rf "$work"
