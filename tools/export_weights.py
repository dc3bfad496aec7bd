#!/usr/bin/env python
"""Copy a checkpoint's weights without the trainer's state, in float16 by default: a file to ship or share.

    python tools/export_weights.py output/run/model_final.pth weights.pth            # float16
    python tools/export_weights.py output/run/model_final.pth weights.pth --dtype float32

The copy keeps the model (and a semi-supervised run's EMA teacher) and the checkpoint's description (its
config, class names and stage: tools/infer.py needs no config for it), and drops the optimizer, scheduler
and iteration: it starts a new training (MODEL.WEIGHTS) or is evaluated (--eval-only), but cannot resume one.
A checkpoint of this model (13 M parameters) is 160 MB with its optimizer state; its float16 weights are
27 MB. Loading casts them back to the model's dtype (float32 on the CPU). semidetr.engine.checkpoint.
export_weights does the work.
"""
import argparse
import os
import sys

import torch

from semidetr.engine.checkpoint import WEIGHT_KEYS, export_weights

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a checkpoint (.pth) written by tools/train_net.py")
    parser.add_argument("target", help="where the weights go (.pth)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                        help="of the floating-point tensors (default float16)")
    args = parser.parse_args(argv)
    try:
        exported = export_weights(args.source, args.target, DTYPES[args.dtype])
    except ValueError as error:
        print(f"export_weights: {error}", file=sys.stderr)
        return 1
    parameters = sum(t.numel() for t in exported["model"].values() if torch.is_tensor(t)) if "model" in exported else 0
    print(f"{args.target}: {', '.join(k for k in WEIGHT_KEYS if k in exported)} ({parameters / 1e6:.1f} M "
          f"values, {args.dtype}), {os.path.getsize(args.target) / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
