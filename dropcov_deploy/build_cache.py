"""The build's cache of precision graphs: reuse a calibration instead of redoing it, never trust a bad entry.

An entry is `<key>.onnx` and `<key>.json` (the precision record, with the ONNX's SHA-256).
Both are written to temporary names and renamed, the record last, so an entry exists only
once it is complete; a kill or a full disk leaves at most a stray temporary file. On read
the ONNX's hash is checked against the record: an entry that is truncated, edited or half
gone is discarded (said in one line naming the entry) and the graph rebuilt, never fatal.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dropcov_deploy.manifest import sha256_file

HASH_FIELD = "onnx_sha256"


class PrecisionCache:
    def __init__(self, folder: Path, log: Callable[[str], Any] = lambda _: None) -> None:
        self.folder = Path(folder)
        self.log = log

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.onnx", self.folder / f"{key}.json"

    def lookup(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The entry's ONNX and record when it is whole and unchanged; None (after discarding a bad one) otherwise."""
        onnx, record_path = self.paths(key)
        if not onnx.exists() and not record_path.exists():
            return None
        problem = None
        record: dict[str, Any] = {}
        try:
            record = json.loads(record_path.read_text())
            if not isinstance(record, dict) or HASH_FIELD not in record:
                problem = "its record is not one this version wrote"
            elif sha256_file(onnx) != record[HASH_FIELD]:
                problem = "its ONNX does not match the recorded hash (truncated or changed)"
        except (OSError, ValueError) as exc:
            problem = f"it cannot be read ({type(exc).__name__})"
        if problem is None:
            return onnx, {k: v for k, v in record.items() if k != HASH_FIELD}
        self.discard(key)
        self.log(f"cache entry {record_path.with_suffix('')} discarded: {problem}; rebuilding")
        return None

    def discard(self, key: str) -> None:
        for path in self.paths(key):
            path.unlink(missing_ok=True)

    def store(self, key: str, onnx: Path, record: dict[str, Any]) -> None:
        """Copy the graph in and write its record, each to a temporary name renamed into place, the record last.
        A cache that cannot be written (full disk, read-only) costs a rebuild next time, never this build."""
        target_onnx, target_record = self.paths(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial_onnx = target_onnx.with_name(f".{target_onnx.name}.{os.getpid()}.partial")
            partial_record = target_record.with_name(f".{target_record.name}.{os.getpid()}.partial")
            shutil.copyfile(onnx, partial_onnx)
            partial_record.write_text(json.dumps({**record, HASH_FIELD: sha256_file(partial_onnx)}, indent=2))
            os.replace(partial_onnx, target_onnx)
            os.replace(partial_record, target_record)
        except OSError as exc:
            for path in (
                target_onnx.with_name(f".{target_onnx.name}.{os.getpid()}.partial"),
                target_record.with_name(f".{target_record.name}.{os.getpid()}.partial"),
            ):
                path.unlink(missing_ok=True)
            self.log(f"cache {self.folder} not written ({exc.strerror or type(exc).__name__}); the next build recalibrates")
