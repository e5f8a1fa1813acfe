"""verify on a large image folder: peak memory of the whole process tree (workers included), time and images/s.

    python benchmarks/verify_memory.py OUT_DIR [--images 20000] [--workers 0 2] [--jpeg 500x375]

Writes OUT_DIR/images-N once: scikit-learn's bundled digits (all 1,797 real images, shifted by
-1, 0 or +1 pixel for the copies past the first) as an ImageFolder of N PNGs (8x8), or with
--jpeg WxH as JPEGs upscaled to an ImageNet-like size, where decoding is the costly part, and a seeded
(untrained) compact digits model with its FP32 export and a CPU INT8 build (memory and speed
do not depend on the weights). Then, for each --workers value, runs `dropcov-deploy verify`
on the folder in a fresh process and samples the resident memory of it and every process it
started (/proc, every 50 ms). Prints a table and writes
OUT_DIR/verify_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (Linux /proc), 0 for a process gone."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def run_sampled(command: list[str], interval: float = 0.05) -> tuple[int, int, float, str]:
    """Run `command`; its return code, the peak RSS of its process tree, wall seconds, stderr."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_bytes(process.pid))
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    done.set()
    sampler.join()
    return process.returncode, peak, time.perf_counter() - started, stderr


def write_folder(root: Path, count: int, jpeg: tuple[int, int] | None = None) -> Path:
    import numpy as np
    from PIL import Image

    from dropcov_deploy.data import digits

    folder = root / (f"images-{count}" if jpeg is None else f"jpeg-{jpeg[0]}x{jpeg[1]}-{count}")
    if folder.exists():
        return folder
    splits = digits.load_splits()
    images = np.concatenate([splits[k].images for k in ("train", "val", "test")])
    labels = np.concatenate([splits[k].labels for k in ("train", "val", "test")])
    staging = root / f".images-{count}.partial"
    for c in range(10):
        (staging / str(c)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.roll(images[i % len(images)], i // len(images) % 3 - 1, axis=1)
        picture = Image.fromarray(image, mode="L")
        if jpeg is None:
            picture.save(staging / str(labels[i % len(images)]) / f"{i:05d}.png")
        else:
            picture.resize(jpeg, Image.Resampling.BILINEAR).convert("RGB").save(staging / str(labels[i % len(images)]) / f"{i:05d}.jpg", quality=90)
    staging.rename(folder)
    return folder


def prepare_model(root: Path) -> tuple[Path, Path, Path]:
    import torch

    from dropcov_deploy.build import BuildOptions, build
    from dropcov_deploy.data.digits import CLASS_NAMES, PREPROCESSING
    from dropcov_deploy.export import export_onnx
    from dropcov_deploy.models import create_model, save_checkpoint

    checkpoint, fp32, int8 = root / "model.pt", root / "model.onnx", root / "model.int8.cpu.onnx"
    if not int8.exists():
        torch.manual_seed(0)
        model = create_model("resnet10_compact_ACD", num_classes=10).eval()
        save_checkpoint(checkpoint, model, arch="resnet10_compact_ACD", input_size=32, class_names=CLASS_NAMES, preprocessing=PREPROCESSING)
        export_onnx(checkpoint, fp32)
        build(fp32, BuildOptions(precision="int8", dataset="digits:train", calib_size=64, cache_dir=root / "cache", out=int8))
    return checkpoint, fp32, int8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--jpeg", help="WxH: JPEG images of this size instead of 8x8 PNGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in args.jpeg.lower().split("x")) if args.jpeg else None
    folder = write_folder(args.out, args.images, size)  # type: ignore[arg-type]
    checkpoint, fp32, int8 = prepare_model(args.out)
    rows = []
    for workers in args.workers:
        command = [sys.executable, "-m", "dropcov_deploy", "verify", "-c", str(checkpoint), str(fp32), str(int8), "--data", str(folder)]
        code, peak, seconds, stderr = run_sampled([*command, "--workers", str(workers)])
        if code not in (0, 1):
            raise SystemExit(stderr[-2000:])
        rows.append(
            {
                "workers": workers,
                "images": args.images,
                "folder": folder.name,
                "peak_tree_rss_gib": peak / 2**30,
                "seconds": seconds,
                "images_per_s": args.images / seconds,
            }
        )
        print(
            f"{folder.name}, workers {workers}: peak {peak / 2**30:.2f} GiB (process tree), {seconds:.1f} s, {args.images / seconds:.0f} images/s (PyTorch + 2 ONNX models)"
        )
    (args.out / "verify_memory.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
