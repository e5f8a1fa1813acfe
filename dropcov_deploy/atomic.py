"""Write artifacts so that a failure never leaves a half-written file behind.

Everything is written into a hidden staging folder beside the destination, then
moved into place with os.replace (atomic on one filesystem) once it is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dropcov_deploy.errors import InputError


def check_writable(path: Path) -> Path:
    """Fail early, before expensive work, when `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise InputError(f"{path}: cannot write: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot write: folder {parent} is not writable")
    return path


def spare_inputs(outputs: Iterable[Path | str | None], inputs: Iterable[Path | str | None]) -> None:
    """Refuse, before any work, an output that would replace one of the command's inputs (or an
    input's manifest sidecar): a user's files are never lost to a mistyped --out or --report."""
    protected: dict[Path, str] = {}
    folders: list[Path] = []
    for item in inputs:
        if item is not None:
            protected.setdefault(Path(f"{item}.json").resolve(), f"the manifest of the input {item}")
            protected[Path(item).resolve()] = f"the input {item}"
            if Path(item).is_dir():
                folders.append(Path(item).resolve())
    written: dict[Path, Path] = {}
    for out in outputs:
        if out is None:
            continue
        resolved = Path(out).resolve()
        if resolved in protected:
            raise InputError(f"{out}: would overwrite {protected[resolved]}; write the output elsewhere")
        inside = next((folder for folder in folders if folder in resolved.parents), None)
        if inside is not None:
            raise InputError(f"{out}: is inside the input folder {inside}; write the output elsewhere")
        if resolved in written:
            raise InputError(f"{out}: given for two outputs ({written[resolved]} and {out}); each needs its own file")
        written[resolved] = Path(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def clean_stale_stages(destination: Path) -> list[Path]:
    """Remove the staging folders a killed run left beside `destination` (those whose process is
    gone); a running build's folder (its process alive) is left alone. Returns what was removed."""
    removed = []
    for folder in Path(destination).parent.glob(f".{Path(destination).name}.*.staging"):
        parts = folder.name[len(f".{Path(destination).name}.") :].split(".")
        if folder.is_dir() and parts and parts[0].isdigit() and not _alive(int(parts[0])):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextmanager
def staged(destination: Path) -> Iterator[Path]:
    """Yield a staging folder beside `destination`; on success move its files into place.

    Files are moved in name order with the destination's own file last, so a reader
    never sees the main artifact before its side files (external data, manifest).
    """
    destination = check_writable(Path(destination))
    clean_stale_stages(destination)
    stage = Path(tempfile.mkdtemp(prefix=f".{destination.name}.{os.getpid()}.", suffix=".staging", dir=destination.parent))
    try:
        yield stage
        files = sorted(p for p in stage.iterdir() if p.is_file())
        files.sort(key=lambda p: p.name == destination.name)
        for file in files:
            os.replace(file, destination.parent / file.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp_path)`, then rename the result to `path`."""
    path = Path(path)
    with staged(path) as stage:
        write(stage / path.name)
    return path
