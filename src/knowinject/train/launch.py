"""One finetune from the command line, so ``accelerate launch`` can run it on several processes (each
takes its rows of every global batch: :func:`knowinject.train.finetune.finetune`).

Usage: ``accelerate launch --multi_gpu --num_processes 4 -m knowinject.train.launch --model FOLDER
--examples train.jsonl --out runs/my-run --method lora --epochs 3`` (``python -m`` for one process).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from knowinject.train import models
from knowinject.train.finetune import FinetuneConfig, finetune


def main(argv: list[str] | None = None) -> int:
    """One finetune from the command line, so ``accelerate launch`` can run it on several processes:
    ``accelerate launch --multi_gpu --num_processes 4 -m knowinject.train.launch --model FOLDER
    --examples train.jsonl --out runs/my-run --method lora --epochs 3``."""
    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help='"smollm2", a local model folder, or a Hugging Face id')
    ap.add_argument("--examples", required=True, type=Path, help="JSON Lines: prompt/completion, messages or text")
    ap.add_argument("--out", type=Path, help="save the adapter or model, loss_log.csv and train_summary.json here")
    ap.add_argument("--method", choices=("lora", "full"), default="lora")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=None, help="default: 3e-3 for LoRA, 3e-4 for full finetuning")
    ap.add_argument("--batch-size", type=int, default=8, help="the global batch, split over the processes")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10, help="optimizer steps between loss-log rows")
    args = ap.parse_args(argv)
    if not args.examples.exists():
        ap.error(f"--examples {args.examples} does not exist")
    examples = pd.read_json(args.examples, lines=True).to_dict("records")
    cfg = FinetuneConfig(method=args.method, epochs=args.epochs, lr=args.lr or (3e-3 if args.method == "lora" else 3e-4),
                         batch_size=args.batch_size, precision=args.precision, seed=args.seed,
                         log_every=args.log_every)
    model, tok = models.load(args.model)
    _, result = finetune(model, tok, examples, cfg, args.out, progress=False)
    from accelerate import PartialState
    if PartialState().is_main_process:
        print(json.dumps({"processes": result.processes, "local_rows": result.local_rows, **result.summary()}))
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        # Tear the process group down before the interpreter does: left to exit, gloo's threads can abort a
        # rank ("terminate called without an active exception", exit -6) after its work is done. The barrier
        # keeps a rank from leaving while another still talks to it.
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
