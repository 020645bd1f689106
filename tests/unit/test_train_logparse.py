"""open_clip_train's progress lines back into numbers."""

from __future__ import annotations

import math

from poisonclip.train.logparse import EpochStart, LogParser, Resumed, StepLog, summarize

# Lines as open_clip_train 3.x writes them (train.py, train_one_epoch; main.py).
START0 = "2026-11-29,11:56:09 | INFO | Start epoch 0"
START1 = "2026-11-29,11:56:20 | INFO | Start epoch 1"


def step(epoch: int, samples: int, total: int, pct: int, batch_t: float, loss: float, avg: float) -> str:
    return (f"2026-11-29,11:56:14 | INFO | Train Epoch: {epoch} [{samples:>3}/{total} ({pct:.0f}%)] "
            f"Data (t): 0.037 Batch (t): {batch_t:.3f}, 12.2828/s, 12.2828/s/gpu LR: 0.000200 "
            f"Logit Scale: 14.286 Contrastive_loss: {loss:#.5g} ({avg:#.5g}) Loss: {loss:#.5g} ({avg:#.5g})")


def test_step_line_fields():
    p = LogParser(global_batch=64)
    assert p.feed(START0) == EpochStart(0)
    ev = p.feed(step(0, 192, 512, 38, 0.843, 4.6766, 4.6223))
    assert isinstance(ev, StepLog)
    assert (ev.epoch, ev.step, ev.steps_in_epoch, ev.window) == (0, 3, 8, 3)
    assert (ev.loss, ev.loss_avg, ev.batch_time, ev.lr, ev.logit_scale) == (4.6766, 4.6223, 0.843, 0.0002, 14.286)
    assert p.feed("some warning") is None
    assert p.feed("2026 | INFO | => resuming checkpoint '/r/checkpoints/epoch_latest.pt' (epoch 1)") == \
        Resumed(1, "/r/checkpoints/epoch_latest.pt")


def test_nan_loss_is_parsed_not_dropped():
    ev = LogParser(8).feed(step(0, 8, 16, 50, 0.1, float("nan"), float("nan")))
    assert isinstance(ev, StepLog) and math.isnan(ev.loss)


def test_summary_weights_time_by_window_and_restarted_epochs_replace_partial_ones():
    lines = [START0, step(0, 64, 256, 25, 1.0, 4.0, 4.0), step(0, 256, 256, 100, 0.5, 3.0, 3.5),
             START1, step(1, 64, 256, 25, 0.5, 2.9, 2.9),  # interrupted here
             "x | INFO | => resuming checkpoint '/c/epoch_latest.pt' (epoch 1)",
             START1, step(1, 128, 256, 50, 0.25, 2.5, 2.5), step(1, 256, 256, 100, 0.25, 2.1, 2.3)]
    epochs, resumed = summarize(lines, global_batch=64)
    assert resumed == 1
    assert [e.steps for e in epochs] == [4, 4]
    assert epochs[0].train_time_s == 1.0 * 1 + 0.5 * 3
    assert epochs[1].losses == [2.5, 2.1] and epochs[1].loss == 2.3
    assert epochs[1].train_time_s == 0.25 * 2 + 0.25 * 2
    assert epochs[1].samples_per_s == 4 * 64 / 1.0
