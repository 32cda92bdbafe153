import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.models import RNNLM, RNNConfig, build_model


def tiny(**kw) -> RNNLM:
    torch.manual_seed(0)
    cfg = RNNConfig(**{**dict(vocab_size=41, n_layer=2, d_embed=24, d_hidden=24, dropout=0.2), **kw})
    return build_model(cfg).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_carried_state_equals_whole_sequence(cell):
    model = tiny(cell=cell)
    ids = torch.randint(0, 41, (3, 16))
    with torch.no_grad():
        whole, _ = model(ids)
        first, state = model(ids[:, :9])
        second, _ = model(ids[:, 9:], state)
        fresh, _ = model(ids[:, 9:])
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fresh, second, atol=1e-4)  # the state carries information


def test_state_shapes_and_detach():
    lstm, gru = tiny(), tiny(cell="gru")
    h, c = lstm.init_state(5, "cpu")
    assert h.shape == c.shape == (2, 5, 24) and h.abs().sum() == 0
    assert gru.init_state(5).shape == (2, 5, 24)
    lstm.train()
    _, state = lstm(torch.randint(0, 41, (5, 4)))
    detached = RNNLM.detach_state(state)
    assert all(s.requires_grad for s in state) and not any(s.requires_grad for s in detached)


def test_tying_init_counts_and_gradients():
    tied, untied = tiny(), tiny(tie_embeddings=False)
    assert tied.decoder.weight is tied.encoder.weight
    assert untied.num_params() - tied.num_params() == 41 * 24
    assert tied.encoder.weight.abs().max() <= 0.1 and tied.decoder.bias.abs().sum() == 0
    lstm_weights = 2 * 4 * (24 * 24 + 24 * 24 + 2 * 24)  # two layers of W_ih, W_hh, b_ih, b_hh
    assert tied.num_params(non_embedding=True) == lstm_weights + 41
    assert tied.flops_per_token(35) == 6 * (lstm_weights + 41 + 41 * 24)
    tied.train()
    logits, _ = tied(torch.randint(0, 41, (2, 5)))
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in tied.parameters())


def test_tying_needs_equal_sizes():
    with pytest.raises(LmforgeError, match="d_embed == model.d_hidden"):
        RNNConfig(vocab_size=10, d_embed=16, d_hidden=32)


def test_wikitext2_preset_is_the_classic_medium_lstm():
    from lmforge.tasks import load_config

    cfg = load_config("rnn-lstm-wt2", ["model.vocab_size=33278"])
    m, o = cfg.model, cfg.optim
    assert (m.cell, m.n_layer, m.d_hidden, m.dropout, m.tie_embeddings) == ("lstm", 2, 650, 0.5, True)
    assert (o.name, o.lr, o.momentum, cfg.train.grad_clip, cfg.train.batch_size, cfg.seq_len()) == \
        ("sgd", 20.0, 0.0, 0.25, 20, 35)
    with torch.device("meta"):
        model = build_model(m)
    # 33278 x 650 tied embedding + decoder bias + two LSTM layers of 4 x (650 x 1300 + 2 x 650)
    assert model.num_params() == 33278 * 650 + 33278 + 2 * 4 * (650 * 1300 + 2 * 650)
