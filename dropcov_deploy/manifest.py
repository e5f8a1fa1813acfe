"""Provenance records: a JSON manifest beside every artifact, key fields inside it too.

The sidecar (`model.onnx.json`) holds everything; the ONNX `metadata_props` hold the
key fields under `dropcov.*` keys, so a model that lost its sidecar still says what
it is. Reading prefers the sidecar. No torch here: the runtime path reads manifests.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from dropcov_deploy import __version__
from dropcov_deploy.atomic import atomic_write
from dropcov_deploy.errors import InputError

MANIFEST_FORMAT = "dropcov-deploy/manifest/1"
METADATA_PREFIX = "dropcov."
# Fields copied into the ONNX metadata_props (values JSON-encoded).
METADATA_FIELDS = (
    "arch",
    "dim",
    "num_classes",
    "class_names",
    "precision",
    "input",
    "output",
    "preprocessing",
    "opset",
    "source",
    "versions",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(artifact: Path) -> Path:
    return Path(f"{artifact}.json")


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def library_versions(*modules: str) -> dict[str, str]:
    """Versions of the named, already-imported libraries, plus ours and Python's."""
    import importlib
    import sys

    versions = {"dropcov_deploy": __version__, "python": platform.python_version()}
    for name in modules:
        module = sys.modules.get(name) or importlib.import_module(name)
        versions[name] = str(getattr(module, "__version__", "unknown"))
    return versions


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def metadata_props(manifest: dict[str, Any]) -> dict[str, str]:
    props = {f"{METADATA_PREFIX}{key}": json.dumps(manifest[key]) for key in METADATA_FIELDS if key in manifest}
    props[f"{METADATA_PREFIX}format"] = json.dumps(MANIFEST_FORMAT)
    return props


def manifest_from_metadata(props: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith(METADATA_PREFIX):
            try:
                out[key[len(METADATA_PREFIX):]] = json.loads(value)
            except json.JSONDecodeError:
                out[key[len(METADATA_PREFIX):]] = value
    return out


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or one InputError line naming the file and the problem."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a valid {what} (bad JSON: {exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: not a valid {what} (expected a JSON object)")
    return data


def read_manifest(artifact: Path) -> dict[str, Any] | None:
    """The sidecar manifest of `artifact`, or None when there is none."""
    sidecar = sidecar_path(Path(artifact))
    if not sidecar.exists():
        return None
    return read_json_object(sidecar, "manifest")


def artifact_manifest(path: Path) -> dict[str, Any]:
    """An artifact's manifest: the sidecar, else (ONNX) the dropcov.* metadata_props."""
    from dropcov_deploy.backends import artifact_kind

    path = Path(path)
    data = read_manifest(path)
    if data is None and artifact_kind(path) == "onnx":
        from dropcov_deploy import onnx_graph

        proto = onnx_graph.load(path, load_external_data=False)
        data = manifest_from_metadata({p.key: p.value for p in proto.metadata_props})
    if not data:
        raise InputError(f"{path}: no manifest beside it ({sidecar_path(path).name}); cannot tell its precision and input")
    return data
