"""`--nproc N`: start the same command under torchrun, N processes on this machine.

`lmforge pretrain --nproc 2 ...` runs `python -m torch.distributed.run --standalone --nproc_per_node 2
-m lmforge pretrain ...` (the same arguments without --nproc) and returns its exit status. For several
machines, call torchrun yourself with its rendezvous options (see the README).
"""

from __future__ import annotations

import os
import subprocess
import sys

from lmforge.errors import LmforgeError


def without_nproc(argv: list[str]) -> list[str]:
    """`argv` with `--nproc N` / `--nproc=N` taken out."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "lmforge", *without_nproc(argv)]


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run `lmforge ARGV` (minus --nproc) as `nproc` torchrun processes; return torchrun's exit status."""
    if nproc < 1:
        raise LmforgeError(f"--nproc {nproc}: give the number of processes, 1 or more")
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        raise LmforgeError("--nproc starts torchrun itself: drop --nproc when launching with torchrun")
    return subprocess.call(torchrun_command(nproc, argv))
