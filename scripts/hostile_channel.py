"""Make a DropCov ResNet hostile to INT8 (or FP16) without changing what it computes in FP32.

    python scripts/hostile_channel.py CHECKPOINT OUT.pt [--block layer3.0] [--scale 1000]

One channel of BLOCK's first BatchNorm (the one with the largest |gamma|) is scaled up by
SCALE before the ReLU, and the same input channel of BLOCK.conv2 scaled down by SCALE:
ReLU(s x) = s ReLU(x), so the FP32 output is unchanged, but the per-tensor INT8 scale of
that activation now spends its 256 levels on one channel (SCALE 1000 ruins it), and with
SCALE 1e7 the channel overflows FP16. The precision debugger's tests and the README's
worked example use it; real models get the same trouble from outlier channels.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def make_hostile(checkpoint: Path, out: Path, block: str = "layer3.0", scale: float = 1000.0) -> int:
    """Write the changed checkpoint (our format, every other field kept); returns the channel moved."""
    import torch

    from dropcov_deploy.models import load_checkpoint_with_info

    model = load_checkpoint_with_info(checkpoint).model
    modules = dict(model.named_modules())
    if f"{block}.bn1" not in modules or f"{block}.conv2" not in modules:
        raise SystemExit(f"{checkpoint}: no {block}.bn1 and {block}.conv2 (a ResNet BasicBlock) to change")
    bn, conv = modules[f"{block}.bn1"], modules[f"{block}.conv2"]
    with torch.no_grad():
        channel = int(bn.weight.abs().argmax())
        bn.weight[channel] *= scale
        bn.bias[channel] *= scale
        conv.weight[:, channel] /= scale
    record = torch.load(checkpoint, weights_only=False)
    record["state_dict"] = model.state_dict()
    torch.save(record, out)
    return channel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--block", default="layer3.0")
    parser.add_argument("--scale", type=float, default=1000.0)
    args = parser.parse_args()
    if args.out.resolve() == args.checkpoint.resolve():
        raise SystemExit(f"{args.out}: would replace the checkpoint it is made from; write elsewhere")
    channel = make_hostile(args.checkpoint, args.out, args.block, args.scale)
    print(f"wrote {args.out}: channel {channel} of {args.block}.bn1 x{args.scale:g}, {args.block}.conv2 input channel {channel} /{args.scale:g}")


if __name__ == "__main__":
    main()
