#!/usr/bin/env bash
# The one prepared GPU check (issue 12): on a CUDA machine with torch and triton installed and
# nothing to fetch, run the CUDA tests (kernels, training, CUDA-graph capture), the library step
# against a hand-written loop (eager and graph-captured; mlp-asvae at batch 64, dcgan-asvae at
# batch 256 in float32 and bf16), the kernel report (GPU time, kernels per
# call, memory floor) and the pytest benchmarks, writing every figure under one folder, in under
# 8 minutes.
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

# Every section gets its own timeout, cut to what is left of one 460-second budget (sections run in
# order of importance: a slow machine loses the last ones, never the whole run).
budget=460 started=$(date +%s)
deadline=$(( started + budget ))
within() {  # within SECONDS COMMAND...: run COMMAND for at most SECONDS, or what is left of the budget
  local left=$(( deadline - $(date +%s) )) limit="$1"; shift
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then echo "skipped: the 8-minute budget of bench/gpu.sh is spent"; return 124; fi
  timeout -k 10 "$limit" "$@"  # a CUDA process deaf to SIGTERM is killed 10 s later
}

echo "== tests on CUDA"
within 150 python -m pytest -q -p no:cacheprovider tests/test_step_graph.py tests/test_kernels.py tests/test_kernels_triton.py \
  tests/test_training.py > "$out/tests_cuda.txt" 2>&1
echo "exit $?" >> "$out/tests_cuda.txt"; tail -3 "$out/tests_cuda.txt"

echo "== library step vs hand-written loop (eager, and each captured in a CUDA graph): mlp-asvae, batch 64"
within 90 python bench/step_compare.py --device cuda --steps 200 --repeats 3 --out "$out/step_compare.json" 2>&1 | tail -1

echo "== the same for dcgan-asvae at batch 256, float32 and bf16"
within 75 python bench/step_compare.py --device cuda --preset dcgan-asvae --batch 256 --steps 100 --repeats 3 \
  --out "$out/step_compare_dcgan.json" 2>&1 | tail -1

echo "== fused_disc_head: wall and GPU time, kernels per call, memory floor"
within 60 python bench/kernel_report.py --out "$out/kernel_report.json" > "$out/kernel_report.txt" 2>&1
echo "exit $?" >> "$out/kernel_report.txt"; tail -16 "$out/kernel_report.txt"

within 60 python bench/step_compare.py --device cuda --preset dcgan-asvae --batch 256 --steps 100 --repeats 2 --precision bf16 \
  --out "$out/step_compare_dcgan_bf16.json" 2>&1 | tail -1

echo "== mlp-asvae with the library step in bf16, and compiled (eager only)"
within 45 python bench/step_compare.py --device cuda --steps 200 --repeats 2 --precision bf16 --out "$out/step_compare_bf16.json" 2>&1 | tail -1
within 60 python bench/step_compare.py --device cuda --steps 200 --repeats 2 --compile --no-graphs --out "$out/step_compare_compile.json" 2>&1 | tail -1

echo "== pytest benchmarks: kernel at N=4096 and call overhead, training step"
within 40 python -m pytest -q -p no:cacheprovider bench/test_fused_disc_head.py --benchmark-only -k "N4096-D1024 or overhead" \
  --benchmark-json="$out/bench_kernel.json" --benchmark-columns=min,median,rounds > "$out/bench_kernel.txt" 2>&1
echo "exit $?" >> "$out/bench_kernel.txt"; tail -25 "$out/bench_kernel.txt"
within 30 python -m pytest -q -p no:cacheprovider bench/test_train_step.py --benchmark-only \
  --benchmark-json="$out/bench_step.json" --benchmark-columns=min,median,rounds > "$out/bench_step.txt" 2>&1
echo "exit $?" >> "$out/bench_step.txt"; tail -8 "$out/bench_step.txt"
echo "== bench/gpu.sh took $(( $(date +%s) - started )) s of its ${budget} s budget"
rm -rf "$work"
