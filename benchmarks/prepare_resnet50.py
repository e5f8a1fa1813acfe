"""Prepare the README's benchmark artifacts: resnet50_ACD (d=128, 1000 classes, 224).

    python benchmarks/prepare_resnet50.py OUT_DIR
    dropcov-deploy bench OUT_DIR/r50.onnx OUT_DIR/r50.int8.cpu.onnx OUT_DIR/r50.int8.cpu.ort.onnx \
        -c OUT_DIR/r50.pt --batch-sizes 1,8 --report bench.json --plot bench.png

Speed does not depend on the weights' values, so the checkpoint has fresh seeded weights
(no ImageNet weights can be downloaded here); INT8 calibration uses the real images in
calibration/digits, preprocessed as the manifest says. The timing itself is `bench`'s.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-r50")
    out.mkdir(parents=True, exist_ok=True)

    import torch

    from dropcov_deploy.build import BuildOptions, build
    from dropcov_deploy.export import export_onnx
    from dropcov_deploy.models import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("resnet50_ACD", num_classes=1000, dim=128).eval()
    checkpoint = save_checkpoint(out / "r50.pt", model, arch="resnet50_ACD", input_size=224)
    onnx_path = export_onnx(checkpoint, out / "r50.onnx", image_size=224).path
    built = build(
        onnx_path, BuildOptions(precision="int8", calib=REPO / "calibration" / "digits", calib_size=64, backend="onnxruntime", out=out / "r50.int8.cpu.onnx")
    )
    print(f"wrote {checkpoint}, {onnx_path}, {built.precision_onnx}, {built.ort_optimized}")


if __name__ == "__main__":
    main()
