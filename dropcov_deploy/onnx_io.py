"""Generic ONNX I/O: load, check, save (external data when large), describe, node tables.

Nothing here knows about DropCov (that is `head_graph`). Only `onnx` and numpy, imported
lazily: these run on any machine, and on the precision graphs too.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from dropcov_deploy.errors import InputError, first_line

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
        raise InputError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    if not model.graph.node:
        raise InputError(f"{path}: not an ONNX model (empty graph)")
    problem = external_data_problem(path, model)
    if problem:
        raise InputError(problem)
    return model


def external_data_problem(path: Path, model) -> str | None:
    """Why the weights an ONNX keeps beside it (external data) cannot be read (one line), or None:
    a model copied without its .data file fails here, naming the file, not deep inside a build."""
    from onnx import TensorProto

    needed: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        end = int(entries.get("offset", 0) or 0) + int(entries.get("length", 0) or 0)
        needed[location] = max(needed.get(location, 0), end)
    for location, end in needed.items():
        data = Path(path).parent / location
        if not data.is_file():
            return f"{path}: its weights are kept in {data}, which is missing (copy it with the model)"
        if data.stat().st_size < end:
            return f"{path}: its weights file {data} is truncated ({data.stat().st_size} bytes, needs {end})"
    return None


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
        raise InputError(f"{path}: fails the ONNX checker ({first_line(exc)})") from None


def element_bytes(elem_type: int, unknown: int = 4) -> int:
    """Bytes per element of an ONNX tensor type; `unknown` for an undefined one (a tensor shape
    inference could not type)."""
    import numpy as np
    from onnx import helper

    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except KeyError:
        return unknown


def _initializer_bytes(model) -> int:
    import numpy as np

    total = 0
    for tensor in model.graph.initializer:
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        total += count * element_bytes(tensor.data_type)
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


def opset(model) -> int:
    """The default-domain opset version of `model`."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def op_counts(model) -> dict[str, int]:
    counts = collections.Counter(f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type for node in model.graph.node)
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
        "opset": opset(model) or None,
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


def consumers(model) -> dict[str, list[Any]]:
    table: dict[str, list[Any]] = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            table[name].append(node)
    return table


def drop_dead_nodes(model) -> None:
    """Remove nodes whose outputs nothing reads (after graph surgery), then unused initializers."""
    outputs = {o.name for o in model.graph.output}
    changed = True
    while changed:
        changed = False
        used = {name for node in model.graph.node for name in node.input} | outputs
        for node in list(model.graph.node):
            if not any(out in used for out in node.output):
                model.graph.node.remove(node)
                changed = True
    drop_unused_initializers(model)
