"""Run the CLI as a test needs it.

`run_cli` runs it in this process (Typer's CliRunner on `dropcov_deploy.cli.app`, an exception
mapped by `dropcov_deploy.cli.exit_code_for` exactly as `main()` maps it): no ~4 s of interpreter
start and imports per call. `run_cli_subprocess` runs `python -m dropcov_deploy` in a real
process, as a user or CI would; the few tests about the process itself (console script, exit
status and stderr of a real process, an interpreter without torch, torchrun) use it.
Both return an object with `returncode`, `stdout` and `stderr`, as `subprocess.run` does.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

CLI = [sys.executable, "-m", "dropcov_deploy"]
PROG_NAME = "dropcov-deploy"

# Variables read when an interpreter (or a native library) starts: setting them in os.environ
# for the length of a call would not do what the test means, so such a call runs in a process.
_PROCESS_ONLY_PREFIXES = ("PYTHON", "LD_", "DYLD_")
_PROCESS_ONLY = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"}


@dataclass
class CliResult:
    """What `subprocess.run(..., capture_output=True, text=True)` returns, for an in-process run."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    exception: BaseException | None = field(default=None, repr=False)


def needs_process(env: dict | None) -> bool:
    return any(key.startswith(_PROCESS_ONLY_PREFIXES) or key in _PROCESS_ONLY for key in env or {})


def run_cli(*args, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> CliResult | subprocess.CompletedProcess:
    """`dropcov-deploy ARGS` in this process; in a subprocess when `env` sets what only a new
    interpreter can honour (PYTHONPATH, LD_*, thread counts, visible GPUs).

    `cwd` is entered for the call and left after it; `env` is set in os.environ for the call and
    restored after it. `timeout` applies to a subprocess only (pytest-timeout covers the rest).
    """
    if needs_process(env):
        return run_cli_subprocess(*args, cwd=cwd, timeout=timeout, env=env)
    from typer.testing import CliRunner

    from dropcov_deploy.cli import app, exit_code_for

    argv = [str(a) for a in args]
    threads = _torch_threads()
    previous = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        # standalone_mode=False, as main() runs it: usage errors reach exit_code_for too
        result = CliRunner().invoke(
            app, argv, env={k: None if v is None else str(v) for k, v in (env or {}).items()}, prog_name=PROG_NAME, standalone_mode=False
        )
    finally:
        os.chdir(previous)
        _restore_torch_threads(threads)
    returncode, stderr = result.exit_code, result.stderr
    if result.exception is None and isinstance(result.return_value, int):
        returncode = result.return_value  # a Typer Exit's code, returned in non-standalone mode
    exception = result.exception
    if exception is not None and not isinstance(exception, SystemExit):
        # main(): `except BaseException as exc: sys.exit(exit_code_for(exc))`, its output on stderr
        mapped = io.StringIO()
        with contextlib.redirect_stderr(mapped):
            returncode = exit_code_for(exception)
        stderr += mapped.getvalue()
    return CliResult(argv, returncode, result.stdout, stderr, exception)


def run_cli_subprocess(*args, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m dropcov_deploy ARGS` in a new process, with os.environ plus `env`."""
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **{k: str(v) for k, v in (env or {}).items()}},
    )


def _torch_threads() -> int | None:
    """`bench --threads N` sets torch's global thread count; a test must not leave it to the next."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None and hasattr(torch, "get_num_threads") else None


def _restore_torch_threads(threads: int | None) -> None:
    torch = sys.modules.get("torch")
    if threads is not None and torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    """Exit code as documented, one error line (the last on stderr), no traceback.

    Progress lines of steps that finished before the error may precede it.
    """
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


# What the base install (`pip install dropcov-deploy`, the device's) leaves out: the extras' modules.
EXTRA_MODULES = ("torch", "torchvision", "timm", "onnxscript", "sklearn", "matplotlib", "modelopt", "tensorrt")

_BLOCKER = """
import sys, importlib.abc
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Absent())
sys.argv = ['dropcov-deploy', *ARGS]
from dropcov_deploy.cli import main
try:
    main()
finally:
    leaked = [m for m in BLOCKED if m in sys.modules]
    if leaked:
        print(f'imported {leaked}', file=sys.stderr)
"""


def run_cli_without(
    modules: tuple[str, ...], *args, cwd: Path | None = None, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`dropcov-deploy ARGS` in a process where `modules` cannot be imported (ModuleNotFoundError,
    as when they are not installed): the device's base install, without a second virtualenv."""
    code = f"BLOCKED = {tuple(modules)!r}\nARGS = {[str(a) for a in args]!r}\n" + _BLOCKER
    environment = {**os.environ, **env} if env else None
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=environment)
