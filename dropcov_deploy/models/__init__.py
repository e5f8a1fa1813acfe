"""DropCov models in PyTorch: layers, architectures, registry, checkpoints."""

from dropcov_deploy.models.checkpoints import (
    CheckpointInfo,
    LoadedCheckpoint,
    load_checkpoint,
    load_checkpoint_with_info,
    save_checkpoint,
)
from dropcov_deploy.models.layers import (
    ECA,
    AdaptiveChannelDropout,
    CovariancePool,
    TriuVectorize,
    adaptive_drop_rate,
    triu_size,
)
from dropcov_deploy.models.registry import ArchSpec, create_model, get_arch, list_archs
from dropcov_deploy.models.resnet_acd import ResNetACD
from dropcov_deploy.models.vit_drop import DropCovViT

__all__ = [
    "ECA",
    "AdaptiveChannelDropout",
    "ArchSpec",
    "CheckpointInfo",
    "CovariancePool",
    "DropCovViT",
    "LoadedCheckpoint",
    "ResNetACD",
    "TriuVectorize",
    "adaptive_drop_rate",
    "create_model",
    "get_arch",
    "list_archs",
    "load_checkpoint",
    "load_checkpoint_with_info",
    "save_checkpoint",
    "triu_size",
]
