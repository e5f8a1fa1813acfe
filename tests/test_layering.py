"""The package's shape: the library never draws on the terminal, and no module imports loop.

Read from the source with `ast` (nothing is imported), so these run in a blink.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dropcov_deploy"
# The CLI side: the Typer app, the one rendering module, and the consoles they share.
CLI_SIDE = {"dropcov_deploy.cli", "dropcov_deploy.render", "dropcov_deploy.console", "dropcov_deploy.__main__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules `path` imports (absolute names); with `top_level_only`, only at import time (not inside functions)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also imports under a module-level `if`/`try`, but not under `if TYPE_CHECKING`
        expanded = []
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            expanded += list(ast.walk(node)) if isinstance(node, (ast.If, ast.Try)) else [node]
        nodes = expanded
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def test_library_modules_import_neither_rich_nor_the_console():
    offenders = {}
    for name, path in MODULES.items():
        if name in CLI_SIDE:
            continue
        bad = {m for m in _imports(path, top_level_only=False) if m.split(".")[0] == "rich" or m.startswith("dropcov_deploy.console")}
        if bad:
            offenders[name] = sorted(bad)
    assert not offenders, f"library modules that draw on the terminal (move it to dropcov_deploy/render.py): {offenders}"


def test_no_import_cycles_at_import_time():
    graph = {name: {m for m in _imports(path, top_level_only=True) if m in MODULES and m != name} for name, path in MODULES.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, start]
                if nxt not in trail and len(trail) < len(graph):
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [c for c in (cycle_from(name) for name in graph) if c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_the_package():
    assert {"dropcov_deploy.cli", "dropcov_deploy.manifest", "dropcov_deploy.backends", "dropcov_deploy.backends.onnxruntime"} <= set(MODULES)
    assert "dropcov_deploy.backends" in _imports(MODULES["dropcov_deploy.cli"], top_level_only=True)


def test_a_bad_manifest_is_one_line_naming_the_file(tmp_path):
    import pytest

    from dropcov_deploy.errors import InputError
    from dropcov_deploy.manifest import Manifest, sidecar_path

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\0")
    assert Manifest.find(plan) is None  # an engine without a sidecar has no manifest
    sidecar_path(plan).write_text('{"kind": "tensorrt-engine", "precision": "bf16"}')
    with pytest.raises(InputError, match=r"m\.plan\.json: manifest precision 'bf16': use one of fp32, fp16, int8"):
        Manifest.read(plan)
    sidecar_path(plan).unlink()
    sidecar_path(plan).mkdir()
    with pytest.raises(InputError, match=r"m\.plan\.json: cannot read the manifest"):
        Manifest.read(plan)
    old = Manifest.from_dict({"family": "vit", "precision": "fp16", "input": {"name": "input", "shape": ["batch", 3, 32, 32]}})
    assert old.family == "xcov" and old.precision == "fp16" and old.input.image_shape == (3, 32, 32)


def test_manifest_fields_of_the_wrong_type_are_one_line_naming_the_file(tmp_path):
    import json

    import pytest

    from dropcov_deploy.errors import InputError
    from dropcov_deploy.manifest import Manifest, sidecar_path

    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\0")
    good = {"kind": "tensorrt-engine", "precision": "fp16", "num_classes": 2, "class_names": ["a", "b"],
            "input": {"name": "input", "shape": ["batch", 3, 32, 32], "batch": {"dynamic": True, "min": 1, "max": 8}}}
    sidecar_path(plan).write_text(json.dumps(good))
    assert Manifest.read(plan).batch.max == 8
    for change, said in [
        ({"input": 5}, "input must be a dict"),
        ({"input": {"shape": "x"}}, "input.shape must be a list"),
        ({"input": {"shape": ["batch", 3]}}, r"input.shape must be \[batch, channels, height, width\]"),
        ({"input": {"shape": ["batch", 3, 32, 32], "batch": {"min": "x"}}}, "input.batch min and max must be integers"),
        ({"class_names": 7}, "class_names must be a list"),
        ({"class_names": ["a"]}, "class_names must be 2 class names"),
        ({"num_classes": "ten"}, "num_classes must be a int"),
        ({"preprocessing": []}, "preprocessing must be a dict"),
    ]:
        sidecar_path(plan).write_text(json.dumps({**good, **change}))
        with pytest.raises(InputError, match=r"m\.plan\.json: manifest: " + said) as caught:
            Manifest.read(plan)
        assert "\n" not in str(caught.value)


def test_the_ort_optimized_model_never_takes_the_precision_onnx_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from dropcov_deploy.backends.onnxruntime import write_ort_optimized

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    for name, expected in (("m.int8.cpu.onnx", "m.int8.cpu.ort.onnx"), ("x.bin", "x.bin.ort.onnx")):
        path = tmp_path / name
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
        before = path.read_bytes()
        entry = write_ort_optimized(path, tmp_path)
        assert entry["artifact"] == expected and (tmp_path / expected).exists() and path.read_bytes() == before
