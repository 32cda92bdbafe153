"""BERT pretraining: the masked-LM objective, and `lmforge pretrain` / `lmforge fill-mask` end to end."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.config import BertConfig
from lmforge.models import build_model
from lmforge.objectives import IGNORE, masked_lm_loss


def _tiny_bert(vocab: int = 50) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(BertConfig(vocab_size=vocab, context_len=16, n_layer=1, n_head=2, d_model=16,
                                  dropout=0.0, attn_dropout=0.0)).eval()


def test_masked_lm_loss_sums_over_selected_tokens_and_counts_correct():
    model = _tiny_bert()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (3, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[2, 8:] = 0
    labels = torch.full_like(ids, IGNORE)
    labels[0, 3], labels[1, [1, 5, 7]], labels[2, 2] = 9, torch.tensor([10, 11, 12]), 13
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    loss_sum, n, extras = masked_lm_loss(model, batch)
    logits = model(ids, attention_mask=attention)
    sel = labels != IGNORE
    expected = F.cross_entropy(logits[sel], labels[sel], reduction="sum")
    assert int(n) == 5
    torch.testing.assert_close(loss_sum, expected)
    assert int(extras["correct"]) == int((logits[sel].argmax(-1) == labels[sel]).sum())
    # a label equal to the model's own top prediction is counted as correct
    labels[0, 3] = logits[0, 3].argmax()
    _, _, extras2 = masked_lm_loss(model, batch)
    assert int(extras2["correct"]) == int(extras["correct"]) + int(logits[0, 3].argmax() != 9)


def test_masked_lm_loss_ignores_padding():
    model = _tiny_bert()
    ids = torch.randint(5, 50, (1, 8), generator=torch.Generator().manual_seed(2))
    labels = torch.full_like(ids, IGNORE)
    labels[0, 2] = 7
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    batch_padded = {"input_ids": padded, "attention_mask": (torch.arange(12) < 8).long()[None],
                    "labels": torch.cat([labels, torch.full((1, 4), IGNORE)], dim=1)}
    torch.testing.assert_close(masked_lm_loss(model, batch)[0], masked_lm_loss(model, batch_padded)[0])
