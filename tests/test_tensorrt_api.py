"""Every TensorRT name our backend uses exists in the real 10.x and 11.x Python bindings.

TensorRT cannot be imported here (no libraries, no GPU), so the bindings' names were
read from the wheels on PyPI by scripts/tensorrt_names.py into tests/data/tensorrt_names/
(<version>.txt, provenance in README.md there). This test parses every module of the
package dropcov_deploy/backends/tensorrt/ with `ast`, collects every attribute read from
the `trt` module and from TensorRT objects (by the naming convention the package's
docstring states), and checks them against a reviewed list and against each version's names.
A new TensorRT call therefore fails here until someone reviews it, and a name the real
bindings lack (a 10.x-only flag used on 11.x, say) fails for that version.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dropcov_deploy" / "backends" / "tensorrt"
SOURCES = sorted(PACKAGE.glob("*.py"))
NAMES_DIR = Path(__file__).parent / "data" / "tensorrt_names"

# Variables (and `self._<name>` attributes) that hold the tensorrt module or its objects.
TRT_ROOTS = {
    "trt", "builder", "network", "config", "parser", "optimization_profile", "cache",
    "runtime", "engine", "context", "inspector", "error", "tensor",
}

# Reviewed: names used on both 10.x and 11.x, each checked against the API docs
# (docs.nvidia.com/deeplearning/tensorrt/{10.x,11.x}/_static/python-api) and Polygraphy.
COMMON = {
    # module level
    "__version__", "Builder", "Runtime", "OnnxParser", "ILogger", "__init__", "Severity",
    "INTERNAL_ERROR", "ERROR", "WARNING", "log", "nptype",
    "MemoryPoolType", "WORKSPACE", "ProfilingVerbosity", "DETAILED",
    "LayerInformationFormat", "JSON", "TensorIOMode", "INPUT",
    # Builder, IBuilderConfig, IOptimizationProfile, ITimingCache
    "create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network",
    "set_memory_pool_limit", "profiling_verbosity", "add_optimization_profile", "set_shape",
    "create_timing_cache", "set_timing_cache", "get_timing_cache", "serialize",
    # INetworkDefinition, ITensor
    "num_inputs", "get_input", "shape", "name",
    # OnnxParser, ParserError
    "parse_from_file", "num_errors", "get_error",
    "code", "desc", "node", "node_name", "node_operator", "func", "file", "line", "local_function_stack",
    # Runtime, ICudaEngine, IEngineInspector, IExecutionContext
    "deserialize_cuda_engine", "create_engine_inspector", "get_engine_information",
    "num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_shape", "get_tensor_dtype",
    "get_tensor_profile_shape", "create_execution_context",
    "set_input_shape", "set_tensor_address", "execute_async_v3",
    # Checked in python/src/infer/pyCore.cpp at NVIDIA/TensorRT tags v10.3.0, v10.16 and v11.0:
    # EngineInspector.execution_context (def_property; the inspector reads formats with it attached),
    # IBuilderConfig.builder_optimization_level / default_device_type / DLA_core / set_flag,
    # Builder.num_DLA_cores, DeviceType.DLA, BuilderFlag.GPU_FALLBACK, ICudaEngine.device_memory_size_v2.
    "execution_context", "builder_optimization_level", "default_device_type", "DeviceType", "DLA", "DLA_core",
    "set_flag", "BuilderFlag", "GPU_FALLBACK", "num_DLA_cores", "device_memory_size_v2",
}
# Used only under `if tensorrt_major(trt) < 11`: 11.x makes every network strongly typed and
# deprecates the flag (still exported, ignored); see docs.nvidia.com/deeplearning/tensorrt/
# 11.0.0/_static/python-api/infer/Core/Builder.html.
ONLY_10 = {"NetworkDefinitionCreationFlag", "STRONGLY_TYPED",
           # ICudaEngine.device_memory_size: bound in v10.3.0 and v10.16, gone in v11.0 (device_memory_size_v2 stays)
           "device_memory_size"}
# Used only in the 11.x branch (none: 11.x's create_network() needs no new name).
ONLY_11: set[str] = set()
# Names stored only as the tail of a longer string literal (the linker merges "Builder"
# into "IExprBuilder"); reviewed against the API docs, with an example host string.
TAIL_MERGED = {
    "Builder": "IExprBuilder",
    "Runtime": "IPluginV3OneRuntime",
    "ERROR": "INTERNAL_ERROR",
    "INPUT": "CONDITIONAL_INPUT",
    "num_errors": "get_num_errors",
    "serialize": "plugins_to_serialize",
    "code": "get_error_code",
    "desc": "get_error_desc",
    "file": "parse_from_file",
    "shape": "get_shape",  # ITensor.shape: a tail in the 10.x modules, a string of its own in 11.4
    "execution_context": "create_execution_context",  # EngineInspector.execution_context (pyCore.cpp, 10.3 to 11.x)
}


# ---------------------------------------------------------------------------------------
# The collector
# ---------------------------------------------------------------------------------------
def _root(node: ast.AST) -> str | None:
    """The variable an attribute/call/subscript chain starts from ('self._x' for self attributes)."""
    while True:
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return f"self.{node.attr}"
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def _is_trt(root: str | None, tainted: set[str]) -> bool:
    if root is None:
        return False
    if root.startswith("self."):
        return root in tainted or root[len("self.") :].lstrip("_") in TRT_ROOTS
    return root in tainted


def _targets(target: ast.AST) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
        return [f"self.{target.attr}"]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _targets(element)]
    return []


def collect_trt_names(tree: ast.AST) -> dict[str, list[int]]:
    """Attribute names read from the trt module or TensorRT objects -> line numbers.

    A variable becomes a TensorRT object when it is one of TRT_ROOTS or is assigned
    directly from a chain rooted at one (`dtype = engine.get_tensor_dtype(n)`); a call
    through our own function (`_value(error.desc)`, `str(...)`) ends the chain. Methods
    defined in a class derived from a trt class (our ILogger's `log`) count as used.
    """
    tainted = set(TRT_ROOTS)
    changed = True
    while changed:
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                if isinstance(node.value, (ast.Attribute, ast.Call, ast.Subscript, ast.Name)) and _is_trt(_root(node.value), tainted):
                    for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        for name in _targets(target):
                            if name not in tainted:
                                tainted.add(name)
                                changed = True
    used: dict[str, list[int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_trt(_root(node.value), tainted):
            used.setdefault(node.attr, []).append(node.lineno)
        if isinstance(node, ast.ClassDef) and any(_is_trt(_root(base), tainted) for base in node.bases):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    used.setdefault(item.name, []).append(item.lineno)
    return used


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}


def _version_branch(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> str | None:
    """'10' inside `if tensorrt_major(trt) < 11:`, '11' after it (else or the code following an early return)."""
    child = node
    while child in parents:
        parent = parents[child]
        if isinstance(parent, ast.If) and "tensorrt_major(" in ast.unparse(parent.test) and "< 11" in ast.unparse(parent.test):
            return "10" if child in parent.body else "11"
        child = parent
    return None


# ---------------------------------------------------------------------------------------
# The names files
# ---------------------------------------------------------------------------------------
def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in path.stem.split(".") if p.isdigit())


NAME_FILES = sorted(NAMES_DIR.glob("*.txt"), key=_version_key)


def _names(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def _present(name: str, names: set[str]) -> bool:
    """Exactly recorded, or (reviewed) stored as the tail of a longer recorded string."""
    if name in names:
        return True
    return name in TAIL_MERGED and any(other.endswith(name) for other in names)


def _required(version: Path) -> set[str]:
    return COMMON | (ONLY_10 if _version_key(version)[0] < 11 else ONLY_11)


@pytest.fixture(scope="module")
def trees() -> dict[str, ast.AST]:
    """Each module of the package, parsed (file name -> tree)."""
    return {path.name: ast.parse(path.read_text(), filename=str(path)) for path in SOURCES}


@pytest.fixture(scope="module")
def used(trees) -> dict[str, list[str]]:
    """Every TensorRT name the package uses -> where ('builder.py:42'). Each module is collected
    on its own: a variable's TensorRT-ness does not cross files (functions hand over objects
    under the conventional names)."""
    found: dict[str, list[str]] = {}
    for filename, tree in trees.items():
        for name, lines in collect_trt_names(tree).items():
            found.setdefault(name, []).extend(f"{filename}:{line}" for line in lines)
    return found


def test_the_package_modules_are_all_read():
    names = {path.name for path in SOURCES}
    assert {"__init__.py", "availability.py", "builder.py", "inspector.py", "profile.py", "runner.py"} <= names, names
    assert not (ROOT / "dropcov_deploy" / "backends" / "tensorrt.py").exists(), "the old single-file module is back"


def test_name_files_cover_a_10x_from_10_3_and_an_11x():
    majors = [_version_key(p) for p in NAME_FILES]
    assert any(v[0] == 10 and v[1] >= 3 for v in majors), [p.name for p in NAME_FILES]
    assert any(v[0] == 11 for v in majors), [p.name for p in NAME_FILES]
    for path in NAME_FILES:
        names = _names(path)
        assert 500 < len(names) < 20000, f"{path.name}: {len(names)} names; regenerate with scripts/tensorrt_names.py"
        assert all(name.isidentifier() for name in names), f"{path.name}: holds non-identifiers"


def test_name_files_record_the_11x_removals():
    """The files tell 10.x from 11.x: the weak-typing API exists in every 10.x file and no 11.x one."""
    removed_in_11 = {"int8_calibrator", "EXPLICIT_BATCH", "platform_has_fast_fp16", "OBEY_PRECISION_CONSTRAINTS"}
    for path in NAME_FILES:
        names = _names(path)
        if _version_key(path)[0] < 11:
            assert removed_in_11 <= names, (path.name, removed_in_11 - names)
        else:
            assert not removed_in_11 & names, (path.name, removed_in_11 & names)


def test_collector_sees_the_calls_the_backend_is_built_on(used):
    # A guard for the collector itself: if these vanish, the naming convention broke.
    for name in ("Builder", "create_network", "parse_from_file", "build_serialized_network", "execute_async_v3",
                 "set_tensor_address", "get_engine_information", "STRONGLY_TYPED", "ILogger", "log"):
        assert name in used, name


def test_every_used_name_is_reviewed(used):
    reviewed = COMMON | ONLY_10 | ONLY_11
    unreviewed = {name: lines for name, lines in used.items() if name not in reviewed}
    assert not unreviewed, (
        f"TensorRT names used in {PACKAGE.name}/ but not reviewed (name: file:line): {unreviewed}. Check each in the "
        "10.x and 11.x Python API docs, then add it to COMMON, ONLY_10 or ONLY_11 in this file."
    )
    stale = reviewed - set(used)
    assert not stale, f"reviewed names no longer used by {PACKAGE.name}/: {sorted(stale)}; remove them here"
    assert set(TAIL_MERGED) <= set(used), sorted(set(TAIL_MERGED) - set(used))


def test_version_specific_names_are_guarded_by_a_version_check(trees):
    for filename, tree in trees.items():
        parents = _parents(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ONLY_10 | ONLY_11:
                branch = _version_branch(node, parents)
                expected = "10" if node.attr in ONLY_10 else "11"
                assert branch == expected, f"{filename}:{node.lineno}: {node.attr} is {expected}.x-only but is used outside its version branch"


@pytest.mark.parametrize("version", NAME_FILES, ids=lambda p: p.stem)
def test_used_names_exist_in_the_real_bindings(version, used):
    names = _names(version)
    needed = _required(version) & set(used)
    missing = sorted(name for name in needed if not _present(name, names))
    assert not missing, f"TensorRT {version.stem} bindings lack {missing} (used by {PACKAGE.name}/)"


@pytest.mark.parametrize("version", NAME_FILES, ids=lambda p: p.stem)
def test_tail_merged_names_are_the_reviewed_ones(version, used):
    """A name found only inside a longer string must be one a reviewer looked at."""
    names = _names(version)
    tail_only = {name for name in _required(version) & set(used) if name not in names}
    assert tail_only <= set(TAIL_MERGED), f"{version.stem}: {sorted(tail_only - set(TAIL_MERGED))} only occur as tails; review them"
    for name in tail_only:
        assert any(other.endswith(name) for other in names), (version.stem, name)
