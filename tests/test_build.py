"""`build`: FP16 and INT8 precision graphs on a trained digits model, checked in ONNX Runtime."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import assert_one_line_error, run_cli
from onnx import TensorProto

from dropcov_deploy import head_graph, onnx_io
from dropcov_deploy.backends.onnxruntime import OnnxRuntimeRunner
from dropcov_deploy.build import BuildOptions, build
from dropcov_deploy.data.images import load_batch
from dropcov_deploy.data.preprocessing import Preprocessing
from dropcov_deploy.errors import InputError
from dropcov_deploy.export import export_onnx
from dropcov_deploy.precision.calibration import load_calibration

REPO = Path(__file__).resolve().parents[1]
CALIBRATION = REPO / "calibration" / "digits"


@pytest.fixture(scope="session")
def trained_onnx(trained_digits):
    return trained_digits[1]


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _held_out(onnx_path):
    """The held-out test split (never calibrated on): what accuracy and agreement are scored on."""
    from dropcov_deploy.data.datasets import dataset_images, parse_dataset

    manifest = json.loads(Path(f"{onnx_path}.json").read_text())
    images = dataset_images(parse_dataset("digits:test"))
    return load_batch(images.items, Preprocessing.from_dict(manifest["preprocessing"])), np.asarray(images.labels)


def _scores(artifact, reference_path, data, labels):
    reference = OnnxRuntimeRunner(reference_path)(data)
    logits = OnnxRuntimeRunner(artifact)(data)
    return {
        "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        "accuracy": float((logits.argmax(1) == labels).mean()),
        "fp32_accuracy": float((reference.argmax(1) == labels).mean()),
        "finite": bool(np.isfinite(logits).all()),
    }


def _value_types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


@pytest.mark.slow
def test_fp16_agrees_and_pins_the_covariance_block_to_fp32(trained_onnx, tmp_path, cache):
    result = build(trained_onnx, BuildOptions(precision="fp16", calib=CALIBRATION, out=tmp_path / "m.fp16.onnx", cache_dir=cache))
    data, labels = _held_out(trained_onnx)
    scores = _scores(result.precision_onnx, trained_onnx, data, labels)
    assert scores["finite"] and scores["agreement"] >= 0.995
    model = onnx.load(str(result.precision_onnx))
    types = _value_types(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # FP32 I/O
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    pinned = set(result.manifest["precision_details"]["covariance_block_fp32"])
    nodes = {n.name: n for n in model.graph.node}
    assert {nodes[name].op_type for name in pinned} >= {"ReduceMean", "Sub", "Mul", "MatMul", "Gather"}
    for name in pinned:  # every covariance node computes in FP32
        for tensor in list(nodes[name].input[:1]) + list(nodes[name].output):
            assert types[tensor] == TensorProto.FLOAT, (name, tensor)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == TensorProto.FLOAT16 and types[n.output[0]] == TensorProto.FLOAT16 for n in convs)
    fc = head_graph.fc_node(model)
    assert types[fc.input[0]] == TensorProto.FLOAT16 and types[fc.input[1]] == TensorProto.FLOAT16


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        "onnxruntime",
        "tensorrt",
    ],
)
def test_int8_both_targets_keep_accuracy(trained_onnx, tmp_path, cache, backend):
    out = tmp_path / f"m.int8.{backend}.onnx"
    options = BuildOptions(precision="int8", calib=CALIBRATION, backend=backend, out=out, cache_dir=cache)
    if backend == "tensorrt":
        from dropcov_deploy.backends.tensorrt import tensorrt_status

        if not tensorrt_status()[0]:
            from dropcov_deploy.errors import BackendUnavailable

            with pytest.raises(BackendUnavailable, match="--backend onnxruntime"):
                build(trained_onnx, options)
        else:  # TensorRT and a GPU here: the INT8 engine is built beside the precision ONNX
            result = build(trained_onnx, options)
            assert result.engine is not None and result.engine.exists() and result.engine.name == out.name[: -len(".onnx")] + ".plan"
            engine_fields = result.engine_manifest.to_dict()
            assert engine_fields["kind"] == "tensorrt-engine" and engine_fields["precision"] == "int8"
    else:
        result = build(trained_onnx, options)
        # the ORT-optimized copy exists exactly when the measured choice made it an ONNX Runtime artifact
        chosen = result.manifest.to_dict()["runtime"]["chosen"]
        assert (result.ort_optimized is not None and result.ort_optimized.exists()) == (chosen == "onnxruntime")
    assert out.exists()  # the precision ONNX is written even where no engine can be built
    data, labels = _held_out(trained_onnx)
    scores = _scores(out, trained_onnx, data, labels)
    assert scores["finite"] and scores["agreement"] >= 0.97
    assert scores["accuracy"] >= scores["fp32_accuracy"] - 0.01
    model = onnx.load(str(out))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    manifest = json.loads(Path(f"{out}.json").read_text())
    details = manifest["precision_details"]
    made_by = onnx_io.producers(model)
    for name in details["covariance_block_fp32"]:  # the covariance block is never quantized
        node = next(n for n in model.graph.node if n.name == name)
        for tensor in node.input:
            assert tensor not in made_by or made_by[tensor].op_type != "DequantizeLinear", (name, tensor)
    fc = details["fc"]
    assert fc["chosen"] in fc["candidates"] and set(fc["candidates"]) == {"int8", "weight-only", "float"}
    assert all("top1_agreement" in c for c in fc["candidates"].values()) and fc["why"]
    assert manifest["calibration"]["images"] == 300 and manifest["target"] == ("tensorrt" if backend == "tensorrt" else "cpu")


@pytest.mark.slow
def test_rebuild_reuses_the_calibration_cache(trained_onnx, tmp_path, cache):
    fixed = {"runtime": "onnxruntime", "qdq_form": "u8s8"}  # the cache is under test, not the CPU choice (24 candidates a build)
    first = build(trained_onnx, BuildOptions(precision="int8", calib=CALIBRATION, out=tmp_path / "a.onnx", cache_dir=cache, **fixed))
    second = build(trained_onnx, BuildOptions(precision="int8", calib=CALIBRATION, out=tmp_path / "b.onnx", cache_dir=cache, **fixed))
    assert not first.cached and second.cached
    assert first.manifest["sha256"] != "" and first.manifest["precision_details"]["fc"] == second.manifest["precision_details"]["fc"]
    other = build(trained_onnx, BuildOptions(precision="int8", calib=CALIBRATION, calib_size=100, out=tmp_path / "c.onnx", cache_dir=cache, **fixed))
    assert not other.cached  # another calibration set, another key


def _small_onnx(tmp_path, authors_checkpoint):
    path, _ = authors_checkpoint(dim=8, num_classes=3)
    return export_onnx(path, tmp_path / "small.onnx", image_size=64).path


def test_calibration_data_is_checked(tmp_path, authors_checkpoint):
    from dropcov_deploy.manifest import Manifest

    model = _small_onnx(tmp_path, authors_checkpoint)
    manifest = Manifest.read(model)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images found"):
        load_calibration(empty, manifest)
    broken = tmp_path / "broken"
    (broken / "a").mkdir(parents=True)
    for i in range(10):
        shutil.copy(next(CALIBRATION.glob("0/*.png")), broken / "a" / f"{i}.png")
    (broken / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"bad\.png: not a readable image"):
        load_calibration(broken, manifest)
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((16, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match=r"\(16, 3, 32, 32\) do not fit the model's input \(N, 3, 64, 64\)"):
        load_calibration(wrong, manifest)
    ints = tmp_path / "ints.npz"
    np.savez(ints, input=np.zeros((16, 3, 64, 64), np.uint8))
    with pytest.raises(InputError, match="expected preprocessed float32"):
        load_calibration(ints, manifest)
    few = tmp_path / "few.npy"
    np.save(few, np.zeros((3, 3, 64, 64), np.float32))
    with pytest.raises(InputError, match="only 3 calibration inputs"):
        load_calibration(few, manifest)
    good = tmp_path / "good.npz"
    arrays = np.random.default_rng(0).standard_normal((20, 3, 64, 64)).astype(np.float32)
    np.savez(good, input=arrays)
    loaded = load_calibration(good, manifest, size=10)
    assert len(loaded) == 10 and loaded.batch_size() == 10


def test_build_cli_errors(tmp_path, seeded_digits):
    model = seeded_digits[1]  # shared, read only: every output goes to tmp_path
    assert_one_line_error(run_cli("build", model, "--precision", "int8"), 2, "--calib", "random data is never used")
    assert_one_line_error(run_cli("build", model, "--precision", "int4", "--calib", CALIBRATION), 2, "--precision 'int4'")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("build", model, "--precision", "fp16", "--calib", empty), 2, str(empty), "no images found")
    fp16 = tmp_path / "x.fp16.onnx"
    result = run_cli("build", model, "--precision", "fp32", "--backend", "tensorrt", "--out", fp16)
    from dropcov_deploy.backends.tensorrt import tensorrt_status

    if not tensorrt_status()[0]:
        assert_one_line_error(result, 3, "no TensorRT engine built", f"on the device run: dropcov-deploy engine {fp16} --batch 1:8:32")
    else:  # TensorRT and a GPU here: the FP32 engine is built beside the precision ONNX
        assert result.returncode == 0, result.stdout + result.stderr
        assert (tmp_path / "x.fp16.plan").exists() and "TensorRT engine:" in result.stdout
    assert fp16.exists() and Path(f"{fp16}.json").exists()  # the precision ONNX is written either way
    not_ours = tmp_path / "plain.onnx"
    stripped = onnx.load(str(model))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(not_ours))
    assert_one_line_error(run_cli("build", not_ours, "--precision", "fp32"), 2, str(not_ours), "no dropcov-deploy manifest")


def test_engine_manifest_carries_the_model_fields_verify_and_predict_need():
    from dropcov_deploy.manifest import Manifest
    from dropcov_deploy.precision import Precision

    manifest = Manifest.from_dict({"arch": "resnet10_compact_ACD", "dim": 32, "num_classes": 10, "class_names": list("0123456789"),
                                   "preprocessing": {"resize": 32, "crop": 32}, "output": {"name": "logits"}, "sha256": "x",
                                   "precision": "int8", "calibration": {"images": 300},
                                   "input": {"name": "input", "shape": ["batch", 3, 32, 32], "batch": {"dynamic": True, "min": 1, "max": 4096}}})
    engine = manifest.for_engine(precision=Precision.INT8, batch_min=1, batch_max=32, engine={"tensorrt_version": "10.3.0", "plan_sha256": "y"})
    fields = engine.to_dict()
    assert fields["kind"] == "tensorrt-engine" and fields["precision"] == "int8" and fields["tensorrt_version"] == "10.3.0"
    assert fields["input"]["batch"] == {"dynamic": True, "min": 1, "max": 32}
    assert fields["input"]["shape"] == ["batch", 3, 32, 32] and fields["class_names"] == list("0123456789")
    assert "sha256" not in fields and "calibration" not in fields  # the engine's own hashes are its own; no ONNX provenance copied
    fixed = manifest.for_engine(precision=Precision.INT8, batch_min=4, batch_max=4, engine={}).to_dict()
    assert fixed["input"]["batch"] == {"dynamic": False, "min": 4, "max": 4}
    assert manifest.to_dict()["input"]["batch"]["max"] == 4096  # deriving never changes the source
