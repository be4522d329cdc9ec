"""The epoch-list matching schedule (``MGDMatchingCallback(update_epochs=...)``), as the official unsupervised code
(``unsup/main_moco_mgd.py``): an update before training, then after each epoch ``e`` with ``e + 1`` in
``ceil(logspace(0, 2.1, 10))``."""

from __future__ import annotations

import math

import pytest

from mgd_lightning import MGDMatchingCallback
from mgd_lightning._lightning import pl
from mgd_lightning.distill.epoch_schedule import OFFICIAL_UNSUP_EPOCHS, check_update_epochs, log_spaced_epochs
from tests.test_callback import _loaders, _module, _trainer


def _reference_update_epochs(epochs: int) -> list[int]:
    """The official loop, written out: ``mgd_update`` before the loop, then after training epoch ``e`` when
    ``e + 1`` is in the list; as the 0-based epoch whose training comes next."""
    listed = [math.ceil(10 ** (2.1 * i / 9)) for i in range(10)]
    updates = [0]
    for epoch in range(epochs):
        if epoch + 1 in listed and epoch + 1 < epochs:
            updates.append(epoch + 1)
    return updates


def test_official_epochs_are_the_log_spaced_list():
    assert OFFICIAL_UNSUP_EPOCHS == (1, 2, 3, 6, 9, 15, 26, 43, 74, 126)
    assert log_spaced_epochs(10, 2.1) == OFFICIAL_UNSUP_EPOCHS
    assert check_update_epochs("official_unsup") == OFFICIAL_UNSUP_EPOCHS
    assert [e for e in range(200) if e == 0 or e in OFFICIAL_UNSUP_EPOCHS] == _reference_update_epochs(200)


def test_updates_at_the_listed_epochs(tmp_path):
    cb = MGDMatchingCallback(update_epochs="official_unsup", num_samples=16)
    _trainer(tmp_path, max_epochs=7, callbacks=[cb], limit_train_batches=1).fit(_module(), *_loaders())
    assert [r["epoch"] for r in cb.history] == _reference_update_epochs(7) == [0, 1, 2, 3, 6]
    assert cb.state_dict()["update_epochs"] == list(OFFICIAL_UNSUP_EPOCHS)


def test_resume_goes_on_with_the_list_without_repeating(tmp_path):
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    cb = MGDMatchingCallback(update_epochs=[2, 4], num_samples=16)
    _trainer(tmp_path, max_epochs=3, callbacks=[cb, ckpt], enable_checkpointing=True,
             limit_train_batches=1).fit(_module(), *_loaders())
    assert [r["epoch"] for r in cb.history] == [0, 2]
    path = sorted((tmp_path / "ckpt").glob("*epoch=2*.ckpt"))[-1]  # end of epoch 2, after its update
    cb2 = MGDMatchingCallback(update_epochs=[2, 4], num_samples=16)
    _trainer(tmp_path, max_epochs=6, callbacks=[cb2], limit_train_batches=1).fit(_module(), *_loaders(),
                                                                                 ckpt_path=path)
    assert [r["epoch"] for r in cb2.history] == [0, 2, 4]
    cb3 = MGDMatchingCallback(update_epochs=[3], num_samples=16)
    with pytest.warns(UserWarning, match=r"update_epochs=\[2, 4\]"):
        cb3.load_state_dict(cb2.state_dict())


@pytest.mark.parametrize("kwargs, message", [
    (dict(update_epochs="log"), r"update_epochs must be a list of epochs or one of \['official_unsup'\]; got 'log'"),
    (dict(update_epochs=[1, -2]), "update_epochs must hold epochs >= 0"),
    (dict(update_epochs=[1.5]), "update_epochs must hold whole epoch numbers"),
    (dict(update_epochs=[1], update_every_n_steps=10), "give update_epochs"),
    (dict(update_epochs=[1], update_every_n_epochs=3), "give update_epochs .* or update_every_n_epochs"),
])
def test_bad_update_epochs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MGDMatchingCallback(**kwargs)
