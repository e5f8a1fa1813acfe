"""Where the DropCov head sits in an ONNX graph, for both families and every precision.

The covariance product is the last MatMul of two activations; from it, the fc it
feeds, the block of nodes that must stay FP32 and unquantized, and the tensors
verify's stages read are found structurally, so FP32, FP16 and Q/DQ graphs all work.
"""

from __future__ import annotations

from typing import Any

from dropcov_deploy.errors import InputError
from dropcov_deploy.onnx_io import consumers, producers

# Ops the covariance block is made of (between the layer that makes its input and the fc):
# centring, scaling, layout, the product, shape arithmetic, and precision plumbing.
_BLOCK_OPS = frozenset(
    (
        "ReduceMean",
        "Sub",
        "Mul",
        "Div",
        "Transpose",
        "Reshape",
        "Flatten",
        "Gather",
        "Split",
        "Slice",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Shape",
        "Concat",
        "Expand",
        "Constant",
        "Cast",
        "QuantizeLinear",
        "DequantizeLinear",
    )
)
# From the product to the fc: layout only (ResNet: flatten + triu Gather; ViT: flatten).
_HEAD_LAYOUT_OPS = frozenset(("Reshape", "Flatten", "Gather", "Transpose", "Squeeze", "Unsqueeze", "Identity"))
_PRECISION_OPS = ("QuantizeLinear", "DequantizeLinear", "Cast")


def float_source(made_by: dict[str, Any], tensor: str) -> str:
    """Walk back through Q/DQ and Cast to the tensor a precision graph computed in float."""
    while tensor in made_by and made_by[tensor].op_type in _PRECISION_OPS:
        tensor = made_by[tensor].input[0]
    return tensor


def constant_tensors(model) -> set[str]:
    """Tensors whose value does not depend on the graph's inputs: initializers, Constant outputs,
    and whatever is computed from those alone (a weight's Q/DQ, Cast, Transpose or Identity, as
    some exporters emit), in one pass over the topologically sorted nodes."""
    constant = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and all(name in constant for name in inputs)):
            constant.update(node.output)
    return constant


def covariance_product(model):
    """The covariance's product: the last MatMul of two computed tensors.

    Both families' head ends in such a product (ResNet: X X^T; ViT: q^T k). Every other
    activation-by-activation MatMul (a transformer's attention) feeds the head, so in a
    topologically sorted graph the head's product comes last.
    """
    constant = constant_tensors(model)
    products = [node for node in model.graph.node if node.op_type == "MatMul" and not any(name in constant for name in node.input)]
    if not products:
        raise InputError("no covariance product (a MatMul of two activations) in the graph: not a dropcov-deploy export?")
    return products[-1]


def attention_products(model) -> list[str]:
    """Every MatMul of two activations but the covariance's: a transformer's q k^T and
    softmax(.) v. The INT8 quantizers leave them in float (`quantizers`): calibrated INT8 on a
    softmax output rounds most attention weights of a 197-token map to zero (measured on
    Deit_drop_Tiny: cosine to FP32 0.961 with them in INT8, 0.999 without)."""
    constant = constant_tensors(model)
    product = covariance_product(model)
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and node.output[0] != product.output[0] and not any(name in constant for name in node.input)
    ]


def fc_node(model):
    """The classifier that reads the covariance: the first Gemm/MatMul after the product,
    through layout ops (flatten, triu Gather) and precision plumbing (Q/DQ, Cast)."""
    table = consumers(model)
    frontier = [covariance_product(model).output[0]]
    visited: set[str] = set()
    while frontier:
        tensor = frontier.pop()
        for node in table.get(tensor, []):
            if node.op_type in ("Gemm", "MatMul"):
                return node
            if node.name not in visited and (node.op_type in _HEAD_LAYOUT_OPS or node.op_type in _PRECISION_OPS):
                visited.add(node.name)
                frontier.extend(node.output)
    raise InputError("no fully connected layer found after the covariance product")


def fc_input(model) -> str:
    """The float tensor the covariance fc reads (ResNet: the triu vector; ViT: vec(P))."""
    return float_source(producers(model), fc_node(model).input[0])


def covariance_block(model) -> list[str]:
    """Names of the covariance nodes: centring, scale, product, flatten and triu Gather.

    Walks back from the product through `_BLOCK_OPS` and stops at the layer that makes
    the block's input (ResNet: the ReLU after layer_reduce; ViT: the wr MatMul), then
    forward from the product through layout ops to the fc. Everything in between must
    stay in FP32 and never be quantized. Shape nodes join the block but are not walked
    through (they read, not compute). Precision-converted graphs are handled too (Cast,
    Q/DQ and Constant nodes inside the block are part of it).
    """
    initializers = {t.name for t in model.graph.initializer}
    made_by = producers(model)
    product = covariance_product(model)
    block: dict[str, None] = {product.name: None}
    stack = [product]
    while stack:
        node = stack.pop()
        if node.op_type == "Shape":
            continue
        for name in node.input:
            parent = made_by.get(name) if name and name not in initializers else None
            if parent is None or parent.name in block or parent.op_type not in _BLOCK_OPS:
                continue
            block[parent.name] = None
            stack.append(parent)
    fc = fc_node(model)
    table = consumers(model)
    frontier = [product.output[0]]
    while frontier:
        for node in table.get(frontier.pop(), []):
            if node is not fc and node.op_type in _HEAD_LAYOUT_OPS and node.name not in block:
                block[node.name] = None
                frontier.extend(node.output)
    return list(block)


def block_input(model) -> str:
    """The float tensor the covariance is taken of (ResNet: the reduced map; ViT: wr's output):
    where the walk back from the product along each node's data input leaves the block."""
    constant = constant_tensors(model)
    made_by = producers(model)
    block = set(covariance_block(model))
    tensor = covariance_product(model).input[0]
    while tensor in made_by and made_by[tensor].name in block:
        tensor = next(n for n in made_by[tensor].input if n and n not in constant)
    return float_source(made_by, tensor)


def layer_input(model, tensor: str) -> str:
    """The activation a layer read to make `tensor`: back through ReLU / bias Add / BatchNorm
    to the Conv, Gemm or MatMul, then its data input (the block's `backbone` stage)."""
    constant = constant_tensors(model)
    made_by = producers(model)
    node = made_by[float_source(made_by, tensor)]
    while node.op_type in ("Relu", "Add", "BatchNormalization", *_PRECISION_OPS):
        data = [n for n in node.input if n and n not in constant]
        node = made_by[data[0]]
    if node.op_type not in ("Conv", "Gemm", "MatMul"):
        raise InputError(f"the covariance's input is made by a {node.op_type}, not a Conv or linear layer")
    return float_source(made_by, node.input[0])
