"""TensorRT's logger and the ONNX parser's errors, as one-line messages.

TensorRT keeps one logger per process: the first Builder or Runtime fixes it, and a
later one created with another ILogger still sends its messages to the first. So this
module holds one logger (`shared_logger`, created on first use) and switches where it
delivers per operation: `capture(trt, log)` installs a fresh `Sink` (a new errors list,
warnings to `log`) for the length of a with-block. The routing (`Sink`, `LogRouter`)
is plain Python on (severity name, message) pairs, so it is tested without TensorRT.
`parser_errors` reads the parser's errors into plain dicts; the formatting below works
on those dicts alone.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Log = Callable[[str], Any]

ERROR_SEVERITIES = ("INTERNAL_ERROR", "ERROR")
WARNING = "WARNING"


def one_line(text: Any) -> str:
    """Collapse whitespace: TensorRT messages can span lines, our errors are one line."""
    return "" if text is None else " ".join(str(text).split())


def logged_reason(errors: Sequence[str], default: str, last: int = 5) -> str:
    """The last `last` errors TensorRT logged, joined; `default` when it logged none."""
    return "; ".join(list(errors)[-last:]) or default


def ignore(_: str) -> None:
    """A `Log` that drops what it is given (a runner has no progress log)."""


def split_errors(errors: Sequence[str], mark: int) -> tuple[list[str], list[str]]:
    """`errors` as (those logged before `mark`, those logged since): keeps one step's errors
    (the timing cache's) apart from the errors of the steps after it (the build's)."""
    items = list(errors)
    return items[:mark], items[mark:]


class Sink:
    """Where TensorRT's messages go during one operation: errors kept (for our one exception),
    each distinct warning passed once to `log`, the rest dropped. `logger` is the shared
    TensorRT logger to hand to Builder, Runtime and OnnxParser (set by `capture`)."""

    def __init__(self, log: Log = ignore, logger: Any = None) -> None:
        self.log = log
        self.logger = logger
        self.errors: list[str] = []
        self.seen: set[str] = set()

    def receive(self, severity: str, message: Any) -> None:
        """One message, its severity by name ("ERROR", "WARNING", ...); what `log` raises, the TensorRT logger swallows."""
        text = one_line(message)
        if severity in ERROR_SEVERITIES:
            self.errors.append(text)
        elif severity == WARNING and text not in self.seen:
            self.seen.add(text)
            self.log(f"TensorRT warning: {text}")

    def mark(self) -> int:
        """Where the errors list stands now (for `take_errors_since`)."""
        return len(self.errors)

    def take_errors_since(self, mark: int) -> list[str]:
        """Remove and return the errors logged since `mark`: a step whose errors are its own."""
        self.errors, since = split_errors(self.errors, mark)
        return since


class LogRouter:
    """Delivers each message to the innermost active sink; with none active, errors are kept
    (the last few, in `unclaimed`) and the rest dropped. Thread-safe: TensorRT logs from its
    own threads while building."""

    def __init__(self, keep_unclaimed: int = 20) -> None:
        self._lock = threading.Lock()
        self._sinks: list[Sink] = []
        self.unclaimed: deque[str] = deque(maxlen=keep_unclaimed)

    def dispatch(self, severity: str, message: Any) -> None:
        with self._lock:
            sink = self._sinks[-1] if self._sinks else None
        if sink is not None:
            sink.receive(severity, message)
        elif severity in ERROR_SEVERITIES:
            self.unclaimed.append(one_line(message))

    @contextmanager
    def use(self, sink: Sink) -> Iterator[Sink]:
        """Send messages to `sink` for the length of the with-block (nested uses stack)."""
        with self._lock:
            self._sinks.append(sink)
        try:
            yield sink
        finally:
            with self._lock:
                self._sinks.remove(sink)


ROUTER = LogRouter()
_SHARED_LOGGER: Any = None


def shared_logger(trt) -> Any:
    """The process's one TensorRT logger (created on first use): every Builder, Runtime and
    OnnxParser gets this one, and it forwards each message to ROUTER."""
    global _SHARED_LOGGER
    if _SHARED_LOGGER is not None:
        return _SHARED_LOGGER
    levels = (
        (trt.ILogger.Severity.INTERNAL_ERROR, "INTERNAL_ERROR"),
        (trt.ILogger.Severity.ERROR, "ERROR"),
        (trt.ILogger.Severity.WARNING, "WARNING"),
    )

    class RoutingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:  # called by TensorRT; must not raise
            try:
                name = next((label for value, label in levels if severity == value), "INFO")
                ROUTER.dispatch(name, msg)
            except Exception:  # noqa: BLE001 - a logger that raises would abort TensorRT
                pass

    _SHARED_LOGGER = RoutingLogger()
    return _SHARED_LOGGER


@contextmanager
def capture(trt, log: Log = ignore) -> Iterator[Sink]:
    """TensorRT's messages during the with-block: errors in the yielded sink's `.errors`,
    distinct warnings to `log`; `.logger` is the shared logger to create TensorRT objects with."""
    with ROUTER.use(Sink(log, shared_logger(trt))) as sink:
        yield sink


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
