"""DropCov models in PyTorch: families, layers, architectures, registry, checkpoints.

The names below are imported on first use: `models.families` (family names and their
aliases) needs no torch; everything that builds or loads a model does.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ECA": "layers",
    "AdaptiveChannelDropout": "layers",
    "CovariancePool": "layers",
    "TriuVectorize": "layers",
    "adaptive_drop_rate": "layers",
    "triu_size": "layers",
    "ArchSpec": "registry",
    "check_options": "registry",
    "create_model": "registry",
    "family_of": "registry",
    "find_family": "registry",
    "get_arch": "registry",
    "get_family": "registry",
    "list_archs": "registry",
    "list_families": "registry",
    "HeadSizes": "families",
    "ModelFamily": "families",
    "canonical_family": "families",
    "CheckpointInfo": "checkpoints",
    "LoadedCheckpoint": "checkpoints",
    "load_checkpoint": "checkpoints",
    "load_checkpoint_with_info": "checkpoints",
    "save_checkpoint": "checkpoints",
    "ResNetACD": "resnet_acd",
    "DropCovViT": "vit_drop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
