"""`python -m dropcov_deploy.precision.ort_quantize REQUEST.json`: ONNX Runtime's quantizer in a fresh process.

ModelOpt's TensorRT INT8 patches onnxruntime.quantization's calibrators in its process
(on first use, not on import); a CPU-target build in the same process after a
TensorRT-target one must not run with those patches, so `quantizers.quantize_cpu` runs
this entry point instead. REQUEST.json holds `ort_quantize_static`'s arguments by name,
the calibration set as "data" (an .npy of preprocessed inputs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    from dropcov_deploy.precision.calibration import CalibrationSet
    from dropcov_deploy.precision.quantizers import ort_quantize_static

    request = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    data = Path(request.pop("data"))
    ort_quantize_static(calibration=CalibrationSet(data, np.load(data), None, ""), **request)
    return 0


if __name__ == "__main__":
    sys.exit(main())
