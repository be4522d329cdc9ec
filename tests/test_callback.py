"""MGDMatchingCallback: schedule, mode handling, NaN handling, resume, and two-process DDP."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mgd_lightning import DistillationModule, MGDMatchingCallback
from mgd_lightning._lightning import pl
from mgd_lightning.matching import assignment_cost, balanced_assignment, channel_cost
from tests.toys import ToyNet, digits_dataset


def _module(**kwargs):
    torch.manual_seed(0)
    return DistillationModule(ToyNet((12, 24)), ToyNet((5, 7)), lr=0.05, **kwargs)


def _trainer(tmp_path, **kwargs):
    defaults = dict(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                    num_sanity_val_steps=0)
    return pl.Trainer(**{**defaults, **kwargs})


def _loaders(n=96):
    data = digits_dataset(limit=n)
    return DataLoader(data, batch_size=16, shuffle=True), DataLoader(data, batch_size=48)


def test_schedule_first_epoch_then_every_n(tmp_path):
    cb = MGDMatchingCallback(update_every_n_epochs=2)
    m = _module()
    _trainer(tmp_path, max_epochs=5, callbacks=[cb]).fit(m, *_loaders())
    assert [r["epoch"] for r in cb.history] == [0, 2, 4]
    assert int(m.last_matching_epoch) == 4
    rec = cb.history[0]
    assert rec["images"] == 96 and rec["pass_s"] > 0 and rec["solve_s"] >= 0
    assert 0.0 <= rec["changed_tap0"] <= 1.0 and rec["cost_tap1"] > 0


def test_matching_is_the_optimum_of_the_pass_cost(tmp_path):
    cb = MGDMatchingCallback(num_samples=40)
    m = _module()
    reference = copy.deepcopy(m)
    _trainer(tmp_path, callbacks=[cb], limit_train_batches=1).fit(m, *_loaders())
    # recompute the cost over the same 40 images, student in eval mode
    data = digits_dataset(limit=96)
    idx = cb.subset_indices(len(data), 0, 0, 1)
    assert len(idx) == 40 and cb.last_num_images == 40
    reference.eval()
    _, _, s_feats, t_feats = reference.forward_features(data.tensors[0][idx], student_bn=False)  # raw taps
    for k in range(2):
        want = channel_cost(s_feats[k], t_feats[k], "cosine", dtype=torch.float64, compute_dtype=torch.float64)
        torch.testing.assert_close(cb.last_costs[k], want, rtol=1e-5, atol=1e-4)  # float32 per batch
        # the module's default: the reference code's assignment over the first alpha * C_S teacher channels
        optimum = assignment_cost(want, balanced_assignment(want, unmatched=m.unmatched))
        assert assignment_cost(want, m.matchings[k]) == pytest.approx(optimum, rel=1e-5)


def test_student_mode_restored_also_when_the_pass_raises(tmp_path):
    m = _module()
    cb = MGDMatchingCallback()
    trainer = _trainer(tmp_path, callbacks=[cb])
    train, _ = _loaders()
    trainer.fit(m, train)  # attaches the loader and trainer
    m.train()
    cb.update_matching(trainer, m)
    assert m.student.training and all(b.training for b in m.student_bns) and not m.teacher.training

    def boom(x, **kwargs):
        raise RuntimeError("boom")

    m.forward_features = boom
    with pytest.raises(RuntimeError, match="boom"):
        cb.update_matching(trainer, m)
    assert m.student.training and all(b.training for b in m.student_bns)
    m.eval()
    del m.forward_features
    cb.update_matching(trainer, m)
    assert not m.student.training


@pytest.mark.parametrize("mode", ["pass", "online"])
def test_cost_ignores_the_student_side_batchnorm(tmp_path, mode):
    """The reference code's matching cost uses the raw student taps (``extract_feature``): changing the
    statistics and affine parameters of the student-side BN must not change it (pass and online mode);
    ``student_bn_in_cost=True`` (opt-in) does depend on them."""
    m = _module()
    train, _ = _loaders()
    if mode == "pass":
        cb = MGDMatchingCallback(num_samples=48)
        trainer = _trainer(tmp_path, callbacks=[cb], limit_train_batches=1)
        trainer.fit(m, train)  # attaches the loader and trainer
        before, _ = cb.compute_costs(trainer, m)
    g = torch.Generator().manual_seed(1)
    for bn in m.student_bns:  # a BN with shifts and sign flips, as after training
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 3)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 4 + 0.1)
        with torch.no_grad():
            bn.weight.copy_(torch.randn(bn.num_features, generator=g))
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 2)
    if mode == "pass":
        after, _ = cb.compute_costs(trainer, m)
        for a, b in zip(before, after):
            torch.testing.assert_close(a, b)
        with_bn, _ = MGDMatchingCallback(num_samples=48, student_bn_in_cost=True).compute_costs(trainer, m)
        assert not torch.allclose(with_bn[0], after[0], rtol=1e-3)
        return
    # online: the kept features are the raw taps of the training forward, not the BN'd ones
    seen = []

    class Spy(pl.Callback):  # runs before the matching callback consumes the kept features
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            raw = [f.detach() for f in pl_module.student_taps.features]
            kept = pl_module.last_train_features[0]
            bn_d = pl_module.apply_student_bn(raw)
            seen.append(all(torch.equal(r, k) for r, k in zip(raw, kept))
                        and not any(torch.allclose(b, k) for b, k in zip(bn_d, kept)))

    cb = MGDMatchingCallback(mode="online")
    _trainer(tmp_path, callbacks=[Spy(), cb], max_epochs=1, limit_train_batches=2).fit(m, train)
    assert seen == [True, True]


class _NaNMatchingData(pl.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.data = digits_dataset(limit=64)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=16)

    def matching_dataset(self):
        x, y = self.data.tensors
        return TensorDataset(torch.full_like(x, float("nan")), y)


def test_nan_cost_keeps_previous_matching_and_warns(tmp_path):
    m = _module()
    before = [g.clone() for g in m.matchings]
    cb = MGDMatchingCallback(update_every_n_epochs=1)
    with pytest.warns(UserWarning, match=r"cost of tap 0 \(teacher 'tap0', student 'tap0'\) has NaN"):
        _trainer(tmp_path, max_epochs=2, callbacks=[cb]).fit(m, datamodule=_NaNMatchingData())
    assert all(torch.equal(a, b) for a, b in zip(before, m.matchings))
    assert len(cb.history) == 2  # training went on


def test_uses_matching_dataset_of_the_datamodule(tmp_path):
    class Data(_NaNMatchingData):
        def matching_dataset(self):
            return TensorDataset(*(t[:10] for t in self.data.tensors))

    cb = MGDMatchingCallback()
    _trainer(tmp_path, callbacks=[cb], limit_train_batches=1).fit(_module(), datamodule=Data())
    assert cb.history[0]["images"] == 10


def test_resume_restores_matching_and_schedule(tmp_path):
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    cb = MGDMatchingCallback(update_every_n_epochs=3)
    m = _module()
    _trainer(tmp_path, max_epochs=2, callbacks=[cb, ckpt], enable_checkpointing=True).fit(m, *_loaders())
    saved = [g.clone() for g in m.matchings]
    assert [r["epoch"] for r in cb.history] == [0]
    path = sorted((tmp_path / "ckpt").glob("*.ckpt"))[-1]  # end of epoch 1

    # A fresh module (matching buffers at their initial value) resumed from the checkpoint:
    cb2 = MGDMatchingCallback(update_every_n_epochs=3)
    m2 = _module()
    assert not all(torch.equal(a, b) for a, b in zip(saved, m2.matchings))

    class Spy(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append((trainer.current_epoch, [g.clone() for g in pl_module.matchings]))

    seen = []
    _trainer(tmp_path, max_epochs=4, callbacks=[cb2, Spy()]).fit(m2, *_loaders(), ckpt_path=path)
    # epoch 2 is not due (last update at 0, every 3): the checkpoint's matching is used;
    # epoch 3 is due. The callback's history came back with the checkpoint.
    assert seen[0][0] == 2 and all(torch.equal(a, b) for a, b in zip(saved, seen[0][1]))
    assert [r["epoch"] for r in cb2.history] == [0, 3]
    loaded = DistillationModule.load_from_checkpoint(path, teacher=ToyNet((12, 24)), student=ToyNet((5, 7)))
    assert all(torch.equal(a, b) for a, b in zip(saved, loaded.matchings))
    assert int(loaded.last_matching_epoch) == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="update_every_n_epochs must be >= 1; got 0"):
        MGDMatchingCallback(update_every_n_epochs=0)
    with pytest.raises(ValueError, match="num_samples"):
        MGDMatchingCallback(num_samples=0)
    with pytest.raises(ValueError, match="metric must be one of"):
        MGDMatchingCallback(metric="l1")


def test_subset_shards_are_disjoint_equal_and_identical_across_ranks():
    cb = MGDMatchingCallback(num_samples=100, seed=3)
    shards = [cb.subset_indices(1000, 5, r, 4) for r in range(4)]
    assert [len(s) for s in shards] == [25] * 4
    union = torch.cat(shards)
    assert union.unique().numel() == 100
    assert torch.equal(union, cb.subset_indices(1000, 5, 0, 1))  # the same subset as one process
    assert not torch.equal(cb.subset_indices(1000, 6, 0, 1), union)  # a new draw each epoch


def test_short_fit_on_real_images_lowers_the_distillation_loss(tmp_path):
    # teacher first learns the digits a little, then MGD-AMP distils it
    torch.manual_seed(0)
    teacher = ToyNet((16, 32))
    data = digits_dataset(limit=512)
    opt = torch.optim.SGD(teacher.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        for x, y in DataLoader(data, batch_size=32, shuffle=True):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(teacher(x), y).backward()
            opt.step()
    m = DistillationModule(teacher, ToyNet((6, 10)), lr=0.02, loss_factor=100.0)

    def distill_loss():
        m.eval()
        with torch.no_grad():
            _, _, s, t = m.forward_features(data.tensors[0])
            return float(torch.stack(m.distillation_losses(s, t)).sum())

    losses = []

    class Probe(pl.Callback):  # runs after the matching callback at each epoch start
        def on_train_epoch_start(self, trainer, pl_module):
            losses.append(distill_loss())
            pl_module.train()

    cb = MGDMatchingCallback(update_every_n_epochs=1)
    trainer = _trainer(tmp_path, max_epochs=4, callbacks=[cb, Probe()])
    trainer.fit(m, DataLoader(data, batch_size=32, shuffle=True))
    assert distill_loss() < 0.7 * losses[0], losses


def test_bf16_mixed_precision_pass_and_training(tmp_path):
    cb = MGDMatchingCallback()
    m = _module()
    _trainer(tmp_path, callbacks=[cb], precision="bf16-mixed", limit_train_batches=2).fit(m, *_loaders())
    assert cb.last_costs[0].dtype == torch.float64 and bool(torch.isfinite(cb.last_costs[0]).all())
    assert cb.history[0]["images"] == 96


def test_online_mode_solves_on_the_training_forwards_without_a_pass(tmp_path):
    cb = MGDMatchingCallback(update_every_n_epochs=2, mode="online")
    m = _module()
    passes = []
    original = cb.compute_costs
    cb.compute_costs = lambda trainer, module: passes.append(trainer.current_epoch) or original(trainer, module)
    data = digits_dataset(limit=64)
    _trainer(tmp_path, max_epochs=4, callbacks=[cb]).fit(m, DataLoader(data, batch_size=16))
    assert passes == [0]  # only the first update needs a pass
    assert [(r["epoch"], r["source"]) for r in cb.history] == [(0, "pass"), (2, "online")]
    assert cb.history[1]["images"] == 2 * 64  # two epochs of training forwards
    assert m.last_train_features is None  # consumed each step, not kept
    with pytest.raises(ValueError, match="mode must be one of"):
        MGDMatchingCallback(mode="lazy")


def test_online_costs_equal_the_sum_over_training_steps(tmp_path):
    cb = MGDMatchingCallback(update_every_n_epochs=1, mode="online")
    m = _module()
    sums = [torch.zeros(5, 12, dtype=torch.float64), torch.zeros(7, 24, dtype=torch.float64)]

    class Recompute(pl.Callback):  # runs before the matching callback consumes the features
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            s_feats, t_feats = pl_module.last_train_features
            for k in range(2 if trainer.current_epoch == 0 else 0):
                sums[k] += channel_cost(s_feats[k], t_feats[k], "cosine", dtype=torch.float64)

    data = digits_dataset(limit=48)
    _trainer(tmp_path, max_epochs=2, callbacks=[Recompute(), cb]).fit(m, DataLoader(data, batch_size=16))
    assert cb.history[1]["source"] == "online" and cb.history[1]["images"] == 48
    for k in range(2):
        torch.testing.assert_close(cb.last_costs[k], sums[k])
        assert torch.equal(m.matchings[k], balanced_assignment(sums[k], unmatched=m.unmatched))
