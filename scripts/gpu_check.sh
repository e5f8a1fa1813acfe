#!/usr/bin/env bash
# GPU check (issue 12, items 5 and 6): one prepared run on a machine with an NVIDIA GPU.
#
#   OUT=/some/folder bash scripts/gpu_check.sh            # on the GPU machine, from the repository root
#   OUT=/tmp/gpu-check-dry bash scripts/gpu_check.sh --cpu-dry-run   # here: the same steps on the CPU, no install
#   bash scripts/gpu_check.sh --download-wheels            # where pip reaches PyPI: fill .whl/ (see below)
#
# What it does, each step timed, its exit status kept, and a failed step never stopping the next:
#   1. installs the wheels in .whl/ (if any) into /tmp/site, then this project
#      (`python3 -m pip install --no-deps --no-build-isolation -e .`, no index);
#   2. reports the GPU (nvidia-smi; torch's device name and capability), whether TensorRT imports,
#      whether onnxruntime has CUDAExecutionProvider and whether ModelOpt imports: environment.json;
#   3. `pytest -m tensorrt tests/` (skips are fine) and tests/test_bench_timing.py;
#   4. resnet50_ACD (d = 128, 1000 classes, 224), randomly initialised (speed does not depend on the
#      weights): our checkpoint -> `dropcov-deploy export` -> FP32 ONNX -> `build --precision fp16`
#      (AutoCast; --calib calibration/digits: the bundled real digit images, resized by the
#      manifest's preprocessing) and, where TensorRT imports, an FP16 engine;
#   5. `dropcov-deploy bench --device cuda` of the FP32 and FP16 ONNX with --checkpoint (PyTorch CUDA
#      eager, the baseline) at batch 1, 8, 32: bench_r50_cuda.json. If this onnxruntime has no CUDA
#      provider, bench says so under "skipped" (and environment.json says it) and still times PyTorch.
#      With an engine: bench_r50_engine.json, and with --cuda-graph bench_r50_engine_graph.json.
#   summary.json lists every step's exit status and seconds; gpu_check.log has all output.
# Everything goes under ${OUT:-gpu-check-out} (at most 8 small files, as the device tool returns
# them); models and caches go under ${WORK:-/tmp/gpu-check-work}. Budget: about 8 minutes on an H200
# (SCRIPT_BUDGET_S, default 450 s: a step that would start later is skipped and says so).
#
# Target image (the lent nvidia-h200): python3 = Python 3.12 (/opt/torch/.venv), torch 2.11 cu130,
# onnx, onnxruntime 1.30 (the CPU build only), onnxscript, timm, typer, rich, pillow, scikit-learn,
# matplotlib, pytest, pytest-timeout; no internet. What to carry, as wheels in .whl/ (found with
# `pip download --no-deps` on 2026-11-29; the device tool carries at most 64 MiB per call):
#   needed for the FP16 build (AutoCast), about 6 MiB together, all on PyPI:
#     nvidia-modelopt==0.47.0 (py3-none-any, 2.1 MiB)    lief==1.0.0 (cp312-abi3-manylinux_2_28, 3.5 MiB)
#     onnx-graphsurgeon==0.6.1 (py2.py3-none-any)         onnxslim==0.1.98 (py3-none-any)
#     (the rest of modelopt's needs are on the image: torch, numpy, cupy-cuda13x, ml-dtypes, onnx-ir,
#     nvidia-ml-py, sympy; modelopt asks for onnx~=1.21 and the image has 1.23: its import is checked
#     in environment.json, and a failed FP16 build is a recorded step, not the end of the run)
#   cannot be carried:
#     onnxruntime-gpu for CUDA 13 / Python 3.12: on PyPI (1.31.1 links libcudart.so.13, libcublas.so.13;
#       1.24.x still links CUDA 12), but the wheel is 256 MiB: over the 64 MiB a call can carry. Without
#       it ONNX Runtime stays CPU-only there and bench lists the ONNX models under "skipped".
#     tensorrt-cu13 11.4.0.106: PyPI holds only a 15-18 kB sdist (and a 0.0.0a0 placeholder wheel) that
#       downloads tensorrt-cu13-libs from pypi.nvidia.com at install time, which neither this machine's
#       pip nor the GPU machine reaches; tensorrt-cu13-bindings (cp312, 1.3 MiB) alone is useless
#       without the libs (about 1 GiB). The TensorRT steps skip with the import error.
# `--download-wheels` runs the pip download below into .whl/. Keep .whl/ out of git and carry it:
#   echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"     # then run(..., carry=[".whl"])
set -uo pipefail

MODE=gpu
case "${1:-}" in
"") ;;
--cpu-dry-run) MODE=cpu ;;
--download-wheels) MODE=wheels ;;
-h | --help)
    sed -n '2,46p' "$0"
    exit 0
    ;;
*)
    echo "usage: $0 [--cpu-dry-run | --download-wheels]" >&2
    exit 2
    ;;
esac

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
WHEELS="nvidia-modelopt==0.47.0 lief==1.0.0 onnx-graphsurgeon==0.6.1 onnxslim==0.1.98"

if [ "$MODE" = wheels ]; then
    platforms=""
    for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        platforms="$platforms --platform $tag"
    done
    # shellcheck disable=SC2086  # word splitting of the lists is intended
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms -d .whl $WHEELS || exit 1
    ls -la .whl
    echo "now: echo /.whl/ >> \"\$(git rev-parse --git-common-dir)/info/exclude\", and carry .whl"
    exit 0
fi

OUT=${OUT:-gpu-check-out}
WORK=${WORK:-/tmp/gpu-check-work}
mkdir -p "$OUT" "$WORK" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
BUDGET=${SCRIPT_BUDGET_S:-450}
STEPS="$WORK/steps.tsv"
: >"$STEPS"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 DROPCOV_CACHE="$WORK/cache" MPLBACKEND=Agg
STARTED=$SECONDS
if [ "$MODE" = cpu ]; then
    DEVICE=cpu BATCHES=1,2 MAX_TIME=0.5 WARMUP=0.2
else
    DEVICE=cuda BATCHES=1,8,32 MAX_TIME=2 WARMUP=0.5
fi
echo "gpu_check: mode $MODE, repo $REPO, OUT $OUT, WORK $WORK, python $(command -v "$PY")"

# step NAME LIMIT_S COMMAND...: run it (at most LIMIT_S seconds), record its exit status and time.
step() {
    local name=$1 limit=$2 started rc
    shift 2
    if ((SECONDS - STARTED + 10 > BUDGET)); then
        echo "=== $name: skipped (the ${BUDGET} s budget is spent)"
        printf '%s\t%s\t%s\n' "$name" "skipped: budget" 0 >>"$STEPS"
        return 1
    fi
    echo "=== $name"
    started=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    ((rc == 124)) && echo "=== $name: timed out after ${limit} s"
    echo "=== $name: exit $rc in $((SECONDS - started)) s"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - started))" >>"$STEPS"
    return "$rc"
}

skip() { # skip NAME WHY
    echo "=== $1: skipped ($2)"
    printf '%s\t%s\t%s\n' "$1" "skipped: $2" 0 >>"$STEPS"
}

DD=("$PY" -m dropcov_deploy)

# 1. wheels and the project ---------------------------------------------------------------
if [ "$MODE" = gpu ] && compgen -G ".whl/*.whl" >/dev/null; then
    step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
    skip wheels "$([ "$MODE" = gpu ] && echo 'no .whl folder' || echo 'CPU dry run')"
fi
if [ "$MODE" = gpu ]; then
    step install 180 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
else
    skip install "CPU dry run: uses the project as installed for $PY"
fi

# 2. the environment ------------------------------------------------------------------------
step environment 90 "$PY" - "$OUT/environment.json" <<'EOF'
"""What this machine offers: GPU, torch, TensorRT, ONNX Runtime providers, ModelOpt."""
import json
import platform
import subprocess
import sys

report = {"python": sys.version.split()[0], "platform": platform.platform()}
try:
    query = "name,driver_version,memory.total,compute_cap"
    done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    report["nvidia_smi"] = {"query": query, "rc": done.returncode, "rows": done.stdout.strip().splitlines(), "stderr": done.stderr.strip()[-300:]}
except (OSError, subprocess.SubprocessError) as exc:
    report["nvidia_smi"] = {"error": f"{type(exc).__name__}: {exc}"}
try:
    import torch

    report["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        report["torch"].update(device=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())))
except Exception as exc:
    report["torch"] = {"error": f"{type(exc).__name__}: {exc}"}
try:
    import tensorrt

    report["tensorrt"] = {"importable": True, "version": tensorrt.__version__}
except Exception as exc:
    report["tensorrt"] = {"importable": False, "error": f"{type(exc).__name__}: {exc}"}
try:
    from dropcov_deploy.backends.tensorrt import tensorrt_status

    report["tensorrt"]["dropcov_status"] = tensorrt_status()[1]
except Exception as exc:
    report["tensorrt"]["dropcov_status"] = f"{type(exc).__name__}: {exc}"
try:
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    report["onnxruntime"] = {"version": onnxruntime.__version__, "providers": providers, "cuda_provider": "CUDAExecutionProvider" in providers}
    if "CUDAExecutionProvider" not in providers:
        report["onnxruntime"]["note"] = "CPU-only onnxruntime: bench times no ONNX model on the GPU (they are listed under 'skipped')"
except Exception as exc:
    report["onnxruntime"] = {"error": f"{type(exc).__name__}: {exc}", "cuda_provider": False}
try:
    import modelopt.onnx  # noqa: F401
    from modelopt.onnx.autocast import convert_to_mixed_precision  # noqa: F401

    import modelopt

    report["modelopt"] = {"importable": True, "version": modelopt.__version__}
except Exception as exc:
    report["modelopt"] = {"importable": False, "error": f"{type(exc).__name__}: {exc}"}
try:
    import dropcov_deploy

    report["dropcov_deploy"] = {"version": dropcov_deploy.__version__, "path": dropcov_deploy.__file__}
except Exception as exc:
    report["dropcov_deploy"] = {"error": f"{type(exc).__name__}: {exc}"}
with open(sys.argv[1], "w") as handle:
    json.dump(report, handle, indent=2)
print(json.dumps(report, indent=2))
EOF

# 3. tests --------------------------------------------------------------------------------
step pytest_tensorrt 200 "$PY" -m pytest -q -p no:cacheprovider -rs -m tensorrt tests/
step pytest_bench 200 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_bench_timing.py

# 4. resnet50_ACD: checkpoint, FP32 ONNX, FP16 ONNX, engine ------------------------------------
R50="$WORK/r50"
step checkpoint 120 "$PY" - "$R50.pt" <<'EOF'
"""resnet50_ACD, d = 128, 1000 classes, 224, seeded random weights, in our checkpoint format."""
import sys

import torch

from dropcov_deploy.models import create_model, save_checkpoint

torch.manual_seed(0)
model = create_model("resnet50_ACD", num_classes=1000, dim=128).eval()
print(save_checkpoint(sys.argv[1], model, arch="resnet50_ACD", input_size=224))
EOF
step export 200 "${DD[@]}" export --checkpoint "$R50.pt" --image-size 224 --out "$R50.onnx"
step build_fp16 240 "${DD[@]}" build "$R50.onnx" --precision fp16 --calib calibration/digits --calib-size 32 --out "$R50.fp16.cpu.onnx"
if "$PY" -c "import tensorrt" 2>/dev/null; then
    step engine_fp16 300 "${DD[@]}" build "$R50.onnx" --precision fp16 --backend tensorrt --calib calibration/digits --calib-size 32 \
        --batch 1:8:32 --timing-cache "$WORK/timing.cache" --out "$R50.fp16.trt.onnx"
else
    skip engine_fp16 "tensorrt cannot be imported"
fi

# 5. bench ----------------------------------------------------------------------------------
ONNX_MODELS=()
for model in "$R50.onnx" "$R50.fp16.cpu.onnx"; do
    [ -f "$model" ] && ONNX_MODELS+=("$model")
done
BENCH=("${DD[@]}" bench --checkpoint "$R50.pt" --device "$DEVICE" --batch-sizes "$BATCHES" --warmup "$WARMUP" --max-time "$MAX_TIME")
if [ -f "$R50.pt" ] && ((${#ONNX_MODELS[@]})); then
    step bench_r50 300 "${BENCH[@]}" "${ONNX_MODELS[@]}" --report "$OUT/bench_r50_$DEVICE.json"
else
    skip bench_r50 "no checkpoint or ONNX model (see the steps above)"
fi
PLAN="$R50.fp16.trt.plan"
if [ -f "$PLAN" ]; then
    step bench_engine 200 "${BENCH[@]}" "$PLAN" --report "$OUT/bench_r50_engine.json"
    step bench_engine_graph 200 "${BENCH[@]}" "$PLAN" --cuda-graph --report "$OUT/bench_r50_engine_graph.json"
else
    skip bench_engine "no engine"
fi

# summary -----------------------------------------------------------------------------------
"$PY" - "$STEPS" "$OUT/summary.json" "$MODE" "$((SECONDS - STARTED))" <<'EOF'
"""summary.json: every step's status and seconds, and the headline figures of each bench report."""
import json
import sys
from pathlib import Path

steps_file, summary_file, mode, seconds = sys.argv[1:5]
steps = []
for line in Path(steps_file).read_text().splitlines():
    name, status, took = line.split("\t")
    steps.append({"step": name, "status": int(status) if status.lstrip("-").isdigit() else status, "seconds": int(took)})
summary = {"mode": mode, "seconds": int(seconds), "steps": steps, "bench": {}}
for report in sorted(Path(summary_file).parent.glob("bench_*.json")):
    data = json.loads(report.read_text())
    rows = [
        {
            "backend": r["backend"],
            "artifact": Path(r["artifact"]).name,
            "batch": r["batch_size"],
            "end_to_end_p50_ms": r["latency_ms"]["p50"],
            "end_to_end_p99_ms": r["latency_ms"]["p99"],
            "iterations": r["iterations"],
            "speedup_vs_torch": r["speedup_vs_torch"],
            "device_p50_ms": (r.get("device_ms") or {}).get("p50"),
            "device_speedup_vs_torch": r.get("device_speedup_vs_torch"),
            "device_unavailable": r.get("device_unavailable"),
        }
        for r in data["results"]
    ]
    summary["bench"][report.name] = {"machine": data["machine"], "rows": rows, "skipped": data.get("skipped", []), "artifacts": data.get("artifacts", [])}
Path(summary_file).write_text(json.dumps(summary, indent=2))
failed = [s["step"] for s in steps if isinstance(s["status"], int) and s["status"] != 0]
print(f"gpu_check: {mode} run in {seconds} s; steps: " + ", ".join(f"{s['step']} {s['status']}" for s in steps))
print("failed: " + (", ".join(failed) if failed else "none"))
sys.exit(1 if failed else 0)
EOF
status=$?
echo "gpu_check: outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
