"""Reading and writing checkpoints: the authors' layouts and our own format.

Every foreign key layout is adapted here, in one place (as timm does), and every
problem ends in a `CheckpointError` that names the file. Checkpoints are untrusted:
they are read with `torch.load(weights_only=True)`, never by unpickling objects; the one
class allowed besides tensors is `argparse.Namespace`, which timm's checkpoint saver (the
authors' transformer training) stores as "args" (strings and numbers only, no code).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dropcov_deploy.atomic import atomic_write
from dropcov_deploy.data.preprocessing import Preprocessing
from dropcov_deploy.errors import CheckpointError, InputError
from dropcov_deploy.manifest import sha256_file
from dropcov_deploy.models.families import HeadSizes
from dropcov_deploy.models.registry import ArchSpec, create_model, family_of, get_arch, get_family, list_archs, list_families

FORMAT = "dropcov-deploy/1"
_PREFIXES = ("module.", "_orig_mod.", "model.")
_MAX_LISTED_KEYS = 5


@dataclass
class CheckpointInfo:
    """What a checkpoint says about its model, besides the weights."""

    path: Path
    source_format: str  # "dropcov-deploy", "upstream", "timm-saver", "model-dict" or "state-dict"
    arch: str
    dim: int  # d (resnet family) or r (xcov family)
    num_classes: int
    sha256: str
    family: str  # the model family's name (registry.get_family), from the head's tensors
    heads: int | None = None  # xcov head
    class_names: list[str] | None = None
    input_size: int | None = None
    preprocessing: Preprocessing | None = None
    epoch: int | None = None
    accuracy: float | None = None
    data_split: str | None = None  # which bundled split it was trained on (digits.SPLIT_ID), when trained here
    weights: str = "state_dict"  # which weights of the file were loaded: "state_dict_ema" where timm's saver kept an EMA
    variant: str | None = None  # the family's layout choice read from the keys (authors_vit: the dense layers' norm)

    def resolved_input_size(self) -> int:
        return self.input_size or get_arch(self.arch).default_image_size

    def resolved_preprocessing(self) -> Preprocessing:
        return self.preprocessing or Preprocessing.imagenet(self.resolved_input_size())


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    info: CheckpointInfo


def _read(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # timm's saver keeps the training args so
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"{path}: holds a Python object ({found.group(1)}) that is not loaded from untrusted files "
                "(torch.load weights_only=True); re-save it with tensors, numbers and strings only"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable pickle data)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, UnicodeDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: {reason})") from None


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a prefix every key shares: DataParallel/DDP `module.`, torch.compile `_orig_mod.`."""
    out = dict(state)
    changed = True
    while changed and out:
        changed = False
        for prefix in _PREFIXES:
            if all(key.startswith(prefix) for key in out):
                out = {key[len(prefix) :]: value for key, value in out.items()}
                changed = True
    return out


def _split(obj: Any, path: Path) -> tuple[str, Mapping[str, Any], dict[str, Any]]:
    """Return (source format, state_dict, metadata) for every layout we accept."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, not a dict of tensors)")
    if obj.get("format") == FORMAT and isinstance(obj.get("state_dict"), Mapping):
        meta = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer", "scheduler", "training")}
        return "dropcov-deploy", obj["state_dict"], meta
    if isinstance(obj.get("state_dict_ema"), Mapping) and obj["state_dict_ema"]:
        # timm's CheckpointSaver with model EMA (the authors' transformers: always on, and their evaluation uses it)
        meta = {k: obj[k] for k in ("arch", "epoch") if k in obj}
        meta["weights"] = "state_dict_ema"
        if isinstance(obj.get("metric"), (int, float)):
            meta["best_acc1"] = obj["metric"]
        return "timm-saver", obj["state_dict_ema"], meta
    if isinstance(obj.get("state_dict"), Mapping):
        meta = {k: obj[k] for k in ("arch", "epoch", "best_acc1") if k in obj}
        return "upstream", obj["state_dict"], meta
    if isinstance(obj.get("model"), Mapping):
        meta = {k: obj[k] for k in ("arch", "epoch") if k in obj}
        return "model-dict", obj["model"], meta
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "state-dict", obj, {}
    raise CheckpointError(
        f"{path}: no weights found (expected a state_dict, a dict with 'state_dict' or 'model', "
        f"or a dropcov-deploy checkpoint; top-level keys: {', '.join(map(str, list(obj)[:_MAX_LISTED_KEYS]))})"
    )


def _head_sizes(state: Mapping[str, torch.Tensor], path: Path) -> HeadSizes:
    """The head's sizes, from the first family that recognises its tensors."""
    families = list_families()
    for family in families:
        sizes = family.head_sizes(state, path)
        if sizes is not None:
            return sizes
    missing = [f"{family.name} head's '{next((k for k in family.head_keys if k not in state), family.head_keys[0])}'" for family in families]
    raise CheckpointError(f"{path}: not a DropCov checkpoint (no {', nor '.join(missing)})")


def _mismatches(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Describe every key that is missing, unexpected or of the wrong shape."""
    expected = model.state_dict()
    problems: list[str] = []
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            listed = ", ".join(keys[:_MAX_LISTED_KEYS]) + (", ..." if len(keys) > _MAX_LISTED_KEYS else "")
            problems.append(f"{len(keys)} {label}: {listed}")
    return problems


def _build(spec: ArchSpec, sizes: HeadSizes, on_meta: bool, widths: list[int] | None = None, image_size: int | None = None) -> nn.Module:
    kwargs: dict[str, Any] = {"num_classes": sizes.num_classes, "dim": sizes.dim, **family_of(spec).build_kwargs(sizes, widths, image_size)}
    if on_meta:
        with torch.device("meta"):
            return create_model(spec.name, **kwargs)
    return create_model(spec.name, **kwargs)


def infer_arch(state: Mapping[str, torch.Tensor], sizes: HeadSizes, image_size: int | None = None) -> ArchSpec | None:
    """The registered architecture whose keys and shapes match `state` exactly, if any.

    Builds each of the family's architectures on the meta device: run it only when neither
    the caller nor the checkpoint names one (or to explain a mismatch)."""
    for spec in list_archs(sizes.family):
        size = image_size or spec.default_image_size
        if not _mismatches(_build(spec, sizes, on_meta=True, image_size=size), state):
            return spec
    return None


def _meta_preprocessing(meta: Mapping[str, Any]) -> Preprocessing | None:
    raw = meta.get("preprocessing")
    return Preprocessing.from_dict(dict(raw)) if isinstance(raw, Mapping) else None


def _as_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an Inf (a diverged or damaged model)."""
    return [name for name, tensor in state.items() if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]


def load_checkpoint_with_info(path: str | os.PathLike[str], arch: str | None = None) -> LoadedCheckpoint:
    """Load any supported checkpoint into a model in eval mode, with what it records.

    `arch` overrides the name stored in the checkpoint; only without either (or with a
    stored name we do not know) is the architecture inferred from the tensors. Keys that
    do not fit are an error.
    """
    path = Path(path)
    requested = get_arch(arch) if arch else None
    source, raw_state, meta = _split(_read(path), path)
    state = _strip_prefixes(raw_state)
    non_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {', '.join(non_tensors[:_MAX_LISTED_KEYS])}")
    broken = nonfinite_tensors(state)
    if broken:
        raise CheckpointError(
            f"{path}: NaN or Inf in {len(broken)} tensor(s): {', '.join(broken[:_MAX_LISTED_KEYS])}; a model with them is never exported or used as a reference"
        )
    sizes = _head_sizes(state, path)
    dim, num_classes = sizes.dim, sizes.num_classes
    stored_size = int(meta["input_size"]) if isinstance(meta.get("input_size"), int) else None

    stored_name = meta.get("arch") if isinstance(meta.get("arch"), str) else None
    stored: ArchSpec | None = None
    if stored_name:
        try:
            stored = get_arch(stored_name)
        except InputError:
            stored = None  # a name we do not know: fall back to the tensors
    family = get_family(sizes.family)
    spec = requested or stored
    fitting: ArchSpec | None = None
    if spec is None:
        spec = fitting = infer_arch(state, sizes, stored_size)
    if spec is None:
        raise CheckpointError(
            f"{path}: tensors fit no known architecture ({family.describe_head(dim, sizes.heads)}, {num_classes} classes); "
            f"known: {', '.join(s.name for s in list_archs(family.name))}{family.no_arch_hint}"
        )
    if family_of(spec) is not family:
        raise CheckpointError(f"{path}: holds a DropCov model of the {family.name} family, not a {spec.name} ({spec.family})")

    widths = [int(w) for w in meta["widths"]] if isinstance(meta.get("widths"), (list, tuple)) else None
    model = _build(spec, sizes, on_meta=False, widths=widths, image_size=stored_size or spec.default_image_size)
    problems = _mismatches(model, state)
    if problems:
        if fitting is None:
            fitting = infer_arch(state, sizes, stored_size)
        hint = f"; the tensors fit {fitting.name}" if fitting and fitting.name != spec.name else ""
        said = f" (checkpoint says {stored_name})" if stored_name and stored_name != spec.name else ""
        raise CheckpointError(f"{path}: weights do not fit {spec.name}{said}{hint}: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)  # strict check done above; tolerates old BN buffers
    model.eval()

    class_names = meta.get("class_names")
    info = CheckpointInfo(
        path=path,
        source_format=source,
        arch=spec.name,
        dim=dim,
        num_classes=num_classes,
        sha256=sha256_file(path),
        family=sizes.family,
        heads=sizes.heads,
        class_names=list(class_names) if isinstance(class_names, (list, tuple)) else None,
        input_size=int(meta["input_size"]) if isinstance(meta.get("input_size"), int) else None,
        preprocessing=_meta_preprocessing(meta),
        epoch=int(meta["epoch"]) if isinstance(meta.get("epoch"), int) else None,
        accuracy=_as_float(meta.get("accuracy", meta.get("best_acc1"))),
        data_split=meta["data_split"] if isinstance(meta.get("data_split"), str) else None,
        weights=str(meta.get("weights", "state_dict")),
        variant=sizes.variant,
    )
    if info.class_names is not None and len(info.class_names) != num_classes:
        raise CheckpointError(f"{path}: records {len(info.class_names)} class names for {num_classes} classes")
    return LoadedCheckpoint(model=model, info=info)


def load_checkpoint(path: str | os.PathLike[str], arch: str | None = None) -> nn.Module:
    """Load a checkpoint (authors' .pth.tar, bare state_dict, {'model': ...}, ours) in eval mode."""
    return load_checkpoint_with_info(path, arch).model


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """torch.save through a staging file, then rename: never a half-written checkpoint."""
    return atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    class_names: list[str] | None = None,
    input_size: int | None = None,
    preprocessing: Preprocessing | None = None,
    epoch: int | None = None,
    accuracy: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write our own checkpoint format: weights plus everything export needs to know."""
    spec = get_arch(arch)
    record: dict[str, Any] = {
        "format": FORMAT,
        "arch": spec.name,
        "dim": int(model.dim),
        "num_classes": int(model.num_classes),
        "widths": list(model.widths) if hasattr(model, "widths") else None,
        "heads": int(model.heads) if hasattr(model, "heads") else None,
        "class_names": list(class_names) if class_names is not None else None,
        "input_size": int(input_size or spec.default_image_size),
        "preprocessing": (preprocessing or Preprocessing.imagenet(input_size or spec.default_image_size)).to_dict(),
        "epoch": epoch,
        "accuracy": accuracy,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if extra:
        record.update(extra)
    return atomic_torch_save(record, path)
