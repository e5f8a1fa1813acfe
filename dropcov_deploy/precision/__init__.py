"""Precision work on the ONNX graph: FP16 (AutoCast), INT8 (Q/DQ), calibration.

Precision lives in the ONNX (TensorRT 11 builds only strongly typed networks), so it
is produced and checked here, with ONNX Runtime, on any machine. `Precision` is the
one vocabulary for precisions, shared by build, gates, verify, the backends and the CLI;
this module stays import-light (no numpy, onnx or ModelOpt) so the CLI can use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dropcov_deploy.errors import InputError

if TYPE_CHECKING:  # type hints only: importing them would load numpy and onnx
    from dropcov_deploy.backends import Target
    from dropcov_deploy.precision.calibration import CalibrationSet, ReferencePass
    from dropcov_deploy.steps import StepReporter


class Precision(str, Enum):
    """The precisions an artifact can be built in; the value is what files, options and JSON say."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value

    def __hash__(self) -> int:  # equal to its value, so tables keyed by "fp16" find Precision.FP16
        return hash(self.value)

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)

    @classmethod
    def parse(cls, value: str | Precision, option: str = "--precision") -> Precision:
        """A precision from its name, or one InputError line listing the choices."""
        try:
            return cls(str(value).lower()) if not isinstance(value, cls) else value
        except ValueError:
            raise InputError(f"{option} {str(value)!r}: use one of {', '.join(cls.choices())}") from None

    @property
    def reduced(self) -> bool:
        """Below FP32: needs calibration images (AutoCast's reference run, INT8 ranges)."""
        return self is not Precision.FP32


@dataclass
class PrecisionRequest:
    """Everything a precision module needs to turn the FP32 ONNX into its precision graph."""

    model: Path  # the FP32 export
    target: Target
    calibration: CalibrationSet | None
    reference: ReferencePass | None  # the FP32 graph's logits and fc input range on the calibration set
    step: StepReporter
    work: Path  # scratch folder, removed after the build
    calib_method: str = "entropy"
    fc: str = "auto"
    high_precision: str = "fp16"
    keep_float: tuple[str, ...] = ()  # node names kept in the higher precision (build --keep-float / --exclude-op-types)
    autocast_range_check: bool = True  # False: AutoCast sends every node not named to FP16, whatever its ranges (debugger tests)
    runtimes: tuple[str, ...] = ()  # CPU target INT8: the runtimes to measure (cpu_choice); empty for TensorRT
    qdq_form: str = "auto"  # CPU target INT8: a cpu_choice form, or auto (measured)
    gates: dict[str, dict[str, float]] | None = None  # the INT8 gates a CPU candidate must meet (family overrides applied)


# One module per precision, each with `precision_graph(request) -> (ModelProto, manifest record)`.
GRAPH_BUILDERS = {
    Precision.FP32: "dropcov_deploy.precision.fp32:precision_graph",
    Precision.FP16: "dropcov_deploy.precision.fp16:precision_graph",
    Precision.INT8: "dropcov_deploy.precision.int8:precision_graph",
}


def graph_builder(precision: Precision) -> Callable[[PrecisionRequest], tuple[Any, dict[str, Any]]]:
    module, _, name = GRAPH_BUILDERS[precision].partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["GRAPH_BUILDERS", "Precision", "PrecisionRequest", "graph_builder"]
