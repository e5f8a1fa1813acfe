"""`python -m dropcov_deploy.precision.ort_quantize REQUEST.json`: ONNX Runtime's quantizer in a fresh process.

ModelOpt patches onnxruntime.quantization's calibrators when it is imported (for its
TensorRT path); a CPU-target build in the same process after a TensorRT-target one must
not run with those patches, so `quantizers.quantize_cpu` runs this entry point instead.
REQUEST.json: {"named", "data" (.npy of preprocessed inputs), "out", "method", "exclude", "input", "activations", "op_types", "batch"}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from dropcov_deploy.precision.calibration import CalibrationSet
    from dropcov_deploy.precision.quantizers import ort_quantize_static

    args = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    calibration = CalibrationSet(Path(args["data"]), np.load(args["data"]), None, "")
    ort_quantize_static(
        Path(args["named"]),
        calibration,
        Path(args["out"]),
        args["method"],
        list(args["exclude"]),
        args["input"],
        args.get("activations", "u8s8"),
        args.get("op_types"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
