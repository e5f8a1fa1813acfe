"""The few CUDA runtime calls the TensorRT backend needs, through ctypes on libcudart.

Why ctypes: TensorRT only needs device pointers and a stream handle, and the edge
boards (JetPack) ship libcudart but rarely a matching torch, pycuda or cuda-python.
Polygraphy's `polygraphy/cuda/cuda.py` does the same. Nothing is loaded at import:
`runtime()` finds and opens the library on first use and raises BackendUnavailable
(exit code 3) with one line when there is no library, no driver or no GPU. A CUDA call
that fails after that raises CudaError, a BackendFailed (exit code 4): the GPU is there
but failed while it ran (out of memory, a launch error), not missing.

Signatures follow cuda_runtime_api.h (CUDA 12 and 13); every function gets explicit
argtypes so 64-bit pointers are never truncated to C ints.

CUDA graphs (stream capture) are bound on first use (`_graph_api`), so a libcudart without
them still serves everything else. The executable graph is made with
cudaGraphInstantiateWithFlags(cudaGraphExec_t*, cudaGraph_t, unsigned long long flags):
one signature in CUDA 11.4 to 13. cudaGraphInstantiate itself changed in CUDA 12 (11.x:
pErrorNode, pLogBuffer, bufferSize; 12 and 13: unsigned long long flags), so calling it
through ctypes would depend on which libcudart was found.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from dropcov_deploy.errors import BackendFailed, BackendUnavailable

# cudaMemcpyKind
HOST_TO_DEVICE = 1
DEVICE_TO_HOST = 2
# cudaDeviceAttr (driver_types.h)
ATTR_COMPUTE_CAPABILITY_MAJOR = 75
ATTR_COMPUTE_CAPABILITY_MINOR = 76
# cudaError_t values worth naming in a message
ERROR_INSUFFICIENT_DRIVER = 35
ERROR_NO_DEVICE = 100
ERROR_STREAM_CAPTURE_INVALIDATED = 901  # cudaErrorStreamCaptureInvalidated: the capture failed, no graph
# cudaStreamCaptureMode: ThreadLocal (as trtexec captures): only this thread's unsafe calls break the capture
STREAM_CAPTURE_MODE_THREAD_LOCAL = 1
# sizeof(cudaDeviceProp) is about 1 KiB and grows between releases; only `char name[256]`
# at offset 0 is read, so a generous buffer covers every version.
DEVICE_PROP_BYTES = 16384

SONAMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")
# Where pip wheels put libcudart: nvidia-cuda-runtime-cu12 -> nvidia/cuda_runtime/lib,
# nvidia-cuda-runtime (CUDA 13) -> nvidia/cu13/lib.
WHEEL_DIRS = ("nvidia/cuda_runtime/lib", "nvidia/cu13/lib", "nvidia/cu12/lib")
TOOLKIT_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib", "/usr/local/cuda/targets/x86_64-linux/lib")


def candidate_libraries() -> list[str]:
    """libcudart candidates, most specific first: pip wheels, then what the loader finds, then toolkits."""
    found: list[str] = []
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            for sub in WHEEL_DIRS:
                found += sorted(glob.glob(os.path.join(entry, sub, "libcudart.so*")), reverse=True)
    found += list(SONAMES)
    for folder in (*os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep), *TOOLKIT_DIRS):
        if folder and os.path.isdir(folder):
            found += sorted(glob.glob(os.path.join(folder, "libcudart.so*")), reverse=True)
    unique = [path for path in dict.fromkeys(found) if not path.endswith((".a", ".py"))]
    return unique


class CudaError(BackendFailed):
    """A CUDA runtime call failed while running (exit code 4: the GPU failed, not the user's input;
    a missing library, driver or GPU is `runtime()`'s BackendUnavailable, exit code 3)."""


class CudaRuntime:
    """One opened libcudart with typed entry points. Use `runtime()`, not this constructor."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = ctypes.CDLL(path)
        c_int_p = ctypes.POINTER(ctypes.c_int)
        void_pp = ctypes.POINTER(ctypes.c_void_p)
        signatures = {
            "cudaGetErrorString": (ctypes.c_char_p, [ctypes.c_int]),
            "cudaRuntimeGetVersion": (ctypes.c_int, [c_int_p]),
            "cudaDriverGetVersion": (ctypes.c_int, [c_int_p]),
            "cudaGetDeviceCount": (ctypes.c_int, [c_int_p]),
            "cudaGetDevice": (ctypes.c_int, [c_int_p]),
            "cudaDeviceGetAttribute": (ctypes.c_int, [c_int_p, ctypes.c_int, ctypes.c_int]),
            "cudaMalloc": (ctypes.c_int, [void_pp, ctypes.c_size_t]),
            "cudaFree": (ctypes.c_int, [ctypes.c_void_p]),
            "cudaMemcpyAsync": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]),
            "cudaStreamCreate": (ctypes.c_int, [void_pp]),
            "cudaStreamDestroy": (ctypes.c_int, [ctypes.c_void_p]),
            "cudaStreamSynchronize": (ctypes.c_int, [ctypes.c_void_p]),
            "cudaEventCreate": (ctypes.c_int, [void_pp]),
            "cudaEventDestroy": (ctypes.c_int, [ctypes.c_void_p]),
            "cudaEventRecord": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]),
            "cudaEventSynchronize": (ctypes.c_int, [ctypes.c_void_p]),
            "cudaEventElapsedTime": (ctypes.c_int, [ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_void_p]),
        }
        for name, (restype, argtypes) in signatures.items():
            function = getattr(self.lib, name)
            function.restype, function.argtypes = restype, argtypes
        # CUDA 12 headers map cudaGetDeviceProperties to the _v2 symbol; CUDA 13 has only the plain one.
        props = getattr(self.lib, "cudaGetDeviceProperties_v2", None) or self.lib.cudaGetDeviceProperties
        props.restype, props.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]
        self._get_device_properties = props
        self._graph_functions: dict[str, Any] | None = None

    def _graph_api(self, name: str) -> Any:
        """A CUDA graph entry point, typed on first use; CudaError when this libcudart lacks graphs."""
        if self._graph_functions is None:
            void_pp = ctypes.POINTER(ctypes.c_void_p)
            signatures = {
                "cudaStreamBeginCapture": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
                "cudaStreamEndCapture": (ctypes.c_int, [ctypes.c_void_p, void_pp]),
                "cudaGraphInstantiateWithFlags": (ctypes.c_int, [void_pp, ctypes.c_void_p, ctypes.c_ulonglong]),
                "cudaGraphLaunch": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]),
                "cudaGraphExecDestroy": (ctypes.c_int, [ctypes.c_void_p]),
                "cudaGraphDestroy": (ctypes.c_int, [ctypes.c_void_p]),
                "cudaGetLastError": (ctypes.c_int, []),
            }
            functions: dict[str, Any] = {}
            for symbol, (restype, argtypes) in signatures.items():
                function = getattr(self.lib, symbol, None)
                if function is None:
                    raise CudaError(f"CUDA graphs unavailable: {Path(self.path).name} has no {symbol} (CUDA 11.4 or later needed)")
                function.restype, function.argtypes = restype, argtypes
                functions[symbol] = function
            self._graph_functions = functions
        return self._graph_functions[name]

    # -- errors and versions -------------------------------------------------------------
    def error_string(self, status: int) -> str:
        text = self.lib.cudaGetErrorString(status)
        return text.decode(errors="replace") if text else f"CUDA error {status}"

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise CudaError(f"CUDA {what} failed: {self.error_string(status)} (error {status})")

    def _int_query(self, function, what: str) -> int:
        value = ctypes.c_int()
        self.check(function(ctypes.byref(value)), what)
        return value.value

    def runtime_version(self) -> str:
        """The libcudart version as 'major.minor' (cudaRuntimeGetVersion: 1000*major + 10*minor)."""
        value = self._int_query(self.lib.cudaRuntimeGetVersion, "cudaRuntimeGetVersion")
        return f"{value // 1000}.{(value % 1000) // 10}"

    def driver_version(self) -> str:
        value = self._int_query(self.lib.cudaDriverGetVersion, "cudaDriverGetVersion")
        return "none" if value == 0 else f"{value // 1000}.{(value % 1000) // 10}"

    # -- devices ---------------------------------------------------------------------------
    def current_device(self) -> int:
        return self._int_query(self.lib.cudaGetDevice, "cudaGetDevice")

    def device_name(self, device: int | None = None) -> str:
        device = self.current_device() if device is None else device
        buffer = ctypes.create_string_buffer(DEVICE_PROP_BYTES)
        self.check(self._get_device_properties(buffer, device), "cudaGetDeviceProperties")
        return buffer.raw[:256].split(b"\0", 1)[0].decode(errors="replace")

    def compute_capability(self, device: int | None = None) -> str:
        device = self.current_device() if device is None else device
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), ATTR_COMPUTE_CAPABILITY_MAJOR, device), "cudaDeviceGetAttribute")
        self.check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), ATTR_COMPUTE_CAPABILITY_MINOR, device), "cudaDeviceGetAttribute")
        return f"{major.value}.{minor.value}"

    # -- memory, streams, events -------------------------------------------------------------
    def _new_handle(self, function, what: str, *args) -> int:
        """Call a CUDA function whose first argument receives a pointer (allocation, stream, event)."""
        handle = ctypes.c_void_p()
        self.check(function(ctypes.byref(handle), *args), what)
        return int(handle.value or 0)

    def _release(self, function, handle: int, what: str) -> None:
        if handle:
            self.check(function(handle), what)

    def malloc(self, nbytes: int) -> int:
        return self._new_handle(self.lib.cudaMalloc, f"cudaMalloc({nbytes} bytes)", max(int(nbytes), 1))

    def free(self, pointer: int) -> None:
        self._release(self.lib.cudaFree, pointer, "cudaFree")

    def memcpy_htod_async(self, device: int, host: int, nbytes: int, stream: int) -> None:
        self.check(self.lib.cudaMemcpyAsync(device, host, nbytes, HOST_TO_DEVICE, stream), "cudaMemcpyAsync (host to device)")

    def memcpy_dtoh_async(self, host: int, device: int, nbytes: int, stream: int) -> None:
        self.check(self.lib.cudaMemcpyAsync(host, device, nbytes, DEVICE_TO_HOST, stream), "cudaMemcpyAsync (device to host)")

    def stream_create(self) -> int:
        return self._new_handle(self.lib.cudaStreamCreate, "cudaStreamCreate")

    def stream_destroy(self, stream: int) -> None:
        self._release(self.lib.cudaStreamDestroy, stream, "cudaStreamDestroy")

    def stream_synchronize(self, stream: int) -> None:
        self.check(self.lib.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def event_create(self) -> int:
        return self._new_handle(self.lib.cudaEventCreate, "cudaEventCreate")

    def event_destroy(self, event: int) -> None:
        self._release(self.lib.cudaEventDestroy, event, "cudaEventDestroy")

    def event_record(self, event: int, stream: int) -> None:
        self.check(self.lib.cudaEventRecord(event, stream), "cudaEventRecord")

    def event_synchronize(self, event: int) -> None:
        self.check(self.lib.cudaEventSynchronize(event), "cudaEventSynchronize")

    def event_elapsed_ms(self, start: int, end: int) -> float:
        milliseconds = ctypes.c_float()
        self.check(self.lib.cudaEventElapsedTime(ctypes.byref(milliseconds), start, end), "cudaEventElapsedTime")
        return float(milliseconds.value)

    # -- CUDA graphs ---------------------------------------------------------------------------
    def stream_begin_capture(self, stream: int) -> None:
        """Start recording `stream`'s work into a graph (thread-local mode, as trtexec)."""
        begin = self._graph_api("cudaStreamBeginCapture")
        self.check(begin(stream, STREAM_CAPTURE_MODE_THREAD_LOCAL), "cudaStreamBeginCapture")

    def stream_end_capture(self, stream: int) -> int:
        """Stop recording: the captured graph (cudaGraph_t), or 0 when the capture was invalidated
        (something on the stream could not be captured; the stream is out of capture mode either way)."""
        end = self._graph_api("cudaStreamEndCapture")
        graph = ctypes.c_void_p()
        status = end(stream, ctypes.byref(graph))
        if status == ERROR_STREAM_CAPTURE_INVALIDATED:
            self._graph_api("cudaGetLastError")()  # clear it, so the next call does not report it
            return 0
        self.check(status, "cudaStreamEndCapture")
        return int(graph.value or 0)

    def graph_instantiate(self, graph: int) -> int:
        """An executable graph (cudaGraphExec_t) of `graph`, no flags."""
        instantiate = self._graph_api("cudaGraphInstantiateWithFlags")
        return self._new_handle(instantiate, "cudaGraphInstantiateWithFlags", graph, 0)

    def graph_launch(self, graph_exec: int, stream: int) -> None:
        self.check(self._graph_api("cudaGraphLaunch")(graph_exec, stream), "cudaGraphLaunch")

    def graph_exec_destroy(self, graph_exec: int) -> None:
        if graph_exec:
            self._release(self._graph_api("cudaGraphExecDestroy"), graph_exec, "cudaGraphExecDestroy")

    def graph_destroy(self, graph: int) -> None:
        if graph:
            self._release(self._graph_api("cudaGraphDestroy"), graph, "cudaGraphDestroy")


def gpu_problem(status: int, count: int, driver: str, error_text: str, runtime_version: str) -> str | None:
    """None when cudaGetDeviceCount returned `status` 0 with a device, else why there is no
    usable GPU (one line); `driver` is driver_version() ('none': no driver), the rest for the message."""
    if status == 0 and count > 0:
        return None
    if status == 0 or status == ERROR_NO_DEVICE:
        return "no CUDA GPU (cudaGetDeviceCount found no device)"
    if status == ERROR_INSUFFICIENT_DRIVER and driver == "none":
        return "no CUDA GPU (no NVIDIA driver found)"
    return f"no CUDA GPU ({error_text}; libcudart {runtime_version}, driver {driver})"


def _gpu_problem(cuda: CudaRuntime) -> str | None:
    """None when this runtime sees a GPU, else why not (one line)."""
    count = ctypes.c_int()
    status = cuda.lib.cudaGetDeviceCount(ctypes.byref(count))
    if status == 0 and count.value > 0:
        return None
    return gpu_problem(status, count.value, cuda.driver_version(), cuda.error_string(status), cuda.runtime_version())


@lru_cache(maxsize=1)
def runtime() -> CudaRuntime:
    """The first libcudart that loads and sees a GPU; BackendUnavailable (one line) otherwise.

    A later candidate is tried when one loads but cannot use the GPU (a CUDA 13 wheel
    beside a CUDA 12 driver reports 'insufficient driver' while the system's CUDA 12
    libcudart works), so the first problem found is the one reported.
    """
    problems: list[str] = []
    for candidate in candidate_libraries():
        try:
            cuda = CudaRuntime(candidate)
        except (OSError, AttributeError):
            continue
        try:
            problem = _gpu_problem(cuda)
        except CudaError as exc:  # a version query failed while probing: this candidate cannot use the GPU
            problem = f"no CUDA GPU ({exc})"
        if problem is None:
            return cuda
        problems.append(f"{problem} [{Path(candidate).name}]")
    if problems:
        raise BackendUnavailable(problems[0])
    raise BackendUnavailable(
        "libcudart not found (tried the nvidia-cuda-runtime wheels, the loader's search path, /usr/local/cuda): "
        "install the CUDA runtime or `pip install nvidia-cuda-runtime-cu12`"
    )


class DeviceBuffer:
    """A device allocation that only grows: reused across calls of different batch sizes."""

    def __init__(self, cuda: CudaRuntime) -> None:
        self.cuda = cuda
        self.pointer = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.pointer = self.cuda.malloc(nbytes)
            self.nbytes = nbytes
        return self.pointer

    def free(self) -> None:
        if self.pointer:
            pointer, self.pointer, self.nbytes = self.pointer, 0, 0
            self.cuda.free(pointer)
