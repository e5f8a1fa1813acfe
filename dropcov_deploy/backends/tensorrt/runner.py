"""Run a TensorRT plan: the `Runner` protocol, plus `DeviceTimed` (GPU time by CUDA events).

CUDA memory, streams, events and graphs go through ctypes on libcudart
(`dropcov_deploy.backends.cuda`), as Polygraphy does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dropcov_deploy.backends.tensorrt.availability import create_runtime, cuda_runtime, import_tensorrt, plan_mismatch, tensorrt_major
from dropcov_deploy.backends.tensorrt.errors import TensorRTRunError
from dropcov_deploy.backends.tensorrt.log import capture, logged_reason
from dropcov_deploy.backends.tensorrt.profile import engine_range, input_shape_problem, io_tensors, shape
from dropcov_deploy.errors import BackendUnavailable, InputError
from dropcov_deploy.manifest import Manifest

BACKEND = "tensorrt"


def feed_problem(path: Path, input_names: Sequence[str], feeds: Sequence[str]) -> str | None:
    """Why these feed names cannot run an engine with these inputs (None: they match)."""
    missing = [n for n in input_names if n not in feeds]
    unknown = [n for n in feeds if n not in input_names]
    if missing or unknown:
        return f"{path}: inputs {sorted(feeds)} do not match the engine's {list(input_names)}"
    return None


def engine_device_memory(trt, engine) -> int | None:
    """Bytes of device memory an execution context of `engine` needs: device_memory_size_v2
    (10.x from 10.1, and 11.x, where the old device_memory_size is gone), else the old property on 10.x."""
    try:
        return int(engine.device_memory_size_v2)
    except AttributeError:
        pass
    if tensorrt_major(trt) < 11:
        return int(engine.device_memory_size)
    return None


class TensorRTRunner:
    """Runs a TensorRT plan: infer(dict of arrays) -> dict of arrays, like OnnxRuntimeRunner.

    `last_gpu_ms` is the GPU time of the last execute_async_v3 (CUDA events around it,
    copies excluded). `device_timer(batch)` places a batch on the GPU once and returns a
    call that re-runs the engine on it (`infer_device_only`) and returns GPU milliseconds,
    for benchmarks that separate GPU compute from host latency. With `cuda_graph`, that
    call replays a CUDA graph of one enqueue (captured once per timer, as trtexec's
    --useCudaGraph does) instead of enqueuing, which removes the host's launch overhead.

    Report facts: `deserialize_seconds`, `device_memory_bytes` (what one execution context
    needs; None when TensorRT does not say), `plan_bytes`. `warnings` holds one-line
    messages for the caller to log (a plan built on another GPU of the same compute capability).
    """

    backend = BACKEND
    timing = "host wall clock (copies in, GPU run, copies out; synchronised)"
    device_timing = "GPU compute (CUDA events)"

    def __init__(self, plan_path: Path, cuda_graph: bool = False) -> None:
        self.path = Path(plan_path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such engine file")
        self.manifest: Manifest | None = Manifest.find(self.path)
        self.cuda_graph = bool(cuda_graph)
        self._graph = 0  # the instantiated CUDA graph of the current device timer (cudaGraphExec_t)
        trt = import_tensorrt()
        self._cuda = cuda_runtime()
        self._trt = trt
        fit = plan_mismatch(self.path, self.manifest, str(trt.__version__), self._cuda.compute_capability(), self._cuda.device_name())
        if fit.error:
            raise InputError(fit.error)
        self.warnings: list[str] = [fit.warning] if fit.warning else []
        data = self.path.read_bytes()
        self.plan_bytes = len(data)
        with capture(trt) as sink:
            self._runtime = create_runtime(trt, sink)
            started = time.perf_counter()
            self._engine = self._runtime.deserialize_cuda_engine(data)
            self.deserialize_seconds = time.perf_counter() - started
            if self._engine is None:
                reason = logged_reason(sink.errors, "not a TensorRT plan", last=3)
                raise InputError(f"{self.path}: TensorRT {trt.__version__} cannot load this engine ({reason})")
            self._context = self._engine.create_execution_context()
            if self._context is None:
                reason = logged_reason(sink.errors, "GPU memory?", last=3)
                raise BackendUnavailable(f"{self.path}: could not create an execution context ({reason})")
        del data
        self.device_memory_bytes: int | None = engine_device_memory(trt, self._engine)
        self._stream = self._cuda.stream_create()
        self._start = self._cuda.event_create()
        self._end = self._cuda.event_create()
        self._buffers: dict[str, Any] = {}
        self.io = io_tensors(trt, self._engine)
        self.input_names = [t["name"] for t in self.io if t["mode"] == "input"]
        self.output_names = [t["name"] for t in self.io if t["mode"] == "output"]
        self._dtypes = {t["name"]: self._numpy_dtype(t["name"]) for t in self.io}
        self._placed = 0  # how many times inputs were placed on the GPU (infer calls)
        self.last_gpu_ms: float | None = None

    def input_shapes(self) -> dict[str, list[Any]]:
        """Each input's shape as the engine declares it (-1 = dynamic, within its profile)."""
        return {t["name"]: list(t["shape"]) for t in self.io if t["mode"] == "input"}

    def _numpy_dtype(self, name: str) -> np.dtype:
        dtype = self._engine.get_tensor_dtype(name)
        try:
            return np.dtype(self._trt.nptype(dtype))
        except TypeError:
            raise InputError(f"{self.path}: I/O tensor {name!r} is {dtype.name}, which numpy cannot hold") from None

    def _buffer(self, name: str):
        from dropcov_deploy.backends.cuda import DeviceBuffer

        if name not in self._buffers:
            self._buffers[name] = DeviceBuffer(self._cuda)
        return self._buffers[name]

    def _set_input(self, name: str, array: np.ndarray) -> None:
        low, _, high = engine_range(self._engine, name)
        problem = input_shape_problem(self.path, name, array.shape, low, high)
        if problem:
            raise InputError(problem)
        if not self._context.set_input_shape(name, array.shape):
            raise InputError(f"{self.path}: TensorRT refused input shape {list(array.shape)} for {name!r}")

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy inputs in, run the engine, copy outputs out; synchronised before returning."""
        self._require_open()
        problem = feed_problem(self.path, self.input_names, list(feeds))
        if problem:
            raise InputError(problem)
        cuda, stream = self._cuda, self._stream
        hosts = {name: np.ascontiguousarray(feeds[name], dtype=self._dtypes[name]) for name in self.input_names}
        for name, array in hosts.items():
            self._set_input(name, array)
        outputs: dict[str, np.ndarray] = {}
        for name in self.output_names:
            dims = tuple(shape(self._context.get_tensor_shape(name)))
            if any(d < 0 for d in dims):
                raise InputError(f"{self.path}: output {name!r} shape {list(dims)} is unresolved after setting the inputs")
            outputs[name] = np.empty(dims, dtype=self._dtypes[name])
        for name, array in (*hosts.items(), *outputs.items()):
            pointer = self._buffer(name).ensure(array.nbytes)
            if not self._context.set_tensor_address(name, pointer):
                raise InputError(f"{self.path}: TensorRT refused the device address for {name!r}")
        for name, array in hosts.items():
            cuda.memcpy_htod_async(self._buffers[name].pointer, array.ctypes.data, array.nbytes, stream)
        self._placed += 1
        self._execute()
        for name, array in outputs.items():
            cuda.memcpy_dtoh_async(array.ctypes.data, self._buffers[name].pointer, array.nbytes, stream)
        cuda.stream_synchronize(stream)
        self.last_gpu_ms = cuda.event_elapsed_ms(self._start, self._end)
        return outputs

    def _require_open(self) -> None:
        if getattr(self, "_context", None) is None or getattr(self, "_cuda", None) is None:
            raise InputError(f"{self.path}: this TensorRT runner is closed")

    def _execute(self) -> None:
        cuda = self._cuda
        cuda.event_record(self._start, self._stream)
        with capture(self._trt) as sink:
            if not self._context.execute_async_v3(self._stream):
                raise TensorRTRunError(f"{self.path}: execute_async_v3 failed: {logged_reason(sink.errors, 'no details', last=3)}")
        cuda.event_record(self._end, self._stream)

    def _capture_graph(self) -> None:
        """Capture one enqueue on the placed inputs in a CUDA graph (kept in `_graph`). TensorRT needs
        one enqueue with these shapes before capture (it does deferred setup on the first one, which a
        graph must not record): infer() just did it. Some engines cannot be captured (execute_async_v3
        returns false while capturing): TensorRTRunError (exit 4), naming the way out."""
        cuda = self._cuda
        self._release_graph()
        cuda.stream_synchronize(self._stream)
        with capture(self._trt) as sink:
            cuda.stream_begin_capture(self._stream)
            try:
                enqueued = self._context.execute_async_v3(self._stream)
            finally:
                graph = cuda.stream_end_capture(self._stream)
            if not enqueued or not graph:
                cuda.graph_destroy(graph)
                reason = logged_reason(sink.errors, "the capture was invalidated", last=3)
                raise TensorRTRunError(f"{self.path}: this engine cannot be captured in a CUDA graph ({reason}); time it without cuda_graph")
        try:
            self._graph = cuda.graph_instantiate(graph)
        finally:
            cuda.graph_destroy(graph)

    def _release_graph(self) -> None:
        graph, self._graph = getattr(self, "_graph", 0), 0
        if graph and getattr(self, "_cuda", None) is not None:
            self._cuda.graph_exec_destroy(graph)

    def _replay_graph(self) -> float:
        """Launch the captured graph between the CUDA events; its GPU milliseconds."""
        cuda = self._cuda
        cuda.event_record(self._start, self._stream)
        cuda.graph_launch(self._graph, self._stream)
        cuda.event_record(self._end, self._stream)
        cuda.event_synchronize(self._end)
        self.last_gpu_ms = cuda.event_elapsed_ms(self._start, self._end)
        return self.last_gpu_ms

    def infer_device_only(self) -> float:
        """Re-run the engine on the inputs already on the GPU; returns (and keeps) its GPU milliseconds."""
        self._require_open()
        if not self._placed:
            raise InputError("infer_device_only() needs one infer() first, to place inputs on the GPU")
        self._execute()
        self._cuda.event_synchronize(self._end)
        self.last_gpu_ms = self._cuda.event_elapsed_ms(self._start, self._end)
        return self.last_gpu_ms

    def device_timer(self, batch: np.ndarray) -> Callable[[], float]:
        """Place `batch` on the GPU (one full run: shapes, addresses, copies); the returned call
        re-runs the engine on it and returns the GPU milliseconds (CUDA events, copies excluded).
        With `cuda_graph`, the engine is captured in a CUDA graph here (after that first run) and
        the call replays it. It refuses to run once another infer() has replaced the inputs."""
        self(batch)
        placed = self._placed
        if self.cuda_graph:
            self._capture_graph()

        def run() -> float:
            self._require_open()
            if self._placed != placed:
                raise InputError(f"{self.path}: another infer() replaced the batch this timer placed; call device_timer again")
            if self.cuda_graph:
                return self._replay_graph()
            return self.infer_device_only()

        return run

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """The single-input, single-output case: images in, logits out."""
        return self.infer({self.input_names[0]: batch})[self.output_names[0]]

    def close(self) -> None:
        """Free device memory, events and the stream; drop the context before the engine."""
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        if getattr(self, "_stream", 0):
            cuda.stream_synchronize(self._stream)
        self._release_graph()
        for buffer in getattr(self, "_buffers", {}).values():
            buffer.free()
        self._buffers = {}
        for attr in ("_start", "_end"):
            cuda.event_destroy(getattr(self, attr, 0))
            setattr(self, attr, 0)
        cuda.stream_destroy(getattr(self, "_stream", 0))
        self._stream = 0
        self._context = None
        self._engine = None
        self._runtime = None
        self._placed = 0
        self._cuda = None

    def __enter__(self) -> TensorRTRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass


def open_runner(path: Path, device: str = "cpu", threads: int | None = None, cuda_graph: bool = False) -> TensorRTRunner:
    """The Target hook: a TensorRTRunner for the plan at `path` (`cuda_graph`: its device timer
    replays a CUDA graph). An engine runs on the GPU it was built for; `device` and `threads`
    (ONNX Runtime's options) do not apply and are ignored."""
    return TensorRTRunner(Path(path), cuda_graph=cuda_graph)
