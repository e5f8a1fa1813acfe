"""Batch profiles: what the build asks of each input, and the ranges an engine accepts.

`profile_shapes` decides the optimization profile from the network's input shapes
(plain lists, -1 = dynamic); `accepted_range` and `input_shape_problem` decide what a
built engine accepts. The two functions that query TensorRT objects (`engine_range`,
`io_tensors`) only read values and hand them to these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropcov_deploy.errors import BackendUnavailable, InputError

Shape = list[int]
MAX_WORKSPACE_GIB = 4096  # no GPU has more; beyond it (or inf) TensorRT's size_t would overflow


@dataclass(frozen=True)
class BatchProfile:
    """min/opt/max of the batch axis: the engine accepts min..max and is tuned for opt."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        values = (self.min, self.opt, self.max)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise InputError(f"batch profile {values}: min, opt and max must be integers")
        if self.min < 1:
            raise InputError(f"batch profile {self}: batch sizes must be at least 1")
        if not self.min <= self.opt <= self.max:
            raise InputError(f"batch profile {self}: needs min <= opt <= max")

    @classmethod
    def parse(cls, text: str | int) -> BatchProfile:
        """'MIN:OPT:MAX' (e.g. '1:8:32') or a single 'N' (a fixed batch of N)."""
        raw = str(text).strip()
        parts = raw.split(":")
        if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
            raise InputError(f"batch profile {raw!r}: expected MIN:OPT:MAX (e.g. 1:8:32) or one batch size N")
        values = [int(p) for p in parts]
        return cls(*(values * 3 if len(values) == 1 else values))

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


def shape(dims: Any) -> Shape:
    """A TensorRT Dims (or any sequence) as a list of ints."""
    return [int(d) for d in dims]


def profile_shapes(source: Path, inputs: Mapping[str, Sequence[int]], batch: BatchProfile) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The optimization profile for a network whose inputs have these shapes (name -> dims,
    -1 = dynamic): min/opt/max per input with a dynamic batch axis, the batch from `batch`,
    every other axis as the network has it. An input with a fixed batch is left out (it must
    equal `batch`); an empty result means the network needs no profile. InputError (naming
    `source`) for a scalar input, a dynamic non-batch axis, or a fixed batch `batch` cannot meet."""
    shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, dims in inputs.items():
        dims = shape(dims)
        if not dims:
            raise InputError(f"{source}: input {name!r} is a scalar; there is no batch axis to profile")
        if any(d < 0 for d in dims[1:]):
            raise InputError(f"{source}: input {name!r} has dynamic axes besides the batch ({dims}); export with a fixed image size")
        if dims[0] >= 0:
            if (batch.min, batch.max) != (dims[0], dims[0]):
                raise InputError(
                    f"{source}: input {name!r} has a fixed batch of {dims[0]}, so --batch {batch} cannot apply; "
                    f"use --batch {dims[0]} or export with a dynamic batch"
                )
            continue
        rest = dims[1:]
        shapes[name] = ([batch.min, *rest], [batch.opt, *rest], [batch.max, *rest])
    return shapes


def accepted_range(fixed: Sequence[int], profile: Sequence[Sequence[int]] | None) -> tuple[Shape, Shape, Shape]:
    """What an engine input accepts: profile 0's (min, opt, max) when it is a complete range of
    the input's rank, else its fixed shape (no profile: the engine was built for one shape)."""
    fixed = shape(fixed)
    if profile is None:
        return fixed, fixed, fixed
    dims = [shape(d) for d in profile]
    if len(dims) != 3 or any(len(d) != len(fixed) or any(n < 0 for n in d) for d in dims):
        return fixed, fixed, fixed
    low, best, high = dims
    return low, best, high


def input_shape_problem(path: Path, name: str, dims: Sequence[int], low: Sequence[int], high: Sequence[int]) -> str | None:
    """Why an input of shape `dims` cannot run on an engine that accepts `low` to `high` (None: it can)."""
    dims, low, high = shape(dims), shape(low), shape(high)
    if len(dims) != len(low) or any(not lo <= n <= hi for n, lo, hi in zip(dims, low, high)):
        return f"{path}: input {name!r} has shape {dims}; the engine accepts {low} to {high}"
    return None


def engine_range(engine, name: str) -> tuple[Shape, Shape, Shape]:
    """Profile 0's min/opt/max for an engine input; its fixed shape when the engine has no range for it."""
    try:
        profile = [shape(dims) for dims in engine.get_tensor_profile_shape(name, 0)]
    except (RuntimeError, ValueError, TypeError):
        profile = None
    return accepted_range(engine.get_tensor_shape(name), profile)


def inspection_shapes(io: Sequence[Mapping[str, Any]]) -> dict[str, Shape]:
    """The input shapes to set on the execution context the engine inspector reads: each dynamic
    input (a -1 in its shape) at its profile's opt shape (`io_tensors` records); fixed inputs need none."""
    shapes: dict[str, Shape] = {}
    for record in io:
        if record.get("mode") == "input" and any(d < 0 for d in shape(record["shape"])):
            shapes[str(record["name"])] = shape(record["profile"]["opt"])
    return shapes


def io_tensors(trt, engine) -> list[dict[str, Any]]:
    """Name, mode, shape (-1 = dynamic), dtype and profile 0's min/opt/max of every I/O tensor."""
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        record: dict[str, Any] = {
            "name": name,
            "mode": "input" if is_input else "output",
            "shape": shape(engine.get_tensor_shape(name)),
            "dtype": engine.get_tensor_dtype(name).name,
        }
        if is_input:
            low, best, high = engine_range(engine, name)
            record["profile"] = {"min": low, "opt": best, "max": high}
        tensors.append(record)
    return tensors


def check_workspace(workspace_gib: float | None) -> None:
    """The builder's workspace limit, when given, must be a positive number of GiB."""
    if workspace_gib is not None and not 0 < workspace_gib <= MAX_WORKSPACE_GIB:
        raise InputError(f"workspace {workspace_gib} GiB: must be a positive number of GiB up to {MAX_WORKSPACE_GIB}")


MAX_BUILDER_OPTIMIZATION_LEVEL = 5  # IBuilderConfig.builder_optimization_level: 0..5, default 3


def check_builder_options(builder_optimization_level: int | None, dla_core: int | None) -> None:
    """The builder's optimization level (0..5; TensorRT's default is 3) and DLA core (>= 0), when given;
    InputError otherwise, before any build starts. Whether the DLA core exists is `check_dla_core`'s job."""
    for name, value in (("builder optimization level", builder_optimization_level), ("DLA core", dla_core)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InputError(f"{name} {value!r}: must be an integer")
    if builder_optimization_level is not None and not 0 <= builder_optimization_level <= MAX_BUILDER_OPTIMIZATION_LEVEL:
        raise InputError(f"builder optimization level {builder_optimization_level}: must be 0 to {MAX_BUILDER_OPTIMIZATION_LEVEL} (TensorRT's default is 3)")
    if dla_core is not None and dla_core < 0:
        raise InputError(f"DLA core {dla_core}: must be 0 or more")


def check_dla_core(dla_core: int, available: int) -> None:
    """DLA core `dla_core` on a builder that reports `available` (Builder.num_DLA_cores) cores:
    BackendUnavailable (exit 3) when this machine has no DLA (only Jetson AGX/NX Xavier and Orin
    have one), InputError (exit 2) for a core number it does not have."""
    if available <= 0:
        raise BackendUnavailable(f"DLA core {dla_core}: this GPU has no DLA (TensorRT reports 0 DLA cores; DLA exists on Jetson AGX/NX only)")
    if dla_core >= available:
        raise InputError(f"DLA core {dla_core}: this machine has {available} DLA core(s), numbered 0 to {available - 1}")
