#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): the CUDA smoke test, the speed benchmark in fp32, bf16 and compiled form
# against diffusers, 300 steps of the gpu preset on synthetic data, a 2-process NCCL run when 2+ GPUs exist, and the
# bf16 matmul peak, in at most 8 minutes; writes one JSON (default gpu_check.json). Then regenerate the section of
# docs/performance.md with: python benchmarks/gpu_report.py gpu_check.json
#
#   scripts/gpu_check.sh [--json OUT.json] [--budget SECONDS]
#   scripts/gpu_check.sh --dry-run      # CPU, tiny sizes, about a minute: every stage's code path, the same JSON
#
# Python: $PYTHON if set, else the repository's .venv when it has one, else python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
exec "$py" "$root/scripts/gpu_check.py" "$@"
