"""Every decision the TensorRT backend makes, on plain data, on any machine.

The backend reads values from TensorRT (input shapes, parser errors, inspector JSON,
the recorded and current versions) and hands them to plain functions that decide:
which optimization profile to add, whether a plan fits this machine, whether a build
shows its precision, what a parser failure says, what an input may be. These tests feed
those functions the data TensorRT would hand them and check the outcome; nothing here
imitates TensorRT. Builds and runs on a real GPU are in tests/test_tensorrt_gpu.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dropcov_deploy.backends import TARGETS, DeviceTimed, Runner, load_hook
from dropcov_deploy.backends import cuda as cuda_module
from dropcov_deploy.backends.tensorrt import (
    BatchProfile,
    OnnxParseError,
    TensorRTBuildError,
    TensorRTError,
    TensorRTRunError,
    TensorRTRunner,
    build_engine,
    open_runner,
    plan_mismatch,
    tensorrt_status,
)
from dropcov_deploy.backends.tensorrt.builder import timing_cache_data, timing_cache_rejected
from dropcov_deploy.backends.tensorrt.inspector import data_type_from_text, layer_precision, missing_precision
from dropcov_deploy.backends.tensorrt.log import format_parser_error, logged_reason, one_line, parser_failure_message
from dropcov_deploy.backends.tensorrt.profile import accepted_range, input_shape_problem, profile_shapes
from dropcov_deploy.backends.tensorrt.runner import feed_problem
from dropcov_deploy.errors import BackendFailed, BackendUnavailable, InputError
from dropcov_deploy.manifest import Manifest
from dropcov_deploy.precision import Precision

ONNX = Path("models/r18.fp16.trt.onnx")
PLAN = Path("models/r18.fp16.plan")


def one_line_error(caught: pytest.ExceptionInfo) -> str:
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2
    return message


# ---------------------------------------------------------------------------------------
# Does a plan belong to this machine?
# ---------------------------------------------------------------------------------------
def test_a_plan_from_this_tensorrt_and_gpu_fits():
    recorded = {"tensorrt_version": "10.3.0", "gpu_name": "Orin"}
    assert plan_mismatch(PLAN, recorded, "10.3.0", "Orin") is None


@pytest.mark.parametrize("version, gpu", [("10.16.1", "Orin"), ("10.3.0", "NVIDIA H100"), ("11.4.0", "NVIDIA L4")])
def test_a_plan_from_another_tensorrt_or_gpu_is_refused_naming_both(version, gpu):
    recorded = Manifest.from_dict({"kind": "tensorrt-engine", "precision": "fp16", "tensorrt_version": "10.3.0", "gpu_name": "Orin"})
    message = plan_mismatch(PLAN, recorded, version, gpu)
    assert message == (
        f"{PLAN}: built with TensorRT 10.3.0 on Orin, but this machine has TensorRT {version} on {gpu}; "
        "rebuild the engine here (plans are tied to both)"
    )


def test_a_plan_without_a_manifest_is_not_checked():
    assert plan_mismatch(PLAN, None, "10.3.0", "Orin") is None


def test_a_manifest_that_records_no_versions_does_not_pass_for_a_match():
    message = plan_mismatch(PLAN, {"kind": "tensorrt-engine"}, "10.3.0", "Orin")
    assert message and "built with TensorRT None on None" in message


# ---------------------------------------------------------------------------------------
# The optimization profile
# ---------------------------------------------------------------------------------------
def test_a_dynamic_batch_gets_the_batch_range_and_keeps_the_image_axes():
    shapes = profile_shapes(ONNX, {"input": [-1, 3, 64, 64]}, BatchProfile(1, 8, 32))
    assert shapes == {"input": ([1, 3, 64, 64], [8, 3, 64, 64], [32, 3, 64, 64])}


def test_a_fixed_batch_equal_to_batch_needs_no_profile():
    assert profile_shapes(ONNX, {"input": [4, 3, 64, 64]}, BatchProfile(4, 4, 4)) == {}


@pytest.mark.parametrize("batch", [BatchProfile(1, 8, 32), BatchProfile(1, 1, 1), BatchProfile(4, 4, 8)])
def test_a_fixed_batch_refuses_another_batch(batch):
    with pytest.raises(InputError) as caught:
        profile_shapes(ONNX, {"input": [4, 3, 64, 64]}, batch)
    assert one_line_error(caught) == (
        f"{ONNX}: input 'input' has a fixed batch of 4, so --batch {batch} cannot apply; "
        "use --batch 4 or export with a dynamic batch"
    )


@pytest.mark.parametrize("dims", [[-1, 3, -1, -1], [-1, -1, 64, 64], [1, 3, 64, -1]])
def test_dynamic_axes_besides_the_batch_are_refused(dims):
    with pytest.raises(InputError) as caught:
        profile_shapes(ONNX, {"input": dims}, BatchProfile(1, 8, 32))
    assert one_line_error(caught) == (
        f"{ONNX}: input 'input' has dynamic axes besides the batch ({dims}); export with a fixed image size"
    )


def test_a_scalar_input_has_no_batch_axis():
    with pytest.raises(InputError) as caught:
        profile_shapes(ONNX, {"input": [-1, 3, 8, 8], "temperature": []}, BatchProfile(1, 8, 32))
    assert one_line_error(caught) == f"{ONNX}: input 'temperature' is a scalar; there is no batch axis to profile"


def test_several_inputs_each_get_their_own_shapes_and_fixed_ones_are_left_out():
    inputs = {"image": [-1, 3, 8, 8], "mask": [-1, 8, 8], "bias": [2, 10]}
    with pytest.raises(InputError, match="'bias' has a fixed batch of 2"):
        profile_shapes(ONNX, inputs, BatchProfile(1, 2, 4))
    shapes = profile_shapes(ONNX, inputs, BatchProfile(2, 2, 2))
    assert shapes == {"image": ([2, 3, 8, 8],) * 3, "mask": ([2, 8, 8],) * 3}
    assert list(shapes) == ["image", "mask"]


def test_what_an_engine_input_accepts():
    fixed = [-1, 3, 64, 64]
    profile = [[1, 3, 64, 64], [8, 3, 64, 64], [32, 3, 64, 64]]
    assert accepted_range(fixed, profile) == tuple(profile)
    assert accepted_range([4, 3, 64, 64], None) == ([4, 3, 64, 64],) * 3  # no profile: the one built shape
    assert accepted_range(fixed, [[1, 3, 64], [8, 3, 64], [32, 3, 64]]) == (fixed,) * 3  # wrong rank: not a range
    assert accepted_range(fixed, [[-1, 3, 64, 64]] * 3) == (fixed,) * 3  # unset profile
    assert accepted_range(fixed, profile[:2]) == (fixed,) * 3


def test_an_input_outside_the_engines_range_is_refused():
    low, high = [1, 3, 64, 64], [8, 3, 64, 64]
    assert input_shape_problem(PLAN, "input", (1, 3, 64, 64), low, high) is None
    assert input_shape_problem(PLAN, "input", (8, 3, 64, 64), low, high) is None
    assert input_shape_problem(PLAN, "input", (9, 3, 64, 64), low, high) == (
        f"{PLAN}: input 'input' has shape [9, 3, 64, 64]; the engine accepts [1, 3, 64, 64] to [8, 3, 64, 64]"
    )
    assert input_shape_problem(PLAN, "input", (2, 3, 32, 32), low, high)
    assert input_shape_problem(PLAN, "input", (3, 64, 64), low, high)  # a missing batch axis


def test_feeds_must_name_exactly_the_engines_inputs():
    assert feed_problem(PLAN, ["input"], ["input"]) is None
    assert feed_problem(PLAN, ["input"], ["images"]) == f"{PLAN}: inputs ['images'] do not match the engine's ['input']"
    assert feed_problem(PLAN, ["input"], ["input", "extra"])
    assert feed_problem(PLAN, ["a", "b"], ["b"])


# ---------------------------------------------------------------------------------------
# Does a build show its precision?
# ---------------------------------------------------------------------------------------
def _layers(**counts: int) -> dict:
    return {"total": sum(counts.values()), "precisions": dict(sorted(counts.items())), "inspector_schema": "11.x (I/O Tensors)"}


@pytest.mark.parametrize("precision", ["fp32", Precision.FP32])
def test_an_fp32_build_needs_nothing(precision):
    assert missing_precision(precision, _layers(FP32=10), PLAN) is None
    assert missing_precision(precision, _layers(), PLAN) is None


def test_an_fp16_build_needs_fp16_layers():
    assert missing_precision("fp16", _layers(FP16=40, FP32=3), PLAN) is None
    assert missing_precision(Precision.FP16, _layers(FP32=43), PLAN) == (
        f"{PLAN}: the fp16 build has no FP16 layers (layers: FP32 43); TensorRT builds strongly typed networks, so "
        "precision must come from the ONNX: build from a mixed-precision (AutoCast) ONNX; no engine written"
    )


def test_an_int8_build_needs_int8_layers_fp16_alone_is_not_enough():
    assert missing_precision("int8", _layers(INT8=20, FP16=10, FP32=3), PLAN) is None
    message = missing_precision("int8", _layers(FP16=30, FP32=3), PLAN)
    assert message and "the int8 build has no INT8 layers (layers: FP16 30, FP32 3)" in message
    assert "build from a Q/DQ (explicitly quantized) ONNX" in message
    assert "(layers: none)" in missing_precision("int8", _layers(), PLAN)


def test_the_precision_check_refuses_an_unknown_precision():
    with pytest.raises(InputError, match="precision 'bf16'"):
        missing_precision("bf16", _layers(BF16=3), PLAN)


@pytest.mark.parametrize(
    "text, expected",
    [("Half", "FP16"), ("Float", "FP32"), ("Int8", "INT8"), ("BFloat16", "BF16"), ("Row major linear FP32 format", "FP32"),
     ("Thirty-two wide channel vectorized row major Int8 format", "INT8"), ("kFP8", "FP8"), ("Int32", "INT32"),
     ("Channel major FP16 format where channel % 8 == 0", "FP16"), ("something else", None), (None, None)],
)
def test_inspector_type_words(text, expected):
    assert data_type_from_text(text) == expected


def test_a_layer_computes_in_its_narrowest_type():
    qdq_conv = {"Inputs": [{"Format/Datatype": "Row major Int8 format"}], "Outputs": [{"Format/Datatype": "Row major linear FP32 format"}]}
    gather = {"Inputs": [{"Datatype": "Float"}, {"Datatype": "Int32"}], "Outputs": [{"Datatype": "Float"}]}
    assert layer_precision(qdq_conv) == "INT8"
    assert layer_precision(gather) == "FP32"
    assert layer_precision({"Inputs": [], "Outputs": []}) == "UNKNOWN"
    assert layer_precision("conv1 (no DETAILED verbosity)") == "UNKNOWN"


# ---------------------------------------------------------------------------------------
# Parser errors and TensorRT's log, as one line
# ---------------------------------------------------------------------------------------
NODE_ERROR = {
    "code": "UNSUPPORTED_NODE", "desc": "No importer registered for op: NotAnOperator", "node": 3, "node_name": "first_bad",
    "node_operator": "NotAnOperator", "func": "parseNode", "file": "/src/onnx-tensorrt/ModelImporter.cpp", "line": 212,
}
MODEL_ERROR = {"code": "INVALID_GRAPH", "desc": "bad graph", "node": -1, "node_name": "", "node_operator": "", "func": "", "file": "", "line": 0}


def test_a_node_error_names_the_node_its_operator_and_where_the_parser_raised_it():
    assert format_parser_error(NODE_ERROR) == (
        "node 3 'first_bad' (NotAnOperator): UNSUPPORTED_NODE: No importer registered for op: NotAnOperator "
        "[parseNode at ModelImporter.cpp:212]"
    )


def test_a_model_error_and_a_local_function_stack():
    assert format_parser_error(MODEL_ERROR) == "model: INVALID_GRAPH: bad graph"
    nested = {**NODE_ERROR, "local_function_stack": ["Block", "Attention"], "func": ""}
    assert format_parser_error(nested) == (
        "node 3 'first_bad' (NotAnOperator) in function Block/Attention: UNSUPPORTED_NODE: No importer registered for op: NotAnOperator"
    )


def test_a_parse_failure_lists_every_error_numbered_in_one_line():
    message = parser_failure_message(ONNX, [NODE_ERROR, MODEL_ERROR], ["logged, not used"])
    assert message.startswith(f"{ONNX}: TensorRT's ONNX parser failed with 2 error(s): [1] node 3 'first_bad'")
    assert "; [2] model: INVALID_GRAPH: bad graph" in message and "logged" not in message and "\n" not in message


def test_a_parse_failure_without_parser_errors_says_what_tensorrt_logged():
    assert parser_failure_message(ONNX, [], ["Assertion failed: x", "y"]) == (
        f"{ONNX}: TensorRT's ONNX parser failed with 0 error(s): Assertion failed: x; y"
    )
    assert parser_failure_message(ONNX, [], []).endswith("failed with 0 error(s): no details")


def test_parse_errors_keep_their_records():
    error = OnnxParseError("one line", [NODE_ERROR])
    assert error.errors == [NODE_ERROR] and error.exit_code == 2 and isinstance(error, TensorRTBuildError)


def test_logged_reasons_are_the_last_few_errors_in_one_line():
    assert one_line("Error Code 4:\n  Internal   Error\t(x)") == "Error Code 4: Internal Error (x)"
    assert one_line(None) == ""
    errors = [f"e{i}" for i in range(8)]
    assert logged_reason(errors, "no error was logged") == "e3; e4; e5; e6; e7"
    assert logged_reason(errors, "no details", last=3) == "e5; e6; e7"
    assert logged_reason([], "no error was logged") == "no error was logged"


# ---------------------------------------------------------------------------------------
# The timing cache
# ---------------------------------------------------------------------------------------
def test_the_timing_cache_seed(tmp_path):
    assert timing_cache_data(None) == b""
    assert timing_cache_data(tmp_path / "missing.cache") == b""
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"\x01\x02cache")
    assert timing_cache_data(cache) == b"\x01\x02cache"
    assert timing_cache_rejected(cache) == f"timing cache {cache} does not match this TensorRT/GPU; starting a new one"


# ---------------------------------------------------------------------------------------
# Argument checks before TensorRT, exit codes, hooks
# ---------------------------------------------------------------------------------------
def _build(tmp_path: Path, **overrides):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not read before TensorRT")
    options = dict(precision=Precision.FP16, profile=BatchProfile(1, 8, 32), workspace_gib=None, timing_cache=None,
                   onnx_sha256="0" * 64, calibration_sha256=None, log=lambda _: None)
    options.update(overrides)
    return build_engine(onnx, tmp_path / "m.plan", **options)


def test_build_takes_a_precision_name_or_member_and_refuses_others(tmp_path):
    for precision in ("FP16", "int8", Precision.INT8):  # accepted: the next check (the workspace) speaks
        with pytest.raises(InputError, match="^workspace 0 GiB: must be positive$"):
            _build(tmp_path, precision=precision, workspace_gib=0)
    with pytest.raises(InputError) as caught:
        _build(tmp_path, precision="bf16")
    assert one_line_error(caught) == "precision 'bf16': use one of fp32, fp16, int8"


def test_build_refuses_a_model_manifest_without_an_input_before_touching_tensorrt(tmp_path):
    with pytest.raises(InputError, match="no dropcov-deploy manifest"):
        _build(tmp_path, model_manifest=Manifest(arch="resnet18_ACD"))
    assert not (tmp_path / "m.plan").exists()


def test_build_refuses_an_unwritable_timing_cache_before_building(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        _build(tmp_path, timing_cache=tmp_path / "no" / "timing.cache")


def test_open_runner_refuses_a_missing_plan_before_touching_tensorrt(tmp_path):
    with pytest.raises(InputError) as caught:
        open_runner(tmp_path / "missing.plan", "cuda", 4)
    assert one_line_error(caught) == f"{tmp_path / 'missing.plan'}: no such engine file"


def test_run_time_failures_exit_4_refusals_exit_2_missing_backends_exit_3():
    run_error = TensorRTRunError("execute_async_v3 failed")
    assert run_error.exit_code == 4 and isinstance(run_error, TensorRTError) and isinstance(run_error, BackendFailed)
    assert TensorRTBuildError("x").exit_code == 2 and TensorRTError("x").exit_code == 2
    assert issubclass(cuda_module.CudaError, BackendFailed) and not issubclass(cuda_module.CudaError, BackendUnavailable)
    assert not hasattr(cuda_module.CudaRuntime, "device_count")


def test_a_failing_cuda_call_is_a_backend_failure_with_cudas_own_words():
    try:
        cuda = cuda_module.CudaRuntime(next(iter(cuda_module.candidate_libraries())))
    except (OSError, AttributeError, StopIteration):
        pytest.skip("no libcudart on this machine")
    with pytest.raises(cuda_module.CudaError) as caught:
        cuda.check(2, "cudaMalloc(1024 bytes)")  # cudaErrorMemoryAllocation, described by the real libcudart
    assert caught.value.exit_code == 4
    assert str(caught.value).startswith("CUDA cudaMalloc(1024 bytes) failed: ") and str(caught.value).endswith("(error 2)")
    assert cuda.error_string(2) in str(caught.value) and cuda.error_string(2)


@pytest.mark.parametrize(
    "status, count, driver, expected",
    [
        (0, 1, "12.4", None),
        (0, 0, "12.4", "no CUDA GPU (cudaGetDeviceCount found no device)"),
        (cuda_module.ERROR_NO_DEVICE, 0, "12.4", "no CUDA GPU (cudaGetDeviceCount found no device)"),
        (cuda_module.ERROR_INSUFFICIENT_DRIVER, 0, "none", "no CUDA GPU (no NVIDIA driver found)"),
        (cuda_module.ERROR_INSUFFICIENT_DRIVER, 0, "12.2", "no CUDA GPU (driver too old; libcudart 13.0, driver 12.2)"),
    ],
)
def test_why_there_is_no_usable_gpu(status, count, driver, expected):
    assert cuda_module.gpu_problem(status, count, driver, "driver too old", "13.0") == expected


def test_the_cuda_runtime_is_found_or_missing_in_one_line():
    try:
        cuda = cuda_module.runtime()
    except BackendUnavailable as exc:
        assert exc.exit_code == 3 and "\n" not in str(exc)
        assert str(exc).startswith(("no CUDA GPU", "libcudart not found")), str(exc)
    else:
        assert cuda.device_name().strip()


def test_the_status_hook_and_the_runner_hook_are_ours():
    target = TARGETS["tensorrt"]
    assert load_hook(target.status) is tensorrt_status
    assert load_hook(target.runner) is open_runner


def test_the_runner_offers_the_runner_and_device_timed_protocols():
    assert TensorRTRunner.backend == "tensorrt" and TensorRTRunner.device_timing == "GPU compute (CUDA events)"
    assert TensorRTRunner.timing and "\n" not in TensorRTRunner.timing
    members = {name for protocol in (Runner, DeviceTimed) for name in dir(protocol) if not name.startswith("_")}
    methods = {"infer", "input_shapes", "close", "device_timer"}
    assert methods <= members and all(callable(getattr(TensorRTRunner, name)) for name in methods)
    assert callable(TensorRTRunner.__enter__) and callable(TensorRTRunner.__exit__)


def test_a_bad_workspace_fails_build_before_the_precision_onnx_is_written(tmp_path):
    """--workspace is checked with --batch, before calibration or any file: not only inside the engine builder."""
    from dropcov_deploy.build import BuildOptions, build
    from dropcov_deploy.manifest import Manifest

    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read: the options fail first")
    Manifest.from_dict({"input": {"name": "input", "shape": ["batch", 3, 32, 32]}}).write(tmp_path / "m.onnx.json")
    for workspace in (-1.0, 0.0):
        with pytest.raises(InputError, match=f"workspace {workspace} GiB: must be positive"):
            build(model, BuildOptions(precision="fp32", backend="tensorrt", workspace_gib=workspace, cache_dir=tmp_path / "cache"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]
