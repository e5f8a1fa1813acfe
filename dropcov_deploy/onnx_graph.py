"""ONNX graph utilities: load, check, save (atomically, external data when large), describe.

Only `onnx` and numpy: these run on any machine, and on the precision graphs too.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from dropcov_deploy.errors import InputError

PROTOBUF_LIMIT = 2 * 1024**3
# Leave head-room below protobuf's 2 GiB: the graph itself and metadata need bytes too.
EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - 64 * 1024**2


def load(path: Path, load_external_data: bool = True):
    """onnx.load with a one-line error naming the file."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable ONNX model ({first})") from None
    if not model.graph.node:
        raise InputError(f"{path}: not an ONNX model (empty graph)")
    return model


def save(model, path: Path, threshold: int = EXTERNAL_DATA_THRESHOLD) -> list[Path]:
    """Save `model`; weights go to `<name>.data` beside it when the model is too big for protobuf.

    Returns the files written. Call inside `atomic.staged` to publish them atomically.
    """
    import onnx

    path = Path(path)
    external = _initializer_bytes(model) >= threshold
    if external:
        location = f"{path.name}.data"
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=1024)
        return [path, path.parent / location]
    onnx.save_model(model, str(path))
    return [path]


def check(path: Path) -> None:
    """onnx.checker's full check (strict shape inference included), by path so >2 GB works."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: fails the ONNX checker ({first})") from None


def _initializer_bytes(model) -> int:
    import numpy as np
    from onnx import helper

    total = 0
    for tensor in model.graph.initializer:
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        total += count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return total


def fold_constant_reshapes(model) -> int:
    """Replace Reshape(initializer, constant shape) by the reshaped initializer.

    The exporter emits index_select's index as Reshape(index, [-1]); its own constant
    folder skips tensors over ~1k elements, which would leave the triu Gather fed by a
    runtime Reshape instead of a constant. Returns the number of nodes folded.
    """
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {
        node.output[0]: numpy_helper.to_array(node.attribute[0].t)
        for node in graph.node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"
    }
    consumers = collections.Counter(name for node in graph.node for name in node.input)
    graph_outputs = {o.name for o in graph.output}
    folded = 0
    for node in list(graph.node):
        if node.op_type != "Reshape" or node.input[0] not in initializers or node.output[0] in graph_outputs:
            continue
        shape_name = node.input[1]
        if shape_name in initializers:
            shape = numpy_helper.to_array(initializers[shape_name])
        elif shape_name in constants:
            shape = constants[shape_name]
        else:
            continue
        data = numpy_helper.to_array(initializers[node.input[0]])
        reshaped = data.reshape([d if d != 0 else data.shape[i] for i, d in enumerate(shape.tolist())])
        new_tensor = numpy_helper.from_array(np.ascontiguousarray(reshaped), name=node.output[0])
        graph.initializer.append(new_tensor)
        graph.node.remove(node)
        folded += 1
        if consumers[node.input[0]] == 1:  # the original initializer fed only this Reshape
            graph.initializer.remove(initializers[node.input[0]])
    drop_unused_initializers(model)
    return folded


def drop_unused_initializers(model) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for tensor in list(model.graph.initializer):
        if tensor.name not in used:
            model.graph.initializer.remove(tensor)


def set_metadata(model, props: dict[str, str]) -> None:
    from onnx import helper

    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    helper.set_model_props(model, {**{p.key: p.value for p in keep}, **props})


def op_counts(model) -> dict[str, int]:
    counts = collections.Counter(
        f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type for node in model.graph.node
    )
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _value_info_shape(value) -> list[Any]:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?") for d in dims]


def io_shapes(model) -> dict[str, list[dict[str, Any]]]:
    from onnx import helper

    init_names = {t.name for t in model.graph.initializer}

    def describe(values):
        return [
            {
                "name": v.name,
                "shape": _value_info_shape(v),
                "dtype": str(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)),
            }
            for v in values
            if v.name not in init_names
        ]

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def describe(model) -> dict[str, Any]:
    """Op counts, parameter bytes and I/O of a loaded model."""
    import numpy as np

    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(model.graph.node),
        "op_counts": op_counts(model),
        "parameter_bytes": _initializer_bytes(model),
        "parameters": sum(int(np.prod(t.dims)) if t.dims else 1 for t in model.graph.initializer),
        **io_shapes(model),
    }


def ensure_node_names(model) -> None:
    """Give every node a unique name: precision pins and exclusions address nodes by name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


def producers(model) -> dict[str, Any]:
    return {output: node for node in model.graph.node for output in node.output}


def triu_gather(model):
    """The covariance head's Gather: constant flat indices on the flattened covariance."""
    initializers = {t.name: t for t in model.graph.initializer}
    found = [
        node
        for node in model.graph.node
        if node.op_type == "Gather" and node.input[1] in initializers and len(initializers[node.input[1]].dims) == 1
    ]
    if len(found) != 1:
        raise InputError(f"expected one constant-index Gather (the covariance triu), found {len(found)}: not a dropcov-deploy export?")
    return found[0]


def covariance_block(model) -> list[str]:
    """Names of the covariance nodes: mean, centring, scale, product, flatten, triu Gather.

    Walks back from the triu Gather through computed (non-constant) inputs and stops at
    the ReLU that ends `layer_reduce`: everything in between is the block that must stay
    in FP32 and must never be quantized. Precision-converted graphs are handled too
    (Cast, Q/DQ and Constant nodes inside the block are part of it).
    """
    initializers = {t.name for t in model.graph.initializer}
    made_by = producers(model)
    start = triu_gather(model)
    block: list[str] = []
    stack = [start]
    while stack:
        node = stack.pop()
        if node.name in block:
            continue
        block.append(node.name)
        for name in node.input:
            if not name or name in initializers or name not in made_by:
                continue
            parent = made_by[name]
            if parent.op_type == "Relu":
                continue
            stack.append(parent)
    return block


def fc_node(model):
    """The classifier: the Gemm (or MatMul) that consumes the triu vector, through Q/DQ or Casts."""
    gather = triu_gather(model)
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    frontier = [gather.output[0]]
    visited: set[str] = set()
    while frontier:
        tensor = frontier.pop()
        for node in consumers.get(tensor, []):
            if node.op_type in ("Gemm", "MatMul"):
                return node
            if node.name not in visited and node.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast", "Reshape", "Flatten"):
                visited.add(node.name)
                frontier.extend(node.output)
    raise InputError("no fully connected layer found after the covariance triu")
