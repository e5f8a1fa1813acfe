"""Prepare the README's benchmark artifacts: resnet50_ACD (d=128, 1000 classes, 224).

    python benchmarks/prepare_resnet50.py OUT_DIR
    cd OUT_DIR && dropcov-deploy bench r50.onnx r50.fp32.cpu.ort.onnx r50.int8.onnxruntime.onnx \
        r50.int8.onnxruntime.ort.onnx r50.int8.cpu.onnx -c r50.pt --runtime onnxruntime,openvino \
        --baseline both --batch-sizes 1,8 --max-time 10 --report bench.json --plot bench.png

Speed does not depend on the weights' values, so the checkpoint has fresh seeded weights
(no ImageNet weights can be downloaded here); INT8 calibration uses the real images in
calibration/digits, preprocessed as the manifest says. Builds: FP32 (for ONNX Runtime's
optimized graph), INT8 with the runtime and Q/DQ form chosen by measurement (gates on the
calibration images), and INT8 fixed to ONNX Runtime (`--runtime onnxruntime`). The timing
itself is `bench`'s.
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
    calibration = REPO / "calibration" / "digits"
    fp32 = build(onnx_path, BuildOptions(precision="fp32", out=out / "r50.fp32.cpu.onnx"))  # for its ORT-optimized graph
    chosen = build(onnx_path, BuildOptions(precision="int8", calib=calibration, calib_size=64, out=out / "r50.int8.cpu.onnx"))
    ort = build(onnx_path, BuildOptions(precision="int8", calib=calibration, calib_size=64, runtime="onnxruntime", out=out / "r50.int8.onnxruntime.onnx"))
    for result in (chosen, ort):
        print(f"wrote {result.precision_onnx}: {result.manifest.extra['runtime']['why']}")
    print(f"wrote {checkpoint}, {onnx_path}, {fp32.ort_optimized}, {ort.ort_optimized}")


if __name__ == "__main__":
    main()
