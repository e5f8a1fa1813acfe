"""The TensorRT backend: real builds and runs where TensorRT and a GPU exist, contracts everywhere.

The `tensorrt`-marked tests build real engines and skip (with the reason
`tensorrt_status()` gives) on machines without TensorRT or a GPU; nothing here
imitates TensorRT. The rest run everywhere: the batch-profile parser, the status
line, the import hygiene, and the engine-inspector JSON parser on the two
documented JSON shapes. The decisions the backend makes on plain data are tested
in tests/test_tensorrt_decisions.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dropcov_deploy.backends import DeviceTimed, Runner
from dropcov_deploy.backends.tensorrt import (
    BatchProfile,
    OnnxParseError,
    TensorRTBuildError,
    TensorRTRunner,
    build_engine,
    layer_precisions,
    open_runner,
    tensorrt_status,
)
from dropcov_deploy.errors import BackendUnavailable, InputError
from dropcov_deploy.manifest import BatchRange, Manifest, sha256_file, sidecar_path

AVAILABLE, STATUS = tensorrt_status()
needs_tensorrt = pytest.mark.skipif(not AVAILABLE, reason=f"needs TensorRT and a CUDA GPU: {STATUS}")
IMAGE_SIZE = 64
PROFILE = BatchProfile(1, 4, 8)


# ---------------------------------------------------------------------------------------
# Everywhere
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [("1:8:32", (1, 8, 32)), ("4", (4, 4, 4)), (" 2 : 2 : 16 ", (2, 2, 16)), (7, (7, 7, 7)), ("1:1:1", (1, 1, 1))],
)
def test_batch_profile_parses(text, expected):
    profile = BatchProfile.parse(text)
    assert (profile.min, profile.opt, profile.max) == expected
    assert BatchProfile.parse(str(profile)) == profile
    assert profile.to_dict() == dict(zip(("min", "opt", "max"), expected))


@pytest.mark.parametrize("text", ["", "0", "0:1:2", "8:4:2", "1:9:8", "2:1:4", "1:8", "1:2:3:4", "a:b:c", "-1", "1.5", "1:8:x"])
def test_batch_profile_rejects_bad_text_in_one_line(text):
    with pytest.raises(InputError) as caught:
        BatchProfile.parse(text)
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value) and "batch profile" in str(caught.value)


def test_batch_profile_checks_direct_construction():
    with pytest.raises(InputError, match="min <= opt <= max"):
        BatchProfile(4, 2, 8)


def test_status_is_one_line():
    ok, reason = tensorrt_status()
    assert reason and "\n" not in reason
    if ok:  # the installed TensorRT's version and the GPU libcudart reports, nothing else
        import tensorrt

        from dropcov_deploy.backends.cuda import runtime

        gpu = runtime().device_name()
        assert gpu.strip() and reason == f"TensorRT {tensorrt.__version__} on {gpu}", reason
    else:
        keys = ("tensorrt not installed", "tensorrt cannot be imported", "no CUDA GPU", "libcudart not found", "is too old", "cannot be read",
                "could not create its Runtime")
        assert any(key in reason for key in keys), reason


def test_importing_the_backend_loads_neither_tensorrt_torch_nor_cuda():
    code = (
        "import sys, dropcov_deploy.backends.tensorrt\n"
        "maps = open('/proc/self/maps').read() if sys.platform.startswith('linux') else ''\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
        "print('libcudart' in maps, 'libnvinfer' in maps)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    loaded = set(out[0].split())
    assert not loaded & {"tensorrt", "tensorrt_bindings", "torch", "torchvision", "cuda", "pycuda", "cupy"}, loaded
    assert out[1] == "False False", "libcudart or libnvinfer mapped at import"


def test_build_checks_its_arguments_before_touching_tensorrt(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not used")
    common = dict(profile=PROFILE, workspace_gib=None, timing_cache=None, onnx_sha256="0" * 64, calibration_sha256=None, log=lambda _: None)
    with pytest.raises(InputError, match="precision 'bf16'"):
        build_engine(onnx, tmp_path / "m.plan", precision="bf16", **common)
    with pytest.raises(InputError, match="no such ONNX file"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.plan", precision="fp32", **common)
    with pytest.raises(InputError, match="does not exist"):
        build_engine(onnx, tmp_path / "no" / "m.plan", precision="fp32", **common)


@pytest.mark.skipif(AVAILABLE, reason="TensorRT and a GPU are present")
def test_without_tensorrt_build_and_run_raise_backend_unavailable(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not used")
    with pytest.raises(BackendUnavailable) as caught:
        build_engine(onnx, tmp_path / "m.plan", precision="fp32", profile=PROFILE, workspace_gib=None, timing_cache=None,
                     onnx_sha256="0" * 64, calibration_sha256=None, log=lambda _: None)
    assert caught.value.exit_code == 3 and str(caught.value) == STATUS
    assert not (tmp_path / "m.plan").exists()
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"\0")
    with pytest.raises(BackendUnavailable) as caught:
        TensorRTRunner(plan)
    assert caught.value.exit_code == 3 and str(caught.value) == STATUS
    with pytest.raises(BackendUnavailable):
        open_runner(plan, "cpu", None)


# The two JSON shapes of IEngineInspector.get_engine_information(JSON), as documented:
# 10.x "Bindings" and a combined "Format/Datatype" string (the strings TREx,
# NVIDIA/TensorRT tools/experimental/trt-engine-explorer, maps); 11.x "I/O Tensors"
# (docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-IEngineInspector.html)
# and separate "Format"/"Datatype" keys (Polygraphy 0.53.6's engine extractor reads them so).
# These test the parser on text; they are not engines.
def _layer(name, inputs, outputs, key):
    def tensor(i, value):
        if key == "combined":
            return {"Name": f"{name}_{i}", "Location": "Device", "Dimensions": [-1, 8], "Format/Datatype": value}
        fmt, dtype = value
        return {"Name": f"{name}_{i}", "Location": "Device", "Dimensions": [-1, 8], "Format": fmt, "Datatype": dtype}

    return {"Name": name, "LayerType": "CaskConvolution", "Inputs": [tensor(i, v) for i, v in enumerate(inputs)],
            "Outputs": [tensor(i, v) for i, v in enumerate(outputs)]}


def test_layer_precisions_reads_the_10x_shape():
    info = {
        "Layers": [
            _layer("conv_fp32", ["Row major linear FP32 format"], ["Row major linear FP32 format"], "combined"),
            _layer("conv_fp16", ["Channel major FP16 format where channel % 8 == 0"], ["Half"], "combined"),
            _layer("conv_int8", ["Thirty-two wide channel vectorized row major Int8 format"], ["Row major linear FP32 format"], "combined"),
            _layer("reformat", ["Row major linear FP32 format"], ["Row major linear FP16 format"], "combined"),
            _layer("gather", ["Row major linear FP32 format", "Row major linear Int32"], ["Row major linear FP32 format"], "combined"),
            "a layer name only (no DETAILED verbosity)",
        ],
        "Bindings": ["input", "logits"],
    }
    result = layer_precisions(json.dumps(info))
    assert result == {"total": 6, "precisions": {"FP16": 2, "FP32": 2, "INT8": 1, "UNKNOWN": 1}, "inspector_schema": "10.x (Bindings)"}


def test_layer_precisions_reads_the_11x_shape():
    info = {
        "Layers": [
            _layer("conv_fp32", [("Row major linear FP32 format (kLINEAR)", "Float")], [("Row major linear FP32 format (kLINEAR)", "Float")], "split"),
            _layer("conv_fp16", [("Channel major FP16 format where channel % 8 == 0", "Half")], [("Row major linear FP16 format", "Half")], "split"),
            _layer("qdq_conv", [("Row major Int8 format", "Int8")], [("Row major linear FP32 format", "Float")], "split"),
            _layer("bf16", [("Row major linear BFloat16 format", "BFloat16")], [("Row major linear BFloat16 format", "BFloat16")], "split"),
        ],
        "I/O Tensors": [
            {"Name": "input", "IOMode": "Input", "DataType": "Float", "Dimensions": [-1, 3, 64, 64], "Location": "Device"},
            {"Name": "logits", "IOMode": "Output", "DataType": "Float", "Dimensions": [-1, 10], "Location": "Device"},
        ],
    }
    result = layer_precisions(info)
    assert result["precisions"] == {"BF16": 1, "FP16": 1, "FP32": 1, "INT8": 1}
    assert result["total"] == 4 and result["inspector_schema"] == "11.x (I/O Tensors)"


# ---------------------------------------------------------------------------------------
# With TensorRT and a GPU
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_fp32(tmp_path_factory):
    """resnet18_ACD, d=16, 64x64, dynamic batch: exported like a user's checkpoint."""
    if not AVAILABLE:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {STATUS}")
    import torch
    from reference import authors_state_dict

    from dropcov_deploy.export import export_onnx

    folder = tmp_path_factory.mktemp("trt")
    state = authors_state_dict("resnet18_ACD", 16, 10, 0)
    checkpoint = folder / "model_best.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet18_ACD", "state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
    return export_onnx(checkpoint, folder / "r18.onnx", image_size=IMAGE_SIZE).path


@pytest.fixture(scope="module")
def images():
    """Real images: the bundled digits' calibration split, preprocessed at 64x64."""
    from dropcov_deploy.data import digits

    prep = dataclasses.replace(digits.PREPROCESSING, resize=IMAGE_SIZE, crop=IMAGE_SIZE)
    return digits.preprocessed(digits.load_splits()["calibration"], prep)


def _build(onnx_path: Path, plan: Path, precision: str, **extra):
    options = dict(profile=PROFILE, workspace_gib=1.0, timing_cache=None, onnx_sha256=sha256_file(onnx_path),
                   calibration_sha256=None, log=lambda _: None)
    options.update(extra)
    return build_engine(onnx_path, plan, precision=precision, **options)


@pytest.fixture(scope="module")
def fp32_engine(onnx_fp32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp32")
    plan = folder / "r18_fp32.plan"
    # As `build` calls it: the engine's manifest derived from the precision ONNX's.
    manifest = _build(onnx_fp32, plan, "fp32", timing_cache=folder / "timing.cache", model_manifest=Manifest.read(onnx_fp32))
    return plan, manifest


@pytest.mark.tensorrt
@needs_tensorrt
def test_fp32_engine_matches_onnx_runtime_at_two_batch_sizes(fp32_engine, onnx_fp32, images):
    from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from dropcov_deploy.metrics import relative_error

    plan, _ = fp32_engine
    reference = OnnxRuntimeRunner(onnx_fp32)
    with open_runner(plan, "cuda", 4) as runner:
        assert isinstance(runner, Runner) and isinstance(runner, DeviceTimed)
        assert runner.backend == "tensorrt" and runner.device_timing == "GPU compute (CUDA events)"
        assert runner.input_shapes() == {"input": [-1, 3, IMAGE_SIZE, IMAGE_SIZE]}
        for batch in (1, 5):
            got = runner(images[:batch])
            assert got.shape == (batch, 10) and got.dtype == np.float32
            assert relative_error(got, reference(images[:batch])) < 1e-3
            assert runner.last_gpu_ms is not None and runner.last_gpu_ms > 0
        assert runner.infer_device_only() > 0
        timer = runner.device_timer(images[:3])
        assert timer() > 0 and timer() > 0 and runner.last_gpu_ms > 0
        runner(images[:2])
        with pytest.raises(InputError, match="replaced the batch"):
            timer()
        with pytest.raises(InputError, match="engine accepts"):
            runner(images[:PROFILE.max + 1])
    with pytest.raises(InputError, match="closed"):
        runner(images[:1])


@pytest.mark.tensorrt
@needs_tensorrt
def test_fp32_manifest_records_the_build(fp32_engine):
    plan, built = fp32_engine
    manifest = built.to_dict()
    assert Manifest.read(plan).to_dict() == manifest
    assert manifest["kind"] == "tensorrt-engine" and manifest["precision"] == "fp32"
    assert manifest["tensorrt_version"] == STATUS.split()[1]
    assert manifest["gpu_name"] and manifest["compute_capability"] and manifest["cuda_runtime_version"]
    assert manifest["plan_sha256"] == sha256_file(plan)
    assert manifest["profile"] == PROFILE.to_dict()
    assert manifest["layers"]["precisions"].get("FP32", 0) > 0
    # carried over from the precision ONNX's manifest, the batch range narrowed to the profile
    assert manifest["arch"] == "resnet18_ACD" and manifest["num_classes"] == 10
    assert built.batch == BatchRange(dynamic=True, min=PROFILE.min, max=PROFILE.max)
    names = {t["name"]: t for t in manifest["io"]}
    assert names["input"]["mode"] == "input" and names["input"]["profile"]["max"][0] == PROFILE.max
    assert names["logits"]["mode"] == "output"
    assert (plan.parent / "timing.cache").stat().st_size > 0


@pytest.mark.tensorrt
@needs_tensorrt
def test_runner_refuses_a_plan_from_another_tensorrt_or_compute_capability(fp32_engine, tmp_path):
    plan, built = fp32_engine
    manifest = built.to_dict()
    for field, fake in (("tensorrt_version", "9.9.9"), ("compute_capability", "1.0")):
        copy = tmp_path / f"{field}.plan"
        shutil.copyfile(plan, copy)
        Manifest.from_dict({**manifest, field: fake}).write(sidecar_path(copy))
        with pytest.raises(InputError) as caught:
            TensorRTRunner(copy)
        message = str(caught.value)
        assert fake in message and str(manifest[field]) in message and "\n" not in message


@pytest.mark.tensorrt
@needs_tensorrt
def test_runner_runs_a_plan_from_another_gpu_name_of_the_same_compute_capability_with_a_warning(fp32_engine, images, tmp_path):
    plan, built = fp32_engine
    copy = tmp_path / "renamed.plan"
    shutil.copyfile(plan, copy)
    Manifest.from_dict({**built.to_dict(), "gpu_name": "Imaginary GPU 1000"}).write(sidecar_path(copy))
    with TensorRTRunner(copy) as runner:
        assert len(runner.warnings) == 1 and "Imaginary GPU 1000" in runner.warnings[0] and "\n" not in runner.warnings[0]
        assert runner(images[:1]).shape == (1, 10)


@pytest.mark.tensorrt
@needs_tensorrt
def test_runner_reports_its_facts_and_times_a_cuda_graph(fp32_engine, images):
    plan, _ = fp32_engine
    with open_runner(plan, "cuda", None, cuda_graph=True) as runner:
        assert runner.plan_bytes == plan.stat().st_size and runner.deserialize_seconds > 0
        assert runner.device_memory_bytes is not None and runner.device_memory_bytes >= 0
        assert runner.warnings == []
        timer = runner.device_timer(images[:3])
        assert timer() > 0 and timer() > 0 and runner.last_gpu_ms > 0
        expected = runner(images[:3])  # replaces the batch: the graph's timer refuses from now on
        with pytest.raises(InputError, match="replaced the batch"):
            timer()
        timer = runner.device_timer(images[:3])  # a new capture for the new placement
        assert timer() > 0
        np.testing.assert_allclose(runner(images[:3]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.tensorrt
@needs_tensorrt
def test_builder_options_are_used_and_recorded_and_the_inspector_sees_formats(onnx_fp32, tmp_path):
    plan = tmp_path / "level1.plan"
    manifest = _build(onnx_fp32, plan, "fp32", builder_optimization_level=1).to_dict()
    assert manifest["builder_optimization_level"] == 1 and manifest["dla_core"] is None
    # the inspector was read with a context at the opt shape: N/A would have failed the build
    assert manifest["layers"]["precisions"].get("FP32", 0) > 0, manifest["layers"]
    try:
        dla = _build(onnx_fp32, tmp_path / "dla.plan", "fp32", dla_core=0)
    except BackendUnavailable as exc:  # a discrete GPU: no DLA (Jetson AGX/NX only)
        assert exc.exit_code == 3 and "no DLA" in str(exc) and not (tmp_path / "dla.plan").exists()
    else:
        assert dla.to_dict()["dla_core"] == 0


@pytest.mark.tensorrt
@needs_tensorrt
def test_fp16_build_of_an_fp32_onnx_fails_and_leaves_no_plan(onnx_fp32, tmp_path):
    plan = tmp_path / "not_fp16.plan"
    with pytest.raises(TensorRTBuildError, match="no FP16 layers"):
        _build(onnx_fp32, plan, "fp16")
    assert not plan.exists() and not sidecar_path(plan).exists()


@pytest.mark.tensorrt
@needs_tensorrt
def test_fp16_engine_has_fp16_layers(onnx_fp32, images, tmp_path):
    from dropcov_deploy import onnx_io
    from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from dropcov_deploy.metrics import relative_error
    from dropcov_deploy.precision.calibration import CalibrationSet
    from dropcov_deploy.precision.fp16 import convert_fp16

    calibration = CalibrationSet(source=Path("digits-calibration"), data=images, labels=None, sha256="digits")
    model, pinned = convert_fp16(onnx_fp32, calibration)  # ModelOpt missing: BackendUnavailable, a failure here
    assert pinned, "the covariance block was not found to pin to FP32"
    fp16_onnx = tmp_path / "r18_fp16.onnx"
    onnx_io.save(model, fp16_onnx)
    plan = tmp_path / "r18_fp16.plan"
    manifest = _build(fp16_onnx, plan, "fp16")
    layers = manifest.get("layers")
    assert manifest.precision.value == "fp16" and layers["precisions"].get("FP16", 0) > 0, layers
    with TensorRTRunner(plan) as runner:
        got = runner(images[:4])
    assert np.isfinite(got).all()
    assert relative_error(got, OnnxRuntimeRunner(onnx_fp32)(images[:4])) < 1e-2


@pytest.mark.tensorrt
@needs_tensorrt
def test_parser_failure_reports_every_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("NotAnOperator", ["x"], ["y"], name="first_bad", domain="example.invalid"),
        helper.make_node("AlsoNotAnOperator", ["y"], ["z"], name="second_bad", domain="example.invalid"),
    ]
    graph = helper.make_graph(nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("example.invalid", 1)])
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    plan = tmp_path / "bad.plan"
    with pytest.raises(OnnxParseError) as caught:
        _build(path, plan, "fp32")
    message, errors = str(caught.value), caught.value.errors
    assert caught.value.exit_code == 2 and errors and "\n" not in message
    assert f"failed with {len(errors)} error(s)" in message
    for index, error in enumerate(errors, 1):  # every parser error is in the one message
        assert f"[{index}]" in message and error["desc"] in message
    assert not plan.exists()


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_vit_engines_run_their_precision_and_match_onnx_runtime(precision, tmp_path):
    """A transformer (vit_compact_drop, seeded): the FP16 graph and the TensorRT-target INT8 Q/DQ
    graph build strongly typed engines that run in their precision and agree with FP32."""
    import torch

    from dropcov_deploy import onnx_io
    from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner
    from dropcov_deploy.data import digits
    from dropcov_deploy.export import export_onnx
    from dropcov_deploy.metrics import relative_error
    from dropcov_deploy.models import create_model, save_checkpoint
    from dropcov_deploy.precision.calibration import CalibrationSet
    from dropcov_deploy.precision.fp16 import convert_fp16
    from dropcov_deploy.precision.quantizers import quantize_tensorrt

    torch.manual_seed(0)
    checkpoint = tmp_path / "vit.pt"
    save_checkpoint(checkpoint, create_model("vit_compact_drop", num_classes=10).eval(), arch="vit_compact_drop", input_size=32)
    fp32 = export_onnx(checkpoint, tmp_path / "vit.onnx").path
    vit_images = digits.preprocessed(digits.load_splits()["calibration"], digits.PREPROCESSING)
    calibration = CalibrationSet(source=Path("digits-calibration"), data=vit_images[:64], labels=None, sha256="digits")
    if precision == "fp16":
        model, _pinned = convert_fp16(fp32, calibration)
    else:
        model, _pinned, record = quantize_tensorrt(fp32, calibration)
        assert isinstance(record, dict), record
    precision_onnx = tmp_path / f"vit.{precision}.onnx"
    onnx_io.save(model, precision_onnx)
    plan = tmp_path / f"vit_{precision}.plan"
    manifest = _build(precision_onnx, plan, precision)
    layers = manifest.get("layers")
    assert layers["precisions"].get(precision.upper(), 0) > 0, layers
    with TensorRTRunner(plan) as runner:
        got = runner(vit_images[:4])
    assert np.isfinite(got).all()
    assert relative_error(got, OnnxRuntimeRunner(precision_onnx)(vit_images[:4])) < (1e-2 if precision == "fp16" else 5e-2)
