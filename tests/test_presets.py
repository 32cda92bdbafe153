"""Every shipped preset loads and builds its model (whatever presets exist under lmforge/configs/)."""

from __future__ import annotations

import dataclasses

import pytest

from lmforge.config import PRESETS_DIR
from lmforge.tasks import load_config

PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def test_presets_exist():
    assert {"gpt-tiny", "gpt-shakespeare-char", "gpt2-small"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds(name):
    import torch

    from lmforge.models import build_model

    cfg = load_config(name)
    cfg.train.grad_accum_steps()  # batch_size divisible by micro_batch_size
    assert cfg.seq_len() <= cfg.model.context_len
    model_cfg = dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size or 256)
    with torch.device("meta"):  # shapes only: gpt2-small would take seconds to initialise
        model = build_model(model_cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_gpt2_small_has_124m_parameters():
    import torch

    from lmforge.models import build_model

    cfg = load_config("gpt2-small", ["model.vocab_size=50257"])
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 124
    assert cfg.train.batch_size * cfg.seq_len() == 491_520


def test_t5_small_has_the_published_60m_parameters():
    import torch

    from lmforge.models import build_model

    cfg = load_config("t5-small", ["model.vocab_size=32128"])
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert round(sum(p.numel() for p in model.parameters()) / 1e5) == 605  # google-t5/t5-small: 60.5M
