"""Layers by the names users know: ONNX node names and the PyTorch module paths they came from.

`build --keep-float layer3.0.conv2`, the precision debugger's table and `verify --locate`'s
per-layer trace all speak of a graph's compute layers (Conv, Gemm, MatMul) by module path.
The export records the path in each node's metadata (`dropcov.module`); a Conv with its
BatchNorm folded in is named after the convolution (the exporter's own scope names the
BatchNorm). Graphs exported before that fall back to the exporter's deepest name scope.
onnx protos only: no torch here, except in `annotate_module_paths` (called by export).
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropcov_deploy.errors import InputError

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers a precision is chosen for
MODULE_KEY = "dropcov.module"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class Layer:
    name: str  # the ONNX node name
    op_type: str
    module: str | None  # the PyTorch module path, where the export recorded one

    @property
    def label(self) -> str:
        """What reports call it: the module path where known, else the node name."""
        return self.module or self.name


def _prop(node, key: str) -> str | None:
    return next((p.value for p in node.metadata_props if p.key == key), None)


def deepest_scope(node) -> str | None:
    """The innermost PyTorch module the exporter recorded for the node (its name scopes end
    with the op's own name, which is not a module)."""
    text = _prop(node, SCOPES_KEY)
    if not text:
        return None
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    modules = [s for s in scopes[1:-1] if isinstance(s, str) and s]
    return modules[-1] if modules else None


def module_path(node) -> str | None:
    return _prop(node, MODULE_KEY) or deepest_scope(node)


def layers(model) -> list[Layer]:
    """The graph's compute layers in graph order. A MatMul of two activations (the covariance
    product, attention's q k^T) has no weight to keep float and is left out."""
    initializers = {t.name for t in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS:
            continue
        if node.op_type == "MatMul" and not any(i in initializers or i in constants for i in node.input):
            continue
        found.append(Layer(node.name, node.op_type, module_path(node)))
    return found


def annotate_module_paths(proto, torch_model) -> int:
    """Record each compute node's module path in its metadata (`dropcov.module`): the deepest
    scope, except that a BatchNorm (folded into the Conv before it) names that Conv, the last
    Conv or Linear registered before it in the same parent. Returns how many were recorded."""
    import torch

    modules = dict(torch_model.named_modules())
    recorded = 0
    for node in proto.graph.node:
        if node.op_type not in LAYER_OPS:
            continue
        scope = deepest_scope(node)
        if scope is None or scope not in modules:
            continue
        if isinstance(modules[scope], torch.nn.modules.batchnorm._BatchNorm):
            parent_path, _, child = scope.rpartition(".")
            parent = modules[parent_path] if parent_path else torch_model
            before = []
            for name, module in parent.named_children():
                if name == child:
                    break
                if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
                    before.append(name)
            if before:
                scope = f"{parent_path}.{before[-1]}" if parent_path else before[-1]
        entry = node.metadata_props.add()
        entry.key, entry.value = MODULE_KEY, scope
        recorded += 1
    return recorded


TRAILING_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Gelu", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid")


def with_trailing_activations(model, names) -> list[str]:
    """`names` and the activation each one feeds alone (Conv -> Relu): in FP16 a layer kept in FP32
    whose output passed through an FP16 Relu would be cast down there, and a value too large for
    FP16 would overflow all the same. Graph order."""
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for tensor in node.input:
            readers.setdefault(tensor, []).append(node)
    chosen = set(names)
    for node in model.graph.node:
        if node.name not in chosen:
            continue
        current = node
        while len(current.output) == 1 and len(readers.get(current.output[0], [])) == 1:
            follower = readers[current.output[0]][0]
            if follower.op_type not in TRAILING_ACTIVATIONS:
                break
            chosen.add(follower.name)
            current = follower
    return [node.name for node in model.graph.node if node.name in chosen]


def read_names(text: str, option: str = "--keep-float") -> list[str]:
    """A comma list, or @FILE with one name per line (or comma-separated; # comments)."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            content = path.read_text()
        except OSError as exc:
            raise InputError(f"{option} {text}: cannot read {path} ({exc.strerror or exc.__class__.__name__})") from None
        text = ",".join(line.split("#", 1)[0] for line in content.splitlines())
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise InputError(f"{option} {text!r}: no names given")
    return names


def resolve(requested: list[str], model, option: str = "--keep-float") -> list[Layer]:
    """The layers named: each name is an ONNX node name, a module path, or a module prefix
    ("layer3" for every layer under it). An unknown name is one InputError line with near matches."""
    table = layers(model)
    chosen: dict[str, Layer] = {}
    for name in requested:
        found = [layer for layer in table if name in (layer.name, layer.module)]  # an exact name wins over a prefix
        if not found:
            found = [layer for layer in table if layer.module is not None and layer.module.startswith(name + ".")]
        if not found:
            known = sorted({layer.name for layer in table} | {layer.module for layer in table if layer.module})
            near = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else f"; the layers are {', '.join(layer.label for layer in table[:6])}..."
            raise InputError(f"{option} {name!r}: no such layer in the graph (Conv/Gemm/MatMul by node name or module path){hint}")
        for layer in found:
            chosen[layer.name] = layer
    return list(chosen.values())


def resolve_op_types(op_types: list[str], model, option: str = "--exclude-op-types") -> list[str]:
    """The names of every node of these op types; an op type the graph lacks is refused (a typo)."""
    present = sorted({node.op_type for node in model.graph.node})
    for op_type in op_types:
        if op_type not in present:
            near = difflib.get_close_matches(op_type, present, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else f"; the graph has {', '.join(present)}"
            raise InputError(f"{option} {op_type!r}: no node of that op type{hint}")
    return [node.name for node in model.graph.node if node.op_type in op_types]
