"""What the command modules share: config arguments, `--device`, `--nproc`, and run references."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.errors import LmforgeError


def add_config_args(p: argparse.ArgumentParser, config_help: str = "TOML config file or preset name") -> None:
    p.add_argument("--config", help=config_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set train.max_steps=100")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="best", help="best, latest, step-N or a path")
    add_skip_damaged(p)


def add_skip_damaged(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-damaged", action="store_true",
                   help="pass over checkpoints whose files fail their checksums (best/latest: the newest intact)")


def add_nproc(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine (starts torchrun; see runtime.parallel)")


def section_config(cls: type, section: str, args: argparse.Namespace):
    """One pipeline section (e.g. [corpus]) from --config and --set."""
    from lmforge.config import apply_overrides, from_dict, read_toml, resolve_preset

    raw = read_toml(resolve_preset(args.config)).get(section, {}) if args.config else {}
    prefixed = [o for o in args.overrides if o.startswith(section + ".")]
    foreign = [o for o in args.overrides if not o.startswith(section + ".")]
    if foreign:
        raise LmforgeError(f"--set {foreign[0]!r}: this command only takes '{section}.*' keys")
    raw = apply_overrides({section: raw}, prefixed)[section]
    return from_dict(cls, raw, section, args.config or "--set")


def run_path(run: str) -> Path:
    """A run folder for a command argument: `hf:DIR` / `hf:NAME` are imported once (cached) here, at
    the boundary, so the library only ever sees folders."""
    if str(run).startswith("hf:"):
        from lmforge.interop import resolve_run

        return resolve_run(run)
    return Path(run)


def load(args: argparse.Namespace, run: str | None = None):
    """The run of a command (args.run), its --checkpoint on its --device."""
    from lmforge.tasks import load_run

    return load_run(run_path(run or args.run), args.checkpoint, args.device, args.skip_damaged)
