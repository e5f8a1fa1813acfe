"""Peak memory of a resnet50_ACD (d = 128, 224) CPU INT8 build against the number of calibration images.

    python benchmarks/calibration_memory.py OUT_DIR [64 256 1024]

Each build runs in its own process (`dropcov-deploy build ... --calib-size N`), timed, with its
peak resident memory read from the kernel (getrusage of the finished child). Calibration images
are scikit-learn's bundled digits (1,797 real 8x8 images, resized by the manifest's
preprocessing), written once as an image folder; the model has fresh seeded weights (memory does
not depend on their values). The FP32 export is made once by benchmarks/prepare_resnet50.py's
steps. Prints a table and writes OUT_DIR/calibration_memory.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def prepare(out: Path) -> tuple[Path, Path]:
    import torch

    from dropcov_deploy.data import digits
    from dropcov_deploy.export import export_onnx
    from dropcov_deploy.models import create_model, save_checkpoint

    images = out / "digits-all"
    if not images.exists():
        splits = digits.load_splits()
        for part in ("train", "val", "test"):  # every image once (calibration is part of train)
            digits.write_image_folder(splits[part], images / part)
    onnx_path = out / "r50.onnx"
    if not onnx_path.exists():
        torch.manual_seed(0)
        model = create_model("resnet50_ACD", num_classes=1000, dim=128).eval()
        checkpoint = save_checkpoint(out / "r50.pt", model, arch="resnet50_ACD", input_size=224)
        export_onnx(checkpoint, onnx_path, image_size=224)
    flat = out / "calib-pool"
    if not flat.exists():
        flat.mkdir()
        for index, png in enumerate(sorted(images.rglob("*.png"))):
            (flat / f"{index:05d}.png").write_bytes(png.read_bytes())
    return onnx_path, flat


def measure(onnx_path: Path, pool: Path, size: int, out: Path) -> dict[str, object]:
    """One build in a fresh wrapper process, which reports its only child's peak RSS (getrusage)."""
    build = [
        sys.executable,
        "-m",
        "dropcov_deploy",
        "build",
        str(onnx_path),
        "--precision",
        "int8",
        "--calib",
        str(pool),
        "--calib-size",
        str(size),
        "--fc",
        "int8",
        "--out",
        str(out / f"r50.int8.{size}.onnx"),
    ]
    wrapper = (
        "import json, resource, subprocess, sys; "
        f"r = subprocess.run({build!r}, capture_output=True, text=True); "
        "print(json.dumps({'exit': r.returncode, 'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "'error': (r.stderr.strip().splitlines() or [''])[-1] if r.returncode else ''}))"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, env={**os.environ, "DROPCOV_CACHE": str(out / f"cache-{size}")})
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "images": size,
        "exit": report["exit"],
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round(report["peak_kib"] / 2**20, 2),
        "error": report["error"],
    }


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-calib-memory")
    sizes = [int(s) for s in sys.argv[2:]] or [64, 256, 1024]
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, pool = prepare(out)
    rows = []
    for size in sizes:
        rows.append(measure(onnx_path, pool, size, out))
        print(json.dumps(rows[-1]), flush=True)
    (out / "calibration_memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
