import pytest

from lmforge.config import dumps_toml, from_dict, save_config, to_dict
from lmforge.errors import LmforgeError
from lmforge.models import BertConfig, GPTConfig
from lmforge.optim import OptimConfig
from lmforge.runs import RunConfig
from lmforge.tasks import load_config
from lmforge.tasks.masked_lm import MaskedLMConfig
from lmforge.train import TrainConfig

try:
    import tomllib
except ImportError:  # pragma: no cover
    import tomli as tomllib


def test_overrides_parse_by_field_type():
    cfg = load_config(None, ["model.kind=bert", "model.n_layer=3", "optim.betas=[0.9, 0.99]",
                                        "train.max_steps=7", "runtime.compile=true"])
    assert isinstance(cfg.model, BertConfig) and cfg.model.n_layer == 3
    assert cfg.optim.betas == (0.9, 0.99) and cfg.train.max_steps == 7 and cfg.runtime.compile is True


@pytest.mark.parametrize("override, message", [
    ("train.max_step=3", "did you mean 'train.max_steps'"),
    ("model.kind=gtp", "did you mean 'gpt'"),
    ("train.max_steps=1.5", "must be an integer"),
    ("runtime.precision=bf61", "did you mean 'bf16'"),
    ("trian.seed=1", "did you mean 'train'"),
    ("model.d_model=30", "divisible"),
    ("nonsense", "expected section.key=value"),
])
def test_bad_keys_and_types_name_the_key(override, message):
    with pytest.raises(LmforgeError, match=message):
        load_config(None, [override])


def test_toml_round_trip(tmp_path):
    cfg = load_config(None, ["model.kind=bert", "train.seed=5", "data.path=some/where"])
    assert isinstance(cfg, MaskedLMConfig) and cfg.task == "masked_lm"
    save_config(cfg, tmp_path / "config.toml")
    again = load_config(tmp_path / "config.toml")
    assert again == cfg
    assert from_dict(MaskedLMConfig, tomllib.loads(dumps_toml(to_dict(cfg)))) == cfg


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nmax_stpes = 3\n")
    with pytest.raises(LmforgeError, match=r"bad.toml.*train.max_stpes.*train.max_steps"):
        load_config(path)


def test_derived_values():
    assert GPTConfig(d_model=256, mlp="swiglu").ff_width() == 704
    train = TrainConfig(batch_size=32, micro_batch_size=8)
    assert train.grad_accum_steps(1) == 4 and train.grad_accum_steps(2) == 2
    with pytest.raises(LmforgeError, match="multiple"):
        TrainConfig(batch_size=30, micro_batch_size=8).grad_accum_steps(1)


def test_settings_a_task_never_reads_are_refused():
    """A GPT trains causal_lm, which has no [mlm] section: its keys are unknown, not silently ignored."""
    with pytest.raises(LmforgeError, match="unknown key 'mlm'"):
        load_config(None, ["mlm.mask_prob=0.3"])
    with pytest.raises(LmforgeError, match="task 'causal_lm' cannot train a bert model"):
        load_config(None, ["model.kind=bert", "task=causal_lm"])
    with pytest.raises(LmforgeError, match="did you mean 'masked_lm'"):
        load_config(None, ["task=masked_ln"])


def test_a_partial_section_keeps_its_owner_defaults():
    """A fine-tuning run's [optim] defaults (betas 0.9/0.999) survive a partial [optim] from the user."""
    from lmforge.tasks.classify import ClassifyConfig

    cfg = from_dict(ClassifyConfig, {"optim": {"eps": 1e-6}})
    assert cfg.optim.betas == (0.9, 0.999) and cfg.optim.eps == 1e-6
    assert from_dict(RunConfig, {"optim": {"eps": 1e-6}}).optim.betas == OptimConfig().betas
