"""TensorRT's logger and the ONNX parser's errors, as one-line messages.

`make_logger` keeps TensorRT's errors (for our one exception) and passes each distinct
warning to our `log`. `parser_errors` reads the parser's errors into plain dicts; the
formatting below works on those dicts alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Log = Callable[[str], Any]


def one_line(text: Any) -> str:
    """Collapse whitespace: TensorRT messages can span lines, our errors are one line."""
    return "" if text is None else " ".join(str(text).split())


def logged_reason(errors: Sequence[str], default: str, last: int = 5) -> str:
    """The last `last` errors TensorRT logged, joined; `default` when it logged none."""
    return "; ".join(list(errors)[-last:]) or default


def make_logger(trt, log: Log):
    """A TensorRT logger that keeps errors (for our one exception) and passes warnings to `log`."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.seen: set[str] = set()

        def log(self, severity, msg) -> None:  # called by TensorRT; must not raise
            try:
                text = one_line(msg)
                if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                    self.errors.append(text)
                elif severity == trt.ILogger.Severity.WARNING and text not in self.seen:
                    self.seen.add(text)
                    log(f"TensorRT warning: {text}")
            except Exception:  # noqa: BLE001 - a logger that raises would abort TensorRT
                pass

    return CapturingLogger()


def _value(member: Any) -> Any:
    """ParserError fields are methods in the bindings; tolerate properties too."""
    return member() if callable(member) else member


def parser_errors(parser) -> list[dict[str, Any]]:
    """Every error the ONNX parser recorded, as plain dicts."""
    found = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        record: dict[str, Any] = {
            "code": str(_value(error.code)).split(".")[-1],
            "desc": one_line(_value(error.desc)),
            "node": _value(error.node),
            "node_name": one_line(_value(error.node_name)),
            "node_operator": one_line(_value(error.node_operator)),
            "func": one_line(_value(error.func)),
            "file": one_line(_value(error.file)),
            "line": _value(error.line),
        }
        stack = _value(error.local_function_stack)
        if stack:
            record["local_function_stack"] = [str(s) for s in stack]
        found.append(record)
    return found


def format_parser_error(record: dict[str, Any]) -> str:
    """One parser error (a `parser_errors` dict) as 'node 3 'name' (Op): CODE: desc [func at file:line]'."""
    node = record.get("node")
    where = f"node {node}" if isinstance(node, int) and node >= 0 else "model"
    if record.get("node_name"):
        where += f" {record['node_name']!r}"
    if record.get("node_operator"):
        where += f" ({record['node_operator']})"
    if record.get("local_function_stack"):
        where += f" in function {'/'.join(record['local_function_stack'])}"
    origin = f" [{record['func']} at {Path(str(record['file'])).name}:{record['line']}]" if record.get("func") else ""
    return f"{where}: {record['code']}: {record['desc']}{origin}"


def parser_failure_message(onnx_path: Path, errors: list[dict[str, Any]], logged: Sequence[str]) -> str:
    """The one line for a failed parse: every parser error, numbered; what TensorRT logged when the parser recorded none."""
    details = "; ".join(f"[{i + 1}] {format_parser_error(e)}" for i, e in enumerate(errors)) or "; ".join(logged) or "no details"
    return f"{onnx_path}: TensorRT's ONNX parser failed with {len(errors)} error(s): {details}"
