"""TensorRT: build an engine from a precision-baked ONNX, prove its precision, run it.

The one place TensorRT is used, in five modules:
  availability  import_tensorrt (10.3 or later), tensorrt_status, Builder/Runtime creation, and
                whether a plan fits this machine (plan_mismatch: error or warning)
  profile       BatchProfile, the optimization-profile / accepted-shape decisions, builder options
  inspector     the engine inspector's JSON: layer precisions (N/A refused), the required-precision check
  log           the one process-wide TensorRT logger, its per-operation sinks (capture), and the
                ONNX parser's errors as one line
  builder       build_engine: parse, profile, build, deserialize, check, save with its manifest
  runner        TensorRTRunner (the Runner and DeviceTimed protocols, CUDA graphs) and open_runner
`import tensorrt` happens inside functions only, so importing this package loads neither
TensorRT, torch nor CUDA (the CLI's --help and machines without a GPU stay fast and working).

Works with TensorRT 10.x (10.3 on JetPack 6 and later) and 11.x. Both build strongly
typed networks: precision comes from the tensor types in the ONNX (FP16 from a mixed
precision graph, INT8 from Q/DQ pairs), never from builder flags, which 11.x removed.
On 10.x the network is created with NetworkDefinitionCreationFlag.STRONGLY_TYPED; on
11.x `create_network()` takes no flag (the flag is deprecated and ignored there). The
engine inspector's JSON differs too (10.x: "Bindings" and a combined "Format/Datatype";
11.x: "I/O Tensors" and separate "Format"/"Datatype"); `layer_precisions` reads both.

Naming convention relied on by tests/test_tensorrt_api.py, which collects every
TensorRT attribute this package's modules use and checks it against the real bindings'
names: the module is always bound to `trt`, and TensorRT objects live in variables (or
`self._<name>` attributes) named builder, network, config, parser, optimization_profile,
cache, runtime, engine, context, inspector, error or tensor (not `logger`: our logger
subclass's own attributes are ours).
"""

from __future__ import annotations

from dropcov_deploy.backends.tensorrt.availability import PlanFit, import_tensorrt, plan_mismatch, tensorrt_major, tensorrt_status, tensorrt_version_problem
from dropcov_deploy.backends.tensorrt.builder import build_engine
from dropcov_deploy.backends.tensorrt.errors import OnnxParseError, TensorRTBuildError, TensorRTError, TensorRTRunError
from dropcov_deploy.backends.tensorrt.inspector import layer_precisions
from dropcov_deploy.backends.tensorrt.profile import BatchProfile, check_builder_options
from dropcov_deploy.backends.tensorrt.runner import BACKEND, TensorRTRunner, open_runner
from dropcov_deploy.manifest import TENSORRT_ENGINE

KIND = TENSORRT_ENGINE

__all__ = [
    "BACKEND",
    "KIND",
    "BatchProfile",
    "OnnxParseError",
    "PlanFit",
    "TensorRTBuildError",
    "TensorRTError",
    "TensorRTRunError",
    "TensorRTRunner",
    "build_engine",
    "check_builder_options",
    "import_tensorrt",
    "layer_precisions",
    "open_runner",
    "plan_mismatch",
    "tensorrt_major",
    "tensorrt_status",
    "tensorrt_version_problem",
]
