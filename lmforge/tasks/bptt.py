"""Truncated backprop through time: a recurrent LM read as contiguous streams (RNN pretraining).

The training split is cut into `train.batch_size` contiguous streams; step s reads window s (mod the
windows per epoch) of every stream and the hidden state carries from one window to the next, detached
(the objective keeps it, and checkpoints save it). Evaluation reads 10 streams window after window,
the way word-level perplexities in the literature are measured. Inference: `lmforge generate`.
"""

from __future__ import annotations

from lmforge.models import build_model
from lmforge.runs import PretrainConfig
from lmforge.tasks import pretraining
from lmforge.tasks.task import Task

EVAL_STREAMS = 10
"""Evaluation streams of a recurrent LM: the batch size of the classic word-level evaluation."""


def parts(cfg: PretrainConfig, tok, train_src, val_src, runtime) -> pretraining.LMParts:
    from lmforge.data.loaders import StreamBatches, bytes_per_token, stream_eval_batches
    from lmforge.objectives import TruncatedBPTTLoss

    seq_len, n_train = cfg.seq_len(), cfg.train.batch_size
    # training streams are 0..n_train-1, evaluation streams come after them in the same state buffer
    objective = TruncatedBPTTLoss(n_train + EVAL_STREAMS)
    batches = StreamBatches(train_src, seq_len, n_train) if train_src is not None else None
    make_eval = None
    if val_src is not None:
        make_eval = lambda n: stream_eval_batches(val_src, seq_len, EVAL_STREAMS, n, runtime.rank,
                                                  runtime.world_size, first_stream=n_train)
    return pretraining.LMParts(objective, batches, make_eval, bytes_per_token(val_src) if val_src else None)


def build(cfg: PretrainConfig, files: dict) -> object:
    return build_model(cfg.model)


TASK = Task(
    name="bptt", summary="recurrent next-token prediction with truncated backprop through time",
    config_class=PretrainConfig, prepare=lambda *a: pretraining.prepare(parts, *a), build_model=build,
    evaluate=lambda *a: pretraining.evaluate(parts, *a), inference="generate")
