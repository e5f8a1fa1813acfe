"""Keep chosen layers out of INT8 by graph surgery on one calibrated graph.

A layer kept float has no Q/DQ on its inputs or weights: each activation input reads the
tensor before its QuantizeLinear, each weight and bias is the source graph's original
array (in the type its DequantizeLinear produced). The quantizer calibrated every layer
once; `build --keep-float` and every candidate of the precision debugger are derived from
that one graph, so they are judged on exactly what a build with those layers kept produces.

ONNX Runtime's QDQ quantizer removes a Relu (or Clip) that follows a quantized layer: the
layer writes the Relu's output name and the uint8 Q clips the negatives. Bypassing that
Q would feed the kept layer pre-ReLU values, so the activation is put back there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from dropcov_deploy import onnx_io

REMOVABLE_ACTIVATIONS = ("Relu", "Clip")


def _restored_activation(
    model, tensor: str, source_producers: dict[str, Any], made_by: dict[str, Any], kept: str, source_initializers: dict[str, Any] | None = None
) -> str:
    """`tensor` as the float graph computed it: when the quantizer dropped the Relu/Clip that made
    it in the source graph (its producer is now another op), a copy of that node recomputes it."""
    from onnx import helper

    original = source_producers.get(tensor)
    current = made_by.get(tensor)
    if original is None or original.op_type not in REMOVABLE_ACTIVATIONS or current is None or current.op_type == original.op_type:
        return tensor
    name = f"{tensor}_float_for_{kept}"
    if name not in made_by:
        present = {t.name for t in model.graph.initializer}
        for extra in original.input[1:]:  # a Clip's min/max: the quantizer dropped them with the Clip
            if extra and extra not in present and extra not in made_by and source_initializers and extra in source_initializers:
                model.graph.initializer.append(source_initializers[extra])
        activation = helper.make_node(original.op_type, [tensor, *original.input[1:]], [name], name=f"{original.name}_float_for_{kept}")
        activation.attribute.extend(original.attribute)
        model.graph.node.insert(list(model.graph.node).index(current) + 1, activation)
        made_by[name] = activation
    return name


def bypass_input_qdq(model, node, position: int, source_producers: dict[str, Any] | None = None, source_initializers: dict[str, Any] | None = None) -> bool:
    """node.input[position]: X -> Q -> DQ -> node becomes X -> node (the Q/DQ pair stays while
    other nodes read it). True when there was a pair to remove."""
    made_by = onnx_io.producers(model)
    dq = made_by.get(node.input[position])
    if dq is None or dq.op_type != "DequantizeLinear":
        return False
    q = made_by.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return False
    node.input[position] = (
        _restored_activation(model, q.input[0], source_producers, made_by, node.name, source_initializers) if source_producers else q.input[0]
    )
    onnx_io.drop_dead_nodes(model)
    return True


def restore_float_weights(model, node, source_node, source_initializers: dict[str, Any], positions: Iterable[int]) -> int:
    """Each of `positions` that the source graph feeds from an initializer gets that original
    array back, in the type its DequantizeLinear produced (FP16 scales: FP16). Returns how many."""
    from onnx import TensorProto, numpy_helper

    made_by = onnx_io.producers(model)
    initializers = {t.name: t for t in model.graph.initializer}
    restored = 0
    for position in positions:
        if position >= len(node.input) or position >= len(source_node.input) or source_node.input[position] not in source_initializers:
            continue
        original = numpy_helper.to_array(source_initializers[source_node.input[position]])
        producer = made_by.get(node.input[position])
        dtype: Any
        if producer is not None and producer.op_type == "DequantizeLinear":
            scale = initializers.get(producer.input[1])
            dtype = np.float16 if scale is not None and scale.data_type == TensorProto.FLOAT16 else np.float32
        elif node.input[position] in initializers:
            dtype = numpy_helper.to_array(initializers[node.input[position]]).dtype
        else:
            continue
        name = f"{source_node.input[position]}_float"
        if name not in initializers:
            model.graph.initializer.append(numpy_helper.from_array(original.astype(dtype), name=name))
            initializers[name] = model.graph.initializer[-1]
        node.input[position] = name
        restored += 1
    onnx_io.drop_dead_nodes(model)
    return restored


def keep_layers_float(quantized, source, names: Iterable[str]):
    """A copy of the quantized graph with the named nodes (present in both graphs) in float."""
    from onnx import ModelProto

    model = ModelProto()
    model.CopyFrom(quantized)
    source_nodes = {node.name: node for node in source.graph.node}
    source_initializers = {t.name: t for t in source.graph.initializer}
    source_producers = onnx_io.producers(source)
    for name in names:
        node = next((n for n in model.graph.node if n.name == name), None)
        source_node = source_nodes.get(name)
        if node is None or source_node is None:
            continue
        weights = [p for p, tensor in enumerate(source_node.input) if tensor in source_initializers]
        restore_float_weights(model, node, source_node, source_initializers, weights)
        for position in range(len(node.input)):
            if position not in weights:
                bypass_input_qdq(model, node, position, source_producers, source_initializers)
    onnx_io.drop_unused_initializers(model)
    return model
