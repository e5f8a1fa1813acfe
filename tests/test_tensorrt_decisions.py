"""Every decision the TensorRT backend makes, on plain data, on any machine.

The backend reads values from TensorRT (input shapes, parser errors, inspector JSON,
the recorded and current versions) and hands them to plain functions that decide:
which optimization profile to add, whether a plan fits this machine, whether a build
shows its precision, what a parser failure says, what an input may be. These tests feed
those functions the data TensorRT would hand them and check the outcome; nothing here
imitates TensorRT. Builds and runs on a real GPU are in tests/test_tensorrt_gpu.py.
"""

from __future__ import annotations

import ctypes
import inspect
import json
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
    layer_precisions,
    open_runner,
    plan_mismatch,
    tensorrt_status,
)
from dropcov_deploy.backends.tensorrt.availability import PlanFit, creation_failure_message, tensorrt_version_problem
from dropcov_deploy.backends.tensorrt.builder import timing_cache_data, timing_cache_failure, timing_cache_rejected
from dropcov_deploy.backends.tensorrt.inspector import data_type_from_text, inspector_problem, layer_precision, missing_precision, unresolved_tensors
from dropcov_deploy.backends.tensorrt.log import LogRouter, Sink, format_parser_error, logged_reason, one_line, parser_failure_message, split_errors
from dropcov_deploy.backends.tensorrt.profile import (
    accepted_range,
    check_builder_options,
    check_dla_core,
    input_shape_problem,
    inspection_shapes,
    profile_shapes,
)
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
BUILT = {"tensorrt_version": "10.3.0", "compute_capability": "8.7", "gpu_name": "Orin"}


def test_a_plan_from_this_tensorrt_and_compute_capability_on_the_same_gpu_fits():
    assert plan_mismatch(PLAN, BUILT, "10.3.0", "8.7", "Orin") == PlanFit(error=None, warning=None)


@pytest.mark.parametrize("version, capability, gpu", [("10.16.1", "8.7", "Orin"), ("10.3.0", "9.0", "NVIDIA H100"), ("11.4.0", "8.9", "NVIDIA L4")])
def test_a_plan_from_another_tensorrt_or_compute_capability_is_refused_naming_both(version, capability, gpu):
    recorded = Manifest.from_dict({"kind": "tensorrt-engine", "precision": "fp16", **BUILT})
    fit = plan_mismatch(PLAN, recorded, version, capability, gpu)
    assert fit.warning is None
    assert fit.error == (
        f"{PLAN}: built with TensorRT 10.3.0 for compute capability 8.7 (Orin), but this machine has TensorRT {version} and "
        f"compute capability {capability} ({gpu}); rebuild the engine here (plans are tied to the TensorRT version and the compute capability)"
    )


def test_the_same_compute_capability_under_another_gpu_name_only_warns():
    """An RTX 4090 plan on an L4 (both 8.9), an AGX Orin plan on an Orin NX (both 8.7): it runs, and the caller logs why it may be slower."""
    recorded = {**BUILT, "gpu_name": "Orin (AGX)"}
    fit = plan_mismatch(PLAN, recorded, "10.3.0", "8.7", "Orin (NX)")
    assert fit.error is None
    assert fit.warning == (
        f"{PLAN}: built on Orin (AGX), running on Orin (NX) (both compute capability 8.7); it runs, but its tactics were "
        "timed on the other GPU, so rebuild here for the best speed"
    )
    assert "\n" not in fit.warning


def test_a_plan_without_a_manifest_is_not_checked():
    assert plan_mismatch(PLAN, None, "10.3.0", "8.7", "Orin") == PlanFit()


def test_a_manifest_that_records_no_versions_does_not_pass_for_a_match():
    fit = plan_mismatch(PLAN, {"kind": "tensorrt-engine"}, "10.3.0", "8.7", "Orin")
    assert fit.error and "built with TensorRT None for compute capability None (None)" in fit.error
    fit = plan_mismatch(PLAN, {"tensorrt_version": "10.3.0", "gpu_name": "Orin"}, "10.3.0", "8.7", "Orin")
    assert fit.error and "compute capability None" in fit.error  # a manifest from before compute capability was compared


# ---------------------------------------------------------------------------------------
# Which TensorRT, and can it make a Builder or Runtime?
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "version, expected",
    [
        ("8.6.1", "TensorRT 8.6.1 is too old: dropcov-deploy needs TensorRT 10.3 or later (JetPack 6 or `pip install 'tensorrt>=10.3'`)"),
        ("10.0.1", "TensorRT 10.0.1 is too old: dropcov-deploy needs TensorRT 10.3 or later (JetPack 6 or `pip install 'tensorrt>=10.3'`)"),
        ("10.3.0", None),
        ("10.13.0.35", None),
        ("11.0.0", None),
        ("garbage", "TensorRT version 'garbage' cannot be read; dropcov-deploy needs TensorRT 10.3 or later"),
        ("", "TensorRT version '' cannot be read; dropcov-deploy needs TensorRT 10.3 or later"),
    ],
)
def test_tensorrt_older_than_10_3_is_refused_in_one_line(version, expected):
    assert tensorrt_version_problem(version) == expected


def test_a_builder_or_runtime_tensorrt_cannot_create_says_what_tensorrt_logged():
    logged = ["[checkMacros.cpp::catchCudaError::212] Error Code 1: Cuda Runtime (CUDA driver version is insufficient for CUDA runtime version)"]
    message = creation_failure_message("Runtime", "10.13.0.35", "pybind11::init(): factory function returned nullptr", logged)
    assert message == (
        f"TensorRT 10.13.0.35 could not create its Runtime ({logged[0]}); the NVIDIA driver may be too old for the CUDA this "
        "TensorRT was built with, or no CUDA GPU is usable"
    )
    # nothing logged: what the bindings raised; nothing at all (a None return): says so
    assert "(pybind11::init(): factory function returned nullptr)" in creation_failure_message("Builder", "11.0.0", "pybind11::init(): factory function returned nullptr", [])
    assert "could not create its Builder (no error was logged)" in creation_failure_message("Builder", "11.0.0", None, [])
    assert "e2; e3; e4" in creation_failure_message("Runtime", "10.3.0", None, ["e1", "e2", "e3", "e4"])


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


# IEngineInspector JSON as TensorRT writes it for an explicitly quantized conv with a dynamic
# batch (the shape of a public 10.x dump: NoOp shuffle, Reformat, CaskConvolution, "Bindings").
# Without an execution context every tensor reads "N/A due to dynamic shapes"; with one whose
# input shapes are set, the same engine shows formats. 11.x writes "I/O Tensors" and separate
# "Format"/"DataType" (docs: TensorRT 11.0 migration, IEngineInspector).
def _qdq_engine_10x(tensor_text: dict[str, str]) -> str:
    def tensor(name: str, dims: list[int]) -> dict:
        return {"Name": name, "Location": "Device", "Dimensions": dims, "Format/Datatype": tensor_text[name]}

    layers = [
        {"Name": "(Unnamed Layer* 0) [Shuffle]", "LayerType": "NoOp", "Inputs": [tensor("foo0", [-1, 25088])],
         "Outputs": [tensor("shuffled", [-1, 128, 14, 14])], "TacticValue": "0x0000000000000000"},
        {"Name": "Reformatting CopyNode for Input Tensor 0 to (Unnamed Layer* 1) [Convolution]", "LayerType": "Reformat",
         "Inputs": [tensor("shuffled", [-1, 128, 14, 14])], "Outputs": [tensor("reformatted", [-1, 128, 14, 14])],
         "ParameterType": "Reformat", "Origin": "REFORMAT", "TacticValue": "0x00000000000003e8"},
        {"Name": "(Unnamed Layer* 1) [Convolution]", "LayerType": "CaskConvolution", "Inputs": [tensor("reformatted", [-1, 128, 14, 14])],
         "Outputs": [tensor("conv_out", [-1, 12, 12, 12])], "ParameterType": "Convolution", "Kernel": [3, 3],
         "Weights": {"Type": "Int8", "Count": 13824}, "Bias": {"Type": "Float", "Count": 12},
         "TacticName": "sm80_xmma_fprop_implicit_gemm_interleaved_i8f32_i8i32_f32_nchw_vect_c_32kcrs_vect_c_32_nchw_tilesize64x32x64",
         "TacticValue": "0xff4e814e86dc840c"},
    ]
    return json.dumps({"Layers": layers, "Bindings": ["foo0", "conv_out"]}, indent=2)


NA = "N/A due to dynamic shapes"
RESOLVED_10X = {
    "foo0": "Row major linear FP32 format",
    "shuffled": "Row major linear FP32 format",
    "reformatted": "Thirty-two wide channel vectorized row major Int8 format",
    "conv_out": "Row major linear FP32 format",
}


def test_10x_inspector_json_with_a_context_attached_counts_precisions():
    result = layer_precisions(_qdq_engine_10x(RESOLVED_10X), PLAN)
    assert result == {"total": 3, "precisions": {"FP32": 1, "INT8": 2}, "inspector_schema": "10.x (Bindings)"}


def test_10x_inspector_json_without_a_context_is_an_error_not_a_precision():
    text = _qdq_engine_10x(dict.fromkeys(RESOLVED_10X, NA))
    assert len(unresolved_tensors(json.loads(text))) == 6
    with pytest.raises(TensorRTBuildError) as caught:
        layer_precisions(text, PLAN)
    assert one_line_error(caught) == (
        f"{PLAN}: the engine inspector reports 6 layer tensor(s) as N/A (first: (Unnamed Layer* 0) [Shuffle] / foo0: {NA}); "
        "it needs an execution context with every input shape set to read formats and types"
    )


def test_one_na_tensor_among_resolved_ones_is_still_an_error():
    text = _qdq_engine_10x({**RESOLVED_10X, "conv_out": NA})
    assert unresolved_tensors(json.loads(text)) == [f"(Unnamed Layer* 1) [Convolution] / conv_out: {NA}"]
    with pytest.raises(TensorRTBuildError, match="reports 1 layer tensor"):
        layer_precisions(text)


def _engine_11x(fmt_type: tuple[str, str]) -> dict:
    def tensor(name: str) -> dict:
        return {"Name": name, "Location": "Device", "Dimensions": [4, 3, 64, 64], "Format": fmt_type[0], "DataType": fmt_type[1]}

    return {
        "Layers": [{"Name": "conv1 + relu1", "LayerType": "CaskConvolution", "Inputs": [tensor("input")], "Outputs": [tensor("conv1_out")]}],
        "I/O Tensors": [{"Name": "input", "IOMode": "Input", "DataType": "Half", "Dimensions": [-1, 3, 64, 64], "Location": "Device",
                         "IsShapeInferenceIO": False, "ProfileInfo": [{"MinShape": [1, 3, 64, 64], "OptShape": [4, 3, 64, 64],
                                                                       "MaxShape": [8, 3, 64, 64], "Format": "Row major linear FP16 format (kLINEAR)"}]}],
    }


def test_11x_inspector_json_reads_the_separate_format_and_datatype():
    result = layer_precisions(json.dumps(_engine_11x(("Channel major FP16 format where channel % 8 == 0 (kHWC8)", "Half"))))
    assert result == {"total": 1, "precisions": {"FP16": 1}, "inspector_schema": "11.x (I/O Tensors)"}


@pytest.mark.parametrize("fmt_type", [(NA, NA), (NA, "Half"), ("Row major linear FP16 format (kLINEAR)", "N/A")])
def test_11x_inspector_json_with_na_in_format_or_datatype_is_an_error(fmt_type):
    info = _engine_11x(fmt_type)
    assert inspector_problem(info) and "reports 2 layer tensor(s) as N/A" in inspector_problem(info)
    with pytest.raises(TensorRTBuildError):
        layer_precisions(info, PLAN)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("N/A due to dynamic shapes", "the engine inspector returned 'N/A due to dynamic shapes' instead of layer information"),
        ('"N/A"', "the engine inspector returned '\"N/A\"' instead of layer information"),
        ('{"Layers": [', "the engine inspector's output is not JSON"),
        ("[1, 2]", "the engine inspector's output is not a JSON object ('[1, 2]')"),
        ('{"Layers": "N/A"}', "the engine inspector's 'Layers' is not a list ('N/A')"),
    ],
)
def test_inspector_output_that_is_na_or_not_json_as_a_whole_is_an_error(text, expected):
    assert inspector_problem(text).startswith(expected)
    with pytest.raises(TensorRTBuildError, match="^engine inspector: "):
        layer_precisions(text)


def test_the_layer_list_of_a_static_engine_needs_no_context():
    assert inspector_problem(_qdq_engine_10x(RESOLVED_10X)) is None
    assert inspector_problem({"Layers": ["conv1", "fc"], "Bindings": []}) is None  # LAYER_NAMES_ONLY: names, no N/A


def test_the_inspector_context_gets_each_dynamic_input_at_its_opt_shape():
    io = [  # as io_tensors records an engine's tensors
        {"name": "input", "mode": "input", "shape": [-1, 3, 64, 64], "dtype": "FLOAT",
         "profile": {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]}},
        {"name": "fixed", "mode": "input", "shape": [2, 10], "dtype": "FLOAT", "profile": {"min": [2, 10], "opt": [2, 10], "max": [2, 10]}},
        {"name": "logits", "mode": "output", "shape": [-1, 10], "dtype": "FLOAT"},
    ]
    assert inspection_shapes(io) == {"input": [8, 3, 64, 64]}
    assert inspection_shapes([]) == {}


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


def test_the_sink_keeps_errors_passes_each_distinct_warning_once_and_drops_the_rest():
    warnings: list[str] = []
    sink = Sink(warnings.append)
    for severity, message in [("ERROR", "Error Code 4:\n bad"), ("WARNING", "w1"), ("WARNING", "w1"), ("INTERNAL_ERROR", "i1"),
                              ("INFO", "info"), ("VERBOSE", "v"), ("WARNING", "w2")]:
        sink.receive(severity, message)
    assert sink.errors == ["Error Code 4: bad", "i1"]
    assert warnings == ["TensorRT warning: w1", "TensorRT warning: w2"]


def test_the_router_sends_each_message_to_the_current_sink_only():
    """TensorRT keeps one logger per process: a second operation's messages must reach its own sink, not the first's."""
    router = LogRouter()
    first, second = Sink(), Sink()
    router.dispatch("ERROR", "before any operation")
    with router.use(first):
        router.dispatch("ERROR", "build failed")
    with router.use(second):
        router.dispatch("ERROR", "deserialize failed")
        with router.use(inner := Sink()):
            router.dispatch("ERROR", "nested")
        router.dispatch("ERROR", "after nested")
    router.dispatch("WARNING", "unclaimed warning")
    assert first.errors == ["build failed"]
    assert second.errors == ["deserialize failed", "after nested"] and inner.errors == ["nested"]
    assert list(router.unclaimed) == ["before any operation"]


def test_the_router_restores_the_outer_sink_when_an_operation_raises():
    router = LogRouter()
    outer = Sink()
    with router.use(outer):
        with pytest.raises(InputError), router.use(Sink()):
            raise InputError("x")
        router.dispatch("ERROR", "outer again")
    assert outer.errors == ["outer again"]


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


def test_timing_cache_errors_are_kept_apart_from_the_builds():
    """What TensorRT logs while the timing cache is read is that step's, never the build's failure reason."""
    assert split_errors(["parser note", "cache mismatch", "cache ignored"], 1) == (["parser note"], ["cache mismatch", "cache ignored"])
    assert split_errors([], 0) == ([], [])
    sink = Sink()
    sink.receive("ERROR", "before the cache")
    mark = sink.mark()
    sink.receive("ERROR", "Timing cache version mismatch")
    assert sink.take_errors_since(mark) == ["Timing cache version mismatch"]
    sink.receive("ERROR", "build: out of memory")
    assert sink.errors == ["before the cache", "build: out of memory"]
    assert logged_reason(sink.errors, "none") == "before the cache; build: out of memory"


def test_timing_cache_messages_name_the_file_and_what_tensorrt_said(tmp_path):
    cache = tmp_path / "timing.cache"
    assert timing_cache_rejected(cache, ["Timing cache version mismatch"]) == (
        f"timing cache {cache} does not match this TensorRT/GPU (TensorRT: Timing cache version mismatch); starting a new one"
    )
    assert timing_cache_failure(cache, ["out of host memory"]) == (
        f"timing cache {cache}: TensorRT could not create a timing cache (out of host memory); build without --timing-cache"
    )
    assert timing_cache_failure(cache, []).endswith("(no error was logged); build without --timing-cache")


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
        with pytest.raises(InputError, match="^workspace 0 GiB: must be a positive number of GiB up to 4096$"):
            _build(tmp_path, precision=precision, workspace_gib=0)
    with pytest.raises(InputError) as caught:
        _build(tmp_path, precision="bf16")
    assert one_line_error(caught) == "precision 'bf16': use one of fp32, fp16, int8"


@pytest.mark.parametrize("level, core", [(None, None), (0, None), (5, 0), (3, 1)])
def test_builder_options_in_range_pass(level, core):
    check_builder_options(level, core)


@pytest.mark.parametrize(
    "level, core, expected",
    [
        (6, None, "builder optimization level 6: must be 0 to 5 (TensorRT's default is 3)"),
        (-1, None, "builder optimization level -1: must be 0 to 5 (TensorRT's default is 3)"),
        (None, -1, "DLA core -1: must be 0 or more"),
        (True, None, "builder optimization level True: must be an integer"),
        (None, 1.0, "DLA core 1.0: must be an integer"),
    ],
)
def test_builder_options_out_of_range_are_refused_in_one_line(level, core, expected):
    with pytest.raises(InputError) as caught:
        check_builder_options(level, core)
    assert one_line_error(caught) == expected


def test_a_dla_core_needs_a_machine_with_that_many_dla_cores():
    check_dla_core(0, 2)
    check_dla_core(1, 2)
    with pytest.raises(InputError, match=r"^DLA core 2: this machine has 2 DLA core\(s\), numbered 0 to 1$"):
        check_dla_core(2, 2)
    with pytest.raises(BackendUnavailable) as caught:  # a discrete GPU: Builder.num_DLA_cores is 0
        check_dla_core(0, 0)
    assert caught.value.exit_code == 3 and "no DLA" in str(caught.value) and "Jetson AGX/NX" in str(caught.value)


def test_build_refuses_bad_builder_options_before_touching_tensorrt(tmp_path):
    with pytest.raises(InputError, match="^builder optimization level 9: must be 0 to 5"):
        _build(tmp_path, builder_optimization_level=9)
    with pytest.raises(InputError, match="^DLA core -2: must be 0 or more$"):
        _build(tmp_path, dla_core=-2)
    assert not (tmp_path / "m.plan").exists()


def test_build_engine_takes_the_keywords_engine_py_passes():
    parameters = inspect.signature(build_engine).parameters
    assert parameters["builder_optimization_level"].default is None and parameters["dla_core"].default is None
    assert parameters["builder_optimization_level"].kind is inspect.Parameter.KEYWORD_ONLY


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
    with pytest.raises(InputError, match="no such engine file"):
        open_runner(tmp_path / "missing.plan", "cuda", None, cuda_graph=True)


def test_the_runner_hooks_take_cuda_graph_as_the_target_table_passes_it():
    assert inspect.signature(open_runner).parameters["cuda_graph"].default is False
    assert inspect.signature(TensorRTRunner).parameters["cuda_graph"].default is False


def test_cuda_graph_entry_points_bind_with_the_cuda_12_and_13_signatures():
    try:
        cuda = cuda_module.CudaRuntime(next(iter(cuda_module.candidate_libraries())))
    except (OSError, AttributeError, StopIteration):
        pytest.skip("no libcudart on this machine")
    instantiate = cuda._graph_api("cudaGraphInstantiateWithFlags")
    assert instantiate.argtypes[2] is ctypes.c_ulonglong and instantiate.restype is ctypes.c_int
    assert cuda._graph_api("cudaStreamBeginCapture").argtypes == [ctypes.c_void_p, ctypes.c_int]
    assert cuda._graph_api("cudaGraphLaunch").argtypes == [ctypes.c_void_p, ctypes.c_void_p]
    assert cuda_module.STREAM_CAPTURE_MODE_THREAD_LOCAL == 1 and cuda_module.ERROR_STREAM_CAPTURE_INVALIDATED == 901
    cuda.graph_destroy(0)  # nothing to release: no CUDA call
    cuda.graph_exec_destroy(0)


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
        with pytest.raises(InputError, match=f"workspace {workspace} GiB: must be a positive number"):
            build(model, BuildOptions(precision="fp32", backend="tensorrt", workspace_gib=workspace, cache_dir=tmp_path / "cache"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]
