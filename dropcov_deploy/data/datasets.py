"""Bundled datasets by name and split (`--dataset digits:test`), so no one copies images around.

A split is an `ImageSet` of in-memory pixels that goes through the same `preprocess` as
image files: `--dataset digits:train` and the PNGs of `calibration/digits` give the same
preprocessed arrays (and the same calibration fingerprints). The held-out test split is for
verification only: a command that calibrates refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from dropcov_deploy.errors import InputError

# name -> its splits; the first is what a calibrating command takes by default, the last what an evaluating one does
BUNDLED: dict[str, tuple[str, ...]] = {"digits": ("train", "val", "test")}
HELD_OUT = "test"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    split: str

    def __str__(self) -> str:
        return f"{self.name}:{self.split}"


def describe(name: str) -> str:
    """`digits[:train|val|test]`: how a bundled dataset is named on the command line."""
    return f"{name}[:{'|'.join(BUNDLED[name])}]"


def parse_dataset(text: str, *, for_calibration: bool = False, for_selection: bool = False) -> DatasetSpec:
    """`digits`, `digits:train`, `digits:val` or `digits:test`. Without a split: the test split
    for verify and bench, the train split for calibration, the val split for choosing a
    precision treatment (`debug precision`). Calibrating or choosing on the test split is
    refused: that split is what the published figures are measured on."""
    name, _, split = text.strip().partition(":")
    if name not in BUNDLED:
        raise InputError(f"--dataset {text!r} is unknown; bundled: {', '.join(describe(n) for n in BUNDLED)}")
    splits = BUNDLED[name]
    split = split or (splits[0] if for_calibration else splits[1] if for_selection else splits[-1])
    if split not in splits:
        raise InputError(f"--dataset {text!r}: {name} has splits {', '.join(splits)}")
    if for_calibration and split == HELD_OUT:
        raise InputError(
            f"--dataset {text}: the held-out {HELD_OUT} split is for verification only; calibrate on {name}:{splits[0]} "
            "(a calibration set scored by verify is not held out)"
        )
    if for_selection and split == HELD_OUT:
        raise InputError(
            f"--dataset {text}: the held-out {HELD_OUT} split is for verification only; choose layers on {name}:{splits[1]} "
            "(layers chosen on the test split make its figures a selection, not a held-out estimate)"
        )
    return DatasetSpec(name, split)


def dataset_images(spec: DatasetSpec):
    """The split as an ImageSet of 8-bit pixels, labelled, named by class."""
    from dropcov_deploy.data import digits
    from dropcov_deploy.data.images import ImageSet

    if spec.name != "digits":  # BUNDLED and this function grow together
        raise InputError(f"--dataset {spec}: unknown")
    split = digits.load_splits()[spec.split]
    names = [f"{spec}/{int(i):04d}" for i in split.indices] if split.indices is not None else None
    return ImageSet(str(spec), [], [int(label) for label in split.labels], list(digits.CLASS_NAMES), pixels=list(split.images), pixel_names=names)
