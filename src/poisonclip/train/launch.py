"""The one entry point into open_clip's trainer: ``python -m poisonclip.train.launch ARGS``.

It registers poisonclip's model configs in the trainer's own process (open_clip keeps its
model registry per process, so each torchrun rank must do it) and then hands every argument
unchanged to ``open_clip_train.main.main``. Nothing else about training is ours.

    python -m poisonclip.train.launch --model poisonclip-tiny-rn --train-data train.tsv ...
    torchrun --nproc-per-node 8 -m poisonclip.train.launch --model RN50 ...
"""

from __future__ import annotations

import logging
import sys
import warnings


def _allow_cpu_ddp() -> None:
    """Let open_clip_train's DDP wrapping work on CPU (gloo) as it does on GPUs.

    open_clip_train always passes ``device_ids=[device]`` to DistributedDataParallel; torch
    only accepts device_ids for GPU modules and raises for a CPU one. Dropping them for CPU
    modules is what torch asks for; GPU runs are untouched. This is the one adaptation of
    the trainer, and it is what lets the distributed path run in CI without a GPU.
    """
    import torch
    from torch.nn.parallel import DistributedDataParallel

    class CpuTolerantDDP(DistributedDataParallel):
        def __init__(self, module, device_ids=None, *args, **kwargs):
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuTolerantDDP


def main(argv: list[str] | None = None) -> int:
    from poisonclip.train.models import register_models

    register_models()
    # open_clip sets pin_memory=True for its loaders; on a CPU-only machine torch warns once
    # per loader that it has no effect. Nothing to act on, so keep the console readable.
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator.*")
    from open_clip_train.main import main as open_clip_main

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:  # torchrun ... -m poisonclip.train.launch -- ARGS (Python versions differ)
        args = args[1:]
    _allow_cpu_ddp()
    rc = open_clip_main(args)
    # open_clip's setup_logging sets every existing logger to INFO, which makes torch's
    # compiler print a report at interpreter exit about nothing we compiled.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch._"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # open_clip_train.main returns -1 (after printing why) when it refuses to start.
    return 0 if rc is None else (1 if rc == -1 else int(rc))


if __name__ == "__main__":
    sys.exit(main())
