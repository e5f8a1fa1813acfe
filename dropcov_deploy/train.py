"""Training DropCov models: one process, or DistributedDataParallel under torchrun.

The DropCov path is active in training (resnet family: ECA + adaptive channel dropout;
xcov family: the token mask and the covariance dropout). Each family's `recipe` is the
upstream one: ResNets SGD (lr 0.05 here, momentum 0.9, weight decay 1e-4), the token head
AdamW (lr 1e-3, weight decay 0.05, as DeiT), with a warm-up + cosine schedule per step. Each epoch is seeded from (seed, epoch), so a resumed run shuffles,
augments and drops exactly as an uninterrupted one. Rank 0 alone logs and saves; both
the best and the last checkpoint are written atomically in our format.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dropcov_deploy.data.preprocessing import Preprocessing
from dropcov_deploy.errors import InputError


@dataclass
class TrainConfig:
    arch: str
    data: Path | None = None
    dataset: str | None = None
    epochs: int = 15
    batch_size: int = 64
    lr: float | None = None  # None: the model family's recipe (ModelFamily.recipe)
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_epochs: float = 1.0
    dim: int | None = None
    image_size: int | None = None
    widths: Sequence[int] | None = None
    heads: int | None = None  # xcov family: the head's cross-covariance heads
    pretrained_backbone: bool | str = False  # xcov family: timm's weights; True downloads, a path reads a local file
    out: Path = Path("runs/model.pt")
    resume: Path | None = None
    init: Path | None = None  # fine-tune: start from this checkpoint's weights (any supported format; class-count-dependent layers start fresh)
    seed: int = 0
    workers: int = 0
    device: str | None = None

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        for key in ("data", "out", "resume", "init"):
            record[key] = str(record[key]) if record[key] is not None else None
        record["widths"] = list(self.widths) if self.widths else None
        return record


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    drop_rate: float | None
    images_per_second: float
    seconds: float


@dataclass
class TrainResult:
    best_path: Path
    last_path: Path
    best_accuracy: float
    epochs: int
    history: list[EpochStats] = field(default_factory=list)
    world_size: int = 1
    resumed_from: int = 0
    fresh_tensors: list[str] = field(default_factory=list)  # --init: the tensors that did not fit (the classifier, on other classes)


def last_path_for(out: Path) -> Path:
    """model.pt -> model-last.pt: the resumable checkpoint beside the best one."""
    out = Path(out)
    suffixes = "".join(out.suffixes)
    stem = out.name[: len(out.name) - len(suffixes)] if suffixes else out.name
    return out.with_name(f"{stem}-last{suffixes or '.pt'}")


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _distributed_from_env() -> _Distributed:
    """torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them we run one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Distributed()
    return _Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


# ---------------------------------------------------------------- data
@dataclass
class _Data:
    train: Any
    val: Any
    class_names: list[str]
    preprocessing: Preprocessing
    image_size: int
    augment: str  # "shift" for in-memory digits, "none" when the dataset augments itself


def digits_split_id() -> str:
    from dropcov_deploy.data import digits

    return digits.SPLIT_ID


def _digits_data(image_size: int | None) -> _Data:
    """The bundled digits at their own 32 px, or resized to `image_size`."""
    import torch

    from dropcov_deploy.data import digits

    prep = digits.PREPROCESSING
    if image_size and image_size != prep.crop:
        prep = Preprocessing(resize=image_size, crop=image_size, mean=prep.mean, std=prep.std)
    splits = digits.load_splits()

    def tensors(name: str):
        images = torch.from_numpy(digits.preprocessed(splits[name], prep))
        return torch.utils.data.TensorDataset(images, torch.from_numpy(splits[name].labels))

    return _Data(tensors("train"), tensors("val"), list(digits.CLASS_NAMES), prep, prep.crop, "shift")


class _PreprocessedImages:
    """Validation images through the manifest's own `preprocess` (what deployment sees)."""

    def __init__(self, image_set, prep: Preprocessing) -> None:
        self.set = image_set
        self.prep = prep

    def __len__(self) -> int:
        return len(self.set)

    def __getitem__(self, index: int):
        import torch

        from dropcov_deploy.data.images import load_image, preprocess

        array = preprocess(load_image(self.set.paths[index]), self.prep)
        return torch.from_numpy(array), int(self.set.labels[index])


def check_class_folders(split: Path, allow_empty: bool = False) -> None:
    """A training split needs at least two classes and an image in every class folder: one class
    trains to a meaningless "accuracy 1.000", an empty folder crashes torchvision's ImageFolder."""
    from dropcov_deploy.data.images import IMAGE_SUFFIXES

    folders = sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise InputError(f"{split}: {len(folders)} class folder(s); a classifier needs at least two (one sub-folder per class)")
    empty = [f.name for f in folders if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in f.rglob("*") if p.is_file())]
    if empty and not allow_empty:
        raise InputError(f"{split}: class folder(s) {empty[:5]} hold no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")


def _folder_data(root: Path, image_size: int | None) -> _Data:
    from torchvision import datasets, transforms

    from dropcov_deploy.data.images import list_images

    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise InputError(f"{root}: expected an ImageFolder tree with {split}/ inside (torchvision's layout)")
        check_class_folders(root / split, allow_empty=split == "val")  # an empty val class keeps the labels aligned; torchvision refuses an empty train one
    size = image_size or 224
    prep = Preprocessing.imagenet(size)
    val_set = list_images(root / "val")
    if val_set.labels is None:
        raise InputError(f"{root / 'val'}: needs one sub-folder per class")
    train = datasets.ImageFolder(
        str(root / "train"),
        transforms.Compose(
            [
                transforms.RandomResizedCrop(size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(prep.mean, prep.std),
            ]
        ),
    )
    if train.classes != val_set.class_names:
        raise InputError(f"{root}: train/ and val/ have different class folders")
    return _Data(train, _PreprocessedImages(val_set, prep), list(train.classes), prep, size, "none")


def _load_data(config: TrainConfig) -> _Data:
    if (config.data is None) == (config.dataset is None):
        raise InputError("give exactly one of --data DIR or --dataset digits")
    if config.dataset is not None:
        if config.dataset != "digits":
            raise InputError(f"--dataset {config.dataset!r} is unknown; bundled: digits")
        return _digits_data(config.image_size)
    assert config.data is not None  # exactly one of the two, checked above
    return _folder_data(Path(config.data), config.image_size)


def _shift(images, generator, pad: int = 2):
    """Random translation by up to `pad` pixels, edges replicated (digits must not be flipped)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])


# ---------------------------------------------------------------- loop
def _schedule(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _evaluate(model, loader, device) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(1) == labels).sum())
            count += len(labels)
    return loss_sum / max(1, count), correct / max(1, count)


class TrainProgress(Protocol):
    """How training reports while it runs; the CLI draws progress bars, library callers get nothing."""

    def epoch_started(self, epoch: int, epochs: int, batches: int) -> None: ...

    def batch_done(self, loss: float, accuracy: float, images_per_second: float) -> None: ...

    def epoch_done(self, stats: EpochStats) -> None: ...


class SilentProgress:
    def epoch_started(self, epoch: int, epochs: int, batches: int) -> None:
        pass

    def batch_done(self, loss: float, accuracy: float, images_per_second: float) -> None:
        pass

    def epoch_done(self, stats: EpochStats) -> None:
        pass


def train(config: TrainConfig, progress: TrainProgress | None = None) -> TrainResult:
    """Train (or resume) a DropCov model; returns where the best and last checkpoints are."""
    import torch
    import torch.distributed as dist

    from dropcov_deploy.atomic import check_writable
    from dropcov_deploy.models import check_options, get_arch

    spec = get_arch(config.arch)
    if config.epochs < 1 or config.batch_size < 1 or (config.lr is not None and config.lr <= 0):
        raise InputError("--epochs and --batch-size must be positive and --lr above zero")
    check_options(  # the options one model family takes: --width (resnet), backbone weights and --heads (xcov)
        spec,
        widths=list(config.widths) if config.widths is not None else None,
        pretrained_backbone=config.pretrained_backbone or None,
        heads=config.heads,
    )
    out = Path(config.out)
    if not out.parent.exists() and not out.parent.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)  # a new run folder
    out = check_writable(out)
    last = last_path_for(out)
    dist_env = _distributed_from_env()
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dist_env.world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(dist_env.local_rank)
            device = torch.device("cuda", dist_env.local_rank)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // dist_env.world_size))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(config, spec, out, last, dist_env, device, progress if progress is not None and dist_env.is_main else SilentProgress())
    finally:
        if dist_env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _optimizer(model, recipe, config: TrainConfig):
    """The model family's `Recipe`; --lr and --weight-decay override its numbers, not its optimizer."""
    import torch

    lr = config.lr if config.lr is not None else recipe.lr
    weight_decay = config.weight_decay if config.weight_decay is not None else recipe.weight_decay
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, weight_decay=weight_decay)


def transfer_weights(source: Any, target: Any) -> list[str]:
    """Copy every tensor of `source` whose name and shape `target` has; return the names left
    fresh (a fine-tune on other classes: the classifier layers)."""
    import torch

    wanted = target.state_dict()
    given = source.state_dict()
    usable = {k: v for k, v in given.items() if k in wanted and tuple(v.shape) == tuple(wanted[k].shape)}
    with torch.no_grad():
        target.load_state_dict({**wanted, **usable})
    return [k for k in wanted if k not in usable and not k.endswith("num_batches_tracked")]


def _init_weights(path: Path, arch: str):
    """The checkpoint to fine-tune from (loaded as every command loads it), of this architecture."""
    from dropcov_deploy.models import load_checkpoint_with_info

    loaded = load_checkpoint_with_info(path)
    if loaded.info.arch != arch:
        raise InputError(f"--init {path}: holds a {loaded.info.arch}, not a {arch}; train {loaded.info.arch} to fine-tune it")
    return loaded


def _resume_state(path: Path, arch: str) -> dict[str, Any]:
    import torch

    from dropcov_deploy.models.checkpoints import FORMAT, load_checkpoint_with_info

    load_checkpoint_with_info(path)  # one-line errors for missing / corrupt / foreign files
    record = torch.load(path, map_location="cpu", weights_only=True)
    if record.get("format") != FORMAT or "training" not in record:
        raise InputError(f"{path}: not a resumable checkpoint (written by `dropcov-deploy train`, with optimizer state)")
    if record["arch"] != arch:
        raise InputError(f"{path}: holds a {record['arch']}, not a {arch}")
    return record


def _train(config, spec, out, last, dist_env, device, progress: TrainProgress) -> TrainResult:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, DistributedSampler

    from dropcov_deploy.models import create_model, family_of, save_checkpoint

    torch.manual_seed(config.seed)
    data = _load_data(config)
    resume = _resume_state(Path(config.resume), spec.name) if config.resume else None
    start = _init_weights(Path(config.init), spec.name) if config.init and not resume else None
    dim = resume["dim"] if resume else (start.info.dim if start else (config.dim or spec.default_dim))
    # Each family takes the options it has (checked in train()) and ignores the others'.
    model = create_model(
        spec.name,
        num_classes=len(data.class_names),
        dim=dim,
        widths=resume.get("widths") if resume else config.widths,
        heads=resume.get("heads") if resume else (start.info.heads if start else config.heads),
        image_size=data.image_size,
        pretrained_backbone=False if resume or start else config.pretrained_backbone,
        variant=start.info.variant if start else None,
    ).to(device)
    if resume:
        model.load_state_dict(resume["state_dict"])
    fresh = transfer_weights(start.model, model) if start is not None and not resume else []
    net = model
    if dist_env.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = _optimizer(model, family_of(spec).recipe, config)
    sampler: DistributedSampler | None = (
        DistributedSampler(data.train, dist_env.world_size, dist_env.rank, shuffle=True, seed=config.seed) if dist_env.world_size > 1 else None
    )
    per_rank_batch = max(1, config.batch_size // dist_env.world_size)
    val_loader = DataLoader(data.val, batch_size=256, shuffle=False, num_workers=config.workers)
    steps_per_epoch = math.ceil(len(data.train) / (per_rank_batch * dist_env.world_size))
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, total_steps, warmup))
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best, history = 0, -1.0, []
    if resume:
        training = resume["training"]
        optimizer.load_state_dict(training["optimizer"])
        scheduler.load_state_dict(training["scheduler"])
        start_epoch = int(resume["epoch"])
        best = float(training["best_accuracy"])
        history = [EpochStats(**h) for h in training["history"]]

    def save(path: Path, epoch: int, accuracy: float) -> None:
        save_checkpoint(
            path,
            model,
            arch=spec.name,
            class_names=data.class_names,
            input_size=data.image_size,
            preprocessing=data.preprocessing,
            epoch=epoch,
            accuracy=accuracy,
            extra={
                "training": {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "best_accuracy": max(best, accuracy),
                    "history": [asdict(h) for h in history],
                    "config": config.to_record(),
                    "world_size": dist_env.world_size,
                },
                **({"data_split": digits_split_id()} if config.dataset == "digits" else {}),
            },
        )

    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 1000 + epoch * 10 + dist_env.rank)  # dropout masks
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = DataLoader(
            data.train,
            batch_size=per_rank_batch,
            sampler=sampler,
            shuffle=sampler is None,
            generator=generator if sampler is None else None,
            num_workers=config.workers,
            drop_last=False,
        )
        progress.epoch_started(epoch + 1, config.epochs, len(loader))
        net.train()
        started, seen, loss_sum, correct, rates = time.perf_counter(), 0, 0.0, 0, []
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if data.augment == "shift":
                images = _shift(images, generator)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(images)
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            rate_now = getattr(getattr(model, "channel_dropout", None), "last_rate", None)  # ResNets' adaptive rho
            if rate_now is not None:
                rates.append(rate_now)
            progress.batch_done(loss_sum / seen, correct / seen, seen * dist_env.world_size / (time.perf_counter() - started))
        seconds = time.perf_counter() - started
        if dist_env.is_main:
            val_loss, val_acc = _evaluate(model, val_loader, device)
            stats = EpochStats(
                epoch=epoch + 1,
                train_loss=loss_sum / max(1, seen),
                train_accuracy=correct / max(1, seen),
                val_loss=val_loss,
                val_accuracy=val_acc,
                lr=float(scheduler.get_last_lr()[0]),
                drop_rate=float(np.mean(rates)) if rates else None,
                images_per_second=seen * dist_env.world_size / seconds,
                seconds=seconds,
            )
            history.append(stats)
            progress.epoch_done(stats)
            if val_acc > best:
                best = val_acc
                save(out, epoch + 1, val_acc)
            save(last, epoch + 1, val_acc)
        if dist_env.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
    return TrainResult(out, last, best, config.epochs, history, dist_env.world_size, start_epoch, fresh)
