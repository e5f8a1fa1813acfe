"""Model families: everything that differs between DropCov's kinds of model, one record each.

As timm's model modules do, each family module registers its `ModelFamily` and its
architectures (resnet_acd.py: "resnet", the CNN with the d x d covariance head;
vit_drop.py: "xcov", a timm backbone with the cross-covariance token head; authors_vit.py:
"authors_vit", the authors' own transformers with their DenseNet token stem). Code outside
the family modules asks the record (`registry.get_family`), never branches on a name.

No torch here: the names, the aliases and the record's shape are readable anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Family names that files written before may hold -> today's name. The one alias table:
# every lookup of a family name read from a manifest or checkpoint goes through it.
FAMILY_ALIASES: dict[str, str] = {"vit": "xcov"}


def canonical_family(name: str) -> str:
    """Today's name of a family, also for an older name (`vit` -> `xcov`)."""
    return FAMILY_ALIASES.get(name, name)


@dataclass(frozen=True)
class HeadSizes:
    """What a state_dict's head tensors say: the family, d (resnet) or r (xcov), heads (xcov), classes."""

    family: str
    dim: int
    num_classes: int
    heads: int | None = None
    variant: str | None = None  # a layout choice the family reads from the keys (authors_vit: the dense layers' norm)


@dataclass(frozen=True)
class Recipe:
    """A family's training recipe; --lr and --weight-decay override the numbers, not the optimizer."""

    optimizer: str  # "sgd" or "adamw"
    lr: float
    weight_decay: float


@dataclass(frozen=True)
class OptionRule:
    """A training option a family takes: when a value is valid, and the one-line error otherwise.

    The same error is given when the option is passed for another family's architecture.
    `message` may use {arch}, {family} and {value}.
    """

    valid: Callable[[Any], bool]
    message: str


@dataclass(frozen=True)
class ModelFamily:
    """A model family's hooks. `spec` is an `ArchSpec` (its `config` is the family's own),
    `info` a `CheckpointInfo`, `proto` an onnx.ModelProto."""

    name: str
    order: int  # place in listings (the models table, error messages)
    # (spec, *, num_classes, dim, heads, widths, image_size, pretrained, drop_scale) -> nn.Module in
    # train mode; None means the spec's default. Options the family does not take are ignored.
    create: Callable[..., Any]
    # (state, path) -> HeadSizes, or None when the tensors are not this family's head;
    # a CheckpointError when they are but do not add up.
    head_sizes: Callable[[Mapping[str, Any], Path], HeadSizes | None]
    head_keys: tuple[str, ...]  # the tensors its head has, named when no family recognises a state
    # (sizes, widths, image_size) -> the create_model keywords that rebuild a checkpoint's model
    build_kwargs: Callable[[HeadSizes, list[int] | None, int | None], dict[str, Any]]
    describe_head: Callable[[int, int | None], str]  # (dim, heads) -> "d=32" / "heads=6, r=24"
    graph_rules: Callable[[Any, Any], list[str]]  # (proto, info) -> broken rules of its exported graph
    exporter_note: str  # what eval mode folds away, for the export manifest's "exporter"
    manifest_fields: Callable[[Any], dict[str, Any]]  # (info) -> fields only this family records
    backbone_text: Callable[[Any], str]  # (spec) -> the models table's backbone column
    fc_inputs: Callable[[Any], int]  # (spec) -> inputs of the covariance fc at the spec's defaults
    table_fields: Callable[[Any], dict[str, Any]]  # (spec) -> the models rows' "block", "layers", "heads"
    recipe: Recipe
    forbidden_ops: tuple[str, ...] = ()  # on top of export.FORBIDDEN_OPS
    gate_overrides: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    train_options: Mapping[str, OptionRule] = field(default_factory=dict)  # TrainConfig field -> rule
    reference_dim: int | None = None  # the models table also counts parameters at this d
    lookup: Callable[[str], Any] | None = None  # name -> ArchSpec for unregistered names (timm:<model>), else None
    name_patterns: tuple[str, ...] = ()  # what lookup's names look like, for the unknown-architecture error
    no_arch_hint: str = ""  # appended when a state fits none of its registered architectures
