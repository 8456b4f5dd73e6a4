"""Step two: the network's wiring, the paper's sampling, stitching, metrics, and a tiny training."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from msnl.cnn import PatchCNN, PatchEnsemble, as_model, members_of
from msnl.config import CNNConfig, ConfigError
from msnl.inference import predict_patches, stitch
from msnl.metrics import score_lesions
from msnl.patches import candidate_hits
from msnl.sampling import batches, epoch_indices, size_bucketed_batches
from msnl.scan import LabelMap
from msnl.training import (RandomCrop, RandomShift, RandomThickSlices, TrainingSet, _subjects, augmentation, masked_bce,
                           masked_soft_dice, shifted, source_of, thick_slice, train)


@pytest.mark.parametrize("shape", [(7, 9, 3), (20, 14, 6), (5, 5, 5)])
def test_output_has_the_patch_shape_and_one_channel(shape):
    model = PatchCNN().eval()
    assert model(torch.rand(3, 5, *shape)).shape == (3, 1, *shape)


def test_distance_maps_and_skips_are_wired_as_in_the_paper():
    torch.manual_seed(0)
    cfg = CNNConfig(widths=(4, 5, 6, 7, 8, 9))
    model = PatchCNN(cfg).eval()
    seen = {}
    for name in ("conv2", "conv4", "conv5"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, (i[0], o)))
    model.conv7.register_forward_hook(lambda m, i, o: seen.__setitem__("conv7", (i[0], o)))
    x = torch.rand(2, 5, 8, 8, 4)
    model(x)
    conv4_in = seen["conv4"][0]
    assert conv4_in.shape[1] == 6 + 3 and torch.equal(conv4_in[:, 6:], x[:, 2:5])  # DMs after conv3
    conv5_in = seen["conv5"][0]
    assert conv5_in.shape[1] == 7 + 5 and torch.equal(conv5_in[:, 7:], seen["conv2"][1])  # short skip
    conv7_in = seen["conv7"][0]
    assert conv7_in.shape[1] == 9 + 1 and torch.equal(conv7_in[:, 9:], x[:, 1:2])  # long skip: flair2
    moved = x.clone()
    moved[:, 2:5] += 1.0
    assert not torch.allclose(model(moved), model(x))  # the distance maps matter


def test_an_ensemble_outputs_the_logit_of_its_members_mean_probability():
    torch.manual_seed(0)
    a, b = PatchCNN().eval(), PatchCNN().eval()
    x = torch.rand(2, 5, 6, 6, 3)
    with torch.no_grad():
        la, lb, both = a(x), b(x), PatchEnsemble([a, b]).eval()(x)
    mean = (torch.sigmoid(la) + torch.sigmoid(lb)) / 2
    torch.testing.assert_close(torch.sigmoid(both), mean, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(both, la) and not torch.allclose(both, lb)
    # a voxel passes 0.75 only where the members agree enough: 0.9 and 0.5 average to 0.7
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    pair = PatchEnsemble([_Constant(logit(0.9)), _Constant(logit(0.5))])
    assert float(torch.sigmoid(pair(x)).max()) == pytest.approx(0.7, abs=1e-4)
    assert as_model([a]) is a and members_of(a) == [a] and members_of(PatchEnsemble([a, b])) == [a, b]


class _Constant(PatchCNN):
    def __init__(self, value: float) -> None:
        super().__init__(CNNConfig(widths=(1, 1, 1, 1, 1, 1)))
        self.value = value

    def forward(self, x, valid=None):
        return torch.full((x.shape[0], 1, *x.shape[2:]), self.value)


def test_a_patch_predicts_the_same_alone_or_padded_beside_a_bigger_one():
    from msnl.patches import pad_batch

    torch.manual_seed(0)
    model = PatchCNN().eval()
    for m in model.modules():  # non-trivial running statistics, as after training
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
    small, big = torch.rand(5, 6, 7, 3), torch.rand(5, 11, 9, 6)
    x, _, valid = pad_batch([small, big])
    alone = model(small[None])[0, 0]
    with torch.no_grad():
        torch.testing.assert_close(model(x, valid)[0, 0, :6, :7, :3], alone, atol=1e-5, rtol=1e-5)
        unmasked = model(x)[0, 0, :6, :7, :3]
    assert not torch.allclose(unmasked, alone, atol=1e-3)  # without the mask, padding leaks in


def test_inference_batches_patches_of_like_shape_and_returns_them_in_input_order():
    torch.manual_seed(0)
    model = PatchCNN(CNNConfig(widths=(2, 2, 2, 2, 2, 2))).eval()
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape)))
    rng = np.random.default_rng(0)
    shapes = [(3, 5, 2), (10, 9, 4), (4, 6, 2), (3, 5, 2), (9, 10, 4)]
    patches = [rng.random((5, *s), dtype=np.float32) for s in shapes]
    cfg = CNNConfig(widths=(2, 2, 2, 2, 2, 2), input_scale=(1.0,) * 5)
    together = predict_patches(model, patches, cfg)
    # Shapes that round up to the same even sizes along axes 0 and 1 share a batch; no batch mixes
    # the small patches with the big ones, so a batch is never mostly padding.
    assert sorted(seen) == [(2, 5, 10, 10, 4), (3, 5, 4, 6, 2)]
    for patch, logits in zip(patches, together):
        np.testing.assert_allclose(logits, predict_patches(model, [patch], cfg)[0], atol=1e-5)
    tight = predict_patches(model, patches, replace(cfg, inference_batch_size=1))
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(together, tight)) and len(seen) == 2 + 5 + 5


def test_bad_widths_are_refused():
    with pytest.raises(ConfigError):
        CNNConfig(widths=(4, 4, 4))


class _Ramp(PatchCNN):
    """A logit that rises along the patch's first axis wherever channel 0 is set: not flip-equivariant."""

    def __init__(self) -> None:
        super().__init__(CNNConfig(widths=(1, 1, 1, 1, 1, 1)))

    def forward(self, x, valid=None):
        ramp = torch.arange(x.shape[2], dtype=x.dtype).reshape(1, 1, -1, 1, 1)
        return x[:, :1] * ramp - 2.0


def test_test_time_flips_average_the_probabilities_of_every_flip_undone():
    patch = np.zeros((5, 4, 3, 2), np.float32)
    patch[0] = 1.0
    scaled = CNNConfig(input_scale=(1.0,) * 5)
    once = predict_patches(_Ramp(), [patch], scaled)[0]
    np.testing.assert_allclose(once, np.broadcast_to(np.arange(4.0)[:, None, None] - 2.0, (4, 3, 2)))
    for axes, views in (((0,), 2), ((0, 1), 4)):
        flipped = predict_patches(_Ramp(), [patch], replace(scaled, test_time_flip_axes=axes))[0]
        # Flipped along axis 0 and back, the ramp runs the other way; along axis 1 it is unchanged.
        forward, back = 1 / (1 + np.exp(-once)), 1 / (1 + np.exp(-once[::-1]))
        mean = (forward + back) / 2 if views == 2 else (2 * forward + 2 * back) / 4
        np.testing.assert_allclose(1 / (1 + np.exp(-flipped)), mean, atol=1e-5)
    assert np.allclose(flipped[0], flipped[-1]) and not np.allclose(once[0], once[-1])
    with pytest.raises(ConfigError, match="test_time_flip_axes"):
        CNNConfig(test_time_flip_axes=(0, 0))
    with pytest.raises(ConfigError, match="augment_flip_axes"):
        CNNConfig(augment_flip_axes=(3,))


def test_training_flips_move_patch_maps_and_truth_together():
    import torchio as tio

    values = torch.arange(24.0).reshape(1, 4, 3, 2)
    subject = tio.Subject(flairs=tio.ScalarImage(tensor=values.repeat(2, 1, 1, 1)), maps=tio.ScalarImage(tensor=values.repeat(3, 1, 1, 1)),
                          truth=tio.LabelMap(tensor=values.long()))
    transform = augmentation(CNNConfig(augment_flip_axes=(0, 1), augment_probability=0.0))
    torch.manual_seed(0)
    seen = set()
    for _ in range(64):
        out = transform(subject)
        flairs = out["flairs"].data
        assert torch.equal(out["maps"].data[0], flairs[0]) and torch.equal(out["truth"].data[0].float(), flairs[0])
        assert torch.all(flairs[0][..., 1] - flairs[0][..., 0] == 1)  # axis 2 is never flipped
        seen.add(tuple(int(flairs[0][i, j, 0]) for i, j in ((0, 0), (3, 2))))
    assert seen == {(0, 22), (18, 4), (4, 18), (22, 0)}  # unflipped, axis 0, axis 1, both: each drawn
    assert augmentation(CNNConfig()).transforms[0].__class__.__name__ == "RandomNoise"  # the paper's: no flips


def _indexed_subject(shape, truth_at=()):
    """A subject whose FLAIR channel holds each voxel's flat index, to see where a crop fell."""
    import torchio as tio

    index = torch.arange(float(np.prod(shape))).reshape(1, *shape)
    truth = torch.zeros(1, *shape, dtype=torch.uint8)
    for voxel in truth_at:
        truth[(0, *voxel)] = 1
    return tio.Subject(flairs=tio.ScalarImage(tensor=index.repeat(2, 1, 1, 1)), truth=tio.LabelMap(tensor=truth))


def test_random_crops_of_a_large_patch_keep_its_truth_and_reach_every_voxel():
    crop = RandomCrop((8, 8, 4))
    torch.manual_seed(0)
    fp, tp = _indexed_subject((12, 10, 6)), _indexed_subject((12, 10, 6), truth_at=[(1, 1, 0), (10, 8, 5)])
    seen, tp_seen = set(), set()
    for _ in range(400):
        out = crop(fp)
        assert out.spatial_shape == (8, 8, 4)
        seen.update(out["flairs"].data[0].flatten().long().tolist())
        out = crop(tp)
        assert out.spatial_shape == (8, 8, 4) and out["truth"].data.sum() >= 1  # a TP draw stays TP
        index = out["flairs"].data[0]
        assert torch.equal(out["truth"].data[0].bool(), torch.isin(index, torch.tensor([60 + 6.0, 10 * 60 + 8 * 6 + 5])))
        tp_seen.update(index[out["truth"].data[0].bool()].long().tolist())
    assert seen == set(range(12 * 10 * 6))  # over the draws, all of the patch, as inference sees it
    assert tp_seen == {60 + 6, 10 * 60 + 8 * 6 + 5}  # both lesions, at opposite corners
    small = _indexed_subject((5, 8, 2))
    assert torch.equal(crop(small)["flairs"].data, small["flairs"].data)  # within the limit: left whole


def test_train_crop_chooses_between_one_centre_crop_and_a_random_one_per_draw():
    data = TrainingSet()
    truth = np.zeros((40, 10, 4), bool)
    truth[1, 5, 2] = True
    data.add(np.ones((5, 40, 10, 4), np.float32), truth, infratentorial=False, source="toy")
    centre = _subjects(data, CNNConfig())
    assert centre[0].spatial_shape == (32, 10, 4) and centre[0]["truth"].data.sum() == 0  # the lesion is cut off
    assert not any(isinstance(t, RandomCrop) for t in augmentation(CNNConfig()).transforms)
    cfg = CNNConfig(train_crop="random")
    whole = _subjects(data, cfg)
    assert whole[0].spatial_shape == (40, 10, 4)
    torch.manual_seed(0)
    out = augmentation(replace(cfg, augment_probability=0.0))(whole[0])
    assert out.spatial_shape == (32, 10, 4) and out["truth"].data.sum() == 1
    with pytest.raises(ConfigError, match="train_crop"):
        CNNConfig(train_crop="corner")


def test_thick_slice_is_a_running_mean_along_one_axis_that_keeps_the_shape():
    volume = torch.zeros(6, 4, 3)
    volume[2, 1, 1] = 6.0
    three = thick_slice(volume, 0, 3)
    assert three.shape == volume.shape and three.sum() == 6.0
    assert torch.equal(three[1:4, 1, 1], torch.full((3,), 2.0)) and three[[0, 4, 5], 1, 1].sum() == 0
    assert torch.count_nonzero(three) == 3  # axes 1 and 2 untouched
    two = thick_slice(volume, 1, 2)  # an even width: the voxel and the next one
    assert torch.equal(two[2, :, 1], torch.tensor([3.0, 3.0, 0.0, 0.0]))
    ramp = torch.arange(5.0).reshape(5, 1, 1).expand(5, 2, 2)
    assert torch.equal(thick_slice(ramp, 0, 3)[:, 0, 0], torch.tensor([1 / 3, 1.0, 2.0, 3.0, 11 / 3]))  # edges repeated
    assert torch.equal(thick_slice(torch.full((4, 4, 2), 5.0), 1, 4), torch.full((4, 4, 2), 5.0))


def test_thick_slice_augmentation_blurs_visit_one_only():
    import torchio as tio

    rng = torch.Generator().manual_seed(1)
    flairs = torch.rand(2, 8, 8, 3, generator=rng)
    subject = tio.Subject(flairs=tio.ScalarImage(tensor=flairs.clone()), maps=tio.ScalarImage(tensor=torch.rand(3, 8, 8, 3)),
                          truth=tio.LabelMap(tensor=(flairs[:1] > 0.5).to(torch.uint8)))
    torch.manual_seed(0)
    widths, axes = set(), set()
    for _ in range(64):
        out = RandomThickSlices(1.0, (2, 4))(subject)
        assert torch.equal(out["flairs"].data[1], flairs[1]) and torch.equal(out["maps"].data, subject["maps"].data)
        assert torch.equal(out["truth"].data, subject["truth"].data)
        blurred = out["flairs"].data[0]
        match = [(a, w) for a in (0, 1) for w in (2, 3, 4) if torch.allclose(blurred, thick_slice(flairs[0], a, w))]
        assert len(match) == 1
        axes.add(match[0][0])
        widths.add(match[0][1])
    assert axes == {0, 1} and widths == {2, 3, 4}  # never axis 2, every width drawn
    assert torch.equal(subject["flairs"].data, flairs)  # the stored patch is not changed in place
    assert torch.equal(RandomThickSlices(0.0, (2, 4))(subject)["flairs"].data, flairs)
    assert not any(isinstance(t, RandomThickSlices) for t in augmentation(CNNConfig()).transforms)  # the paper's
    assert any(isinstance(t, RandomThickSlices) for t in augmentation(CNNConfig(augment_thick_slices=0.3)).transforms)
    with pytest.raises(ConfigError, match="thick_slice_voxels"):
        CNNConfig(thick_slice_voxels=(1, 3))
    with pytest.raises(ConfigError, match="augment_thick_slices"):
        CNNConfig(augment_thick_slices=1.5)


def test_shifted_moves_a_volume_by_sub_voxel_offsets_with_linear_interpolation():
    volume = torch.zeros(6, 5, 4, dtype=torch.float64)
    volume[2, 2, 1] = 8.0
    whole = shifted(volume, (1.0, -1.0, 2.0))
    assert whole.shape == volume.shape and whole[3, 1, 3] == 8.0 and torch.count_nonzero(whole) == 1
    half = shifted(volume, (0.5, 0.0, 0.25))  # split between neighbours, mass kept
    assert half[2, 2, 1] == pytest.approx(3.0) and half[3, 2, 1] == pytest.approx(3.0)
    assert half[2, 2, 2] == pytest.approx(1.0) and half[3, 2, 2] == pytest.approx(1.0)
    assert float(half.sum()) == pytest.approx(8.0)
    ramp = torch.arange(5.0, dtype=torch.float64).reshape(5, 1, 1).expand(5, 2, 2)
    assert torch.allclose(shifted(ramp, (1.0, 0.0, 0.0))[:, 0, 0], torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0], dtype=torch.float64))


def test_visit_one_shift_augmentation_moves_visit_one_only_within_its_limits():
    import torchio as tio

    rng = torch.Generator().manual_seed(1)
    flairs = torch.zeros(2, 9, 9, 5)
    flairs[0, 4, 4, 2] = 1.0  # visit 1: one bright voxel, whose centre of mass shows the shift
    flairs[1] = torch.rand(9, 9, 5, generator=rng)
    subject = tio.Subject(flairs=tio.ScalarImage(tensor=flairs.clone()), maps=tio.ScalarImage(tensor=torch.rand(3, 9, 9, 5)),
                          truth=tio.LabelMap(tensor=(flairs[1:] > 0.5).to(torch.uint8)))
    torch.manual_seed(0)
    limits = (1.0, 0.5, 0.25)
    offsets = []
    for _ in range(200):
        out = RandomShift(1.0, limits)(subject)
        assert torch.equal(out["flairs"].data[1], flairs[1]) and torch.equal(out["maps"].data, subject["maps"].data)
        assert torch.equal(out["truth"].data, subject["truth"].data)
        moved = out["flairs"].data[0].double()
        assert float(moved.sum()) == pytest.approx(1.0, abs=1e-5)
        grid = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in moved.shape), indexing="ij"))
        offsets.append((grid * moved).sum(dim=(1, 2, 3)) - torch.tensor([4.0, 4.0, 2.0], dtype=torch.float64))
    offsets = torch.stack(offsets)
    reach = offsets.abs().max(dim=0).values
    for axis, limit in enumerate(limits):  # within each limit, and drawn across most of it
        assert 0.8 * limit < float(reach[axis]) <= limit + 1e-5
    assert (offsets > 0).any(dim=0).all() and (offsets < 0).any(dim=0).all()  # both directions
    assert torch.equal(subject["flairs"].data, flairs)  # the stored patch is not changed in place
    assert torch.equal(RandomShift(0.0, limits)(subject)["flairs"].data, flairs)
    assert not any(isinstance(t, RandomShift) for t in augmentation(CNNConfig()).transforms)  # the paper's
    assert any(isinstance(t, RandomShift) for t in augmentation(CNNConfig(augment_visit1_shift=0.3)).transforms)
    with pytest.raises(ConfigError, match="visit1_shift_voxels"):
        CNNConfig(visit1_shift_voxels=(1.0, -0.5, 0.3))
    with pytest.raises(ConfigError, match="augment_visit1_shift"):
        CNNConfig(augment_visit1_shift=-0.1)


def test_sampling_proportions_over_many_epochs():
    cfg = CNNConfig(patches_per_epoch=None)
    rng = np.random.default_rng(0)
    n_tp, n_fp = 200, 2000
    is_tp = np.r_[np.ones(n_tp, bool), np.zeros(n_fp, bool)]
    infra = np.r_[rng.random(n_tp) < 0.1, rng.random(n_fp) < 0.1]
    p_tp_infra, p_fp_infra = infra[:n_tp].mean(), infra[n_tp:].mean()
    counts = np.zeros(4)
    epochs = 300
    for _ in range(epochs):
        idx = epoch_indices(is_tp, infra, cfg, rng)
        assert len(idx) == round(1.3 * 2 * n_tp)
        t, i = is_tp[idx], infra[idx]
        counts += [(t & i).sum(), (t & ~i).sum(), (~t & i).sum(), (~t & ~i).sum()]
    n, extra = n_tp, 0.3 * 2 * n_tp
    infra_extra = 0.85 * extra
    expected = np.array([
        n * p_tp_infra + 0.33 * infra_extra,  # infratentorial TP
        n * (1 - p_tp_infra),  # supratentorial TP
        n * p_fp_infra + 0.67 * infra_extra,  # infratentorial FP
        n * (1 - p_fp_infra) + 0.15 * extra,  # supratentorial FP
    ])
    np.testing.assert_allclose(counts / epochs, expected, rtol=0.03)
    assert [len(b) for b in batches(np.arange(70), 32)] == [32, 32, 6]
    fixed = epoch_indices(is_tp, infra, CNNConfig(patches_per_epoch=1024), rng)
    assert abs(len(fixed) - 1024) <= 1 and abs(is_tp[fixed].mean() - (0.5 / 1.3 + 0.3 * 0.85 * 0.33 / 1.3)) < 0.05


def test_tp_share_sets_the_ratio_of_the_balanced_draws():
    rng = np.random.default_rng(2)
    is_tp = np.r_[np.ones(300, bool), np.zeros(3000, bool)]
    infra = np.zeros(len(is_tp), bool)  # no infratentorial patches: every extra is a supratentorial FP
    cfg = CNNConfig(patches_per_epoch=None, tp_share=0.25)
    idx = np.concatenate([epoch_indices(is_tp, infra, cfg, rng) for _ in range(50)])
    assert len(idx) == 50 * round(1.3 * 4 * 300)
    # base: 300 TP + 900 FP; extras: 30 % of 1,200, of which 85 % x 33 % fall back to TP
    assert abs(is_tp[idx].mean() - (300 + 0.3 * 1200 * 0.85 * 0.33) / (1.3 * 1200)) < 0.01
    fixed = epoch_indices(is_tp, infra, CNNConfig(patches_per_epoch=1300, tp_share=0.25), rng)
    assert len(fixed) == 1300 and abs(is_tp[fixed].mean() - (0.25 + 0.3 * 0.85 * 0.33) / 1.3) < 0.03
    with pytest.raises(ConfigError, match="tp_share"):
        CNNConfig(tp_share=1.0)


def test_balance_sources_gives_each_source_an_equal_share_of_tp_and_fp_draws():
    rng = np.random.default_rng(3)
    # a large simulated source and a small real one: 400 + 20 TP, 4,000 + 300 FP patches
    is_tp = np.r_[np.ones(400, bool), np.zeros(4000, bool), np.ones(20, bool), np.zeros(300, bool)]
    sources = np.array(["sim"] * 4400 + ["real"] * 320)
    infra = np.zeros(len(is_tp), bool)
    cfg = CNNConfig(patches_per_epoch=1300, extra_share=0.0, balance_sources=True)
    idx = np.concatenate([epoch_indices(is_tp, infra, cfg, rng, sources) for _ in range(40)])
    real = sources[idx] == "real"
    assert abs(real[is_tp[idx]].mean() - 0.5) < 0.02 and abs(real[~is_tp[idx]].mean() - 0.5) < 0.02
    assert abs(is_tp[idx].mean() - 0.5) < 0.02  # the TP/FP balance is kept
    plain = np.concatenate([epoch_indices(is_tp, infra, replace(cfg, balance_sources=False), rng) for _ in range(40)])
    assert (sources[plain] == "real")[is_tp[plain]].mean() < 0.1  # uniform draws: 20 of 420 TP patches
    with pytest.raises(ValueError, match="source label"):
        epoch_indices(is_tp, infra, cfg, rng)


def test_balance_sources_off_draws_exactly_as_before():
    is_tp = np.r_[np.ones(50, bool), np.zeros(500, bool)]
    infra = np.arange(550) % 7 == 0
    sources = np.where(np.arange(550) % 3 == 0, "a", "b")
    cfg = CNNConfig(patches_per_epoch=512)
    np.testing.assert_array_equal(epoch_indices(is_tp, infra, cfg, np.random.default_rng(5), sources),
                                  epoch_indices(is_tp, infra, cfg, np.random.default_rng(5)))


def test_hard_fp_share_draws_that_share_of_the_fp_patches_by_their_score():
    rng = np.random.default_rng(4)
    is_tp = np.r_[np.ones(100, bool), np.zeros(1000, bool)]
    infra = np.zeros(len(is_tp), bool)
    scores = np.zeros(len(is_tp))
    hot = np.arange(100, 110)  # 10 of the 1,000 FP patches that the net still calls lesions
    scores[hot] = 1.0
    cfg = CNNConfig(patches_per_epoch=None, extra_share=0.0, hard_fp_share=0.5)
    idx = np.concatenate([epoch_indices(is_tp, infra, cfg, rng, None, scores) for _ in range(100)])
    assert len(idx) == 100 * 200 and is_tp[idx].mean() == 0.5  # the TP/FP balance is kept
    # half the FP draws uniform (1 % hot), half by score (10.01 of 10.999 weight is hot)
    expected = 0.5 * 0.01 + 0.5 * 10.01 / 10.999
    assert abs(np.isin(idx[~is_tp[idx]], hot).mean() - expected) < 0.02
    plain = replace(cfg, hard_fp_share=0.0)
    np.testing.assert_array_equal(epoch_indices(is_tp, infra, plain, np.random.default_rng(5), None, scores),
                                  epoch_indices(is_tp, infra, plain, np.random.default_rng(5)))
    with pytest.raises(ValueError, match="one score per patch"):
        epoch_indices(is_tp, infra, cfg, rng)
    with pytest.raises(ConfigError, match="hard_fp_share"):
        CNNConfig(hard_fp_share=-0.1)


def test_training_scores_each_patch_it_sees_for_the_hard_fp_draws(monkeypatch):
    cfg = CNNConfig(widths=(8, 8, 8, 8, 8, 8), epochs=2, batch_size=8, lr_step_epochs=10, patches_per_epoch=64,
                    hard_fp_share=0.5)
    seen, drawn = [], []

    def spy(*args):
        seen.append(args[5].copy())
        drawn.append(epoch_indices(*args))
        return drawn[-1]

    monkeypatch.setattr("msnl.training.epoch_indices", spy)
    train(_toy_set(), cfg, seed=0, device=torch.device("cpu"))
    first, second = seen
    assert (first == 1).all()  # nothing seen yet: every patch as likely as the hardest
    touched = np.zeros(len(first), bool)
    touched[drawn[0]] = True
    assert (second[~touched] == 1).all()  # patches not drawn keep their score
    assert ((second[touched] >= 0) & (second[touched] <= 1)).all() and (second[touched] < 1).all()


def test_size_bucketed_batches_keep_the_drawn_patches_and_group_sizes():
    rng = np.random.default_rng(1)
    volumes = np.minimum(rng.lognormal(5.8, 0.8, 400).astype(int), 8192)  # skewed, like step one's patches
    drawn = rng.choice(400, 320)
    plan = size_bucketed_batches(drawn, volumes, batch_size=32, window=5, rng=rng)
    np.testing.assert_array_equal(np.sort(np.concatenate(plan)), np.sort(drawn))  # same epoch, same proportions
    waste = lambda bs: sum(volumes[b].max() * len(b) for b in bs) / volumes[drawn].sum()  # noqa: E731
    assert waste(plan) < 0.6 * waste(batches(drawn, 32))


def test_closest_centre_stitching_on_hand_made_overlaps():
    # patch A covers i 0..5, patch B covers i 4..9 on a 10x1x1 line; they overlap on 4 and 5
    a, b = np.full((6, 1, 1), 1.0), np.full((6, 1, 1), 2.0)
    out = stitch([a, b], [((0, 0, 0), (6, 1, 1)), ((4, 0, 0), (10, 1, 1))], (12, 1, 1), (1.0, 1.0, 1.0))
    # A's centre is 2.5, B's is 6.5: voxel 4 is 1.5 from A and 2.5 from B, voxel 5 is 2.5 from A and 1.5 from B
    assert out[:, 0, 0].tolist()[:10] == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert np.isneginf(out[10:, 0, 0]).all()
    # distances are in mm: on (1, 1, 3) mm voxels, voxel (0, 2, 3) is 1.5 slices (4.5 mm) from
    # A's centre but 2.5 in-plane voxels (2.5 mm) from B's, so B wins although A is nearer in voxels
    a, b = np.full((1, 3, 4), 7.0), np.full((1, 10, 1), 5.0)
    out = stitch([a, b], [((0, 1, 0), (1, 4, 4)), ((0, 0, 3), (1, 10, 4))], (1, 10, 4), (1.0, 1.0, 3.0))
    assert out[0, 2, 3] == 5.0 and out[0, 2, 2] == 7.0


def _labels(shape, *boxes):
    m = np.zeros(shape, bool)
    for box in boxes:
        m[box] = True
    return LabelMap(m, np.eye(4))


def test_lesion_metrics_on_hand_made_masks():
    shape = (30, 30, 30)
    truth = _labels(shape, np.s_[2:6, 2:6, 2:6], np.s_[20:24, 20:24, 20:24], np.s_[12, 12, 12])  # the last: 1 mm³, unscored
    pred = _labels(shape, np.s_[2:6, 2:6, 2:3], np.s_[10:13, 25:28, 2:5])  # 25% of lesion 1; one FP (27 mm³)
    s = score_lesions(pred, truth)
    assert (s.truth_lesions, s.detected, s.predicted_lesions, s.true_predicted) == (2, 1, 2, 1)
    assert s.sensitivity == 0.5 and s.ppv == 0.5 and s.f1 == pytest.approx(0.5)
    assert (s.fp_lesions, s.fp_volume_mm3) == (1, 27.0)
    assert s.dice == pytest.approx(2 * 16 / (16 + 27 + 64 + 64 + 1))
    # the 10% rule: 6 of 64 voxels (9%) is a miss, 7 (11%) a hit
    assert score_lesions(_labels(shape, np.s_[2:8, 2, 2]), _labels(shape, np.s_[2:6, 2:6, 2:6])).detected == 0
    assert score_lesions(_labels(shape, np.s_[2:6, 2, 2:4]), _labels(shape, np.s_[2:6, 2:6, 2:6])).detected == 1
    empty = score_lesions(_labels(shape), _labels(shape))
    assert empty.fp_lesions == 0 and np.isnan(empty.f1)


def _toy_set(n=48, seed=0):
    rng = np.random.default_rng(seed)
    data = TrainingSet()
    for k in range(n):
        patch = np.zeros((5, 10, 10, 4), np.float32)
        patch[:2] = 3.0 + rng.normal(0, 0.2, (2, 10, 10, 4))
        patch[2:] = rng.uniform(0, 50, (3, 1, 1, 1))
        truth = np.zeros((10, 10, 4), bool)
        if k % 2 == 0:
            truth[3:7, 3:7, 1:3] = True
            patch[1][truth] = 5.5
        data.add(patch, truth, infratentorial=k % 7 == 0, source="toy")
    return data


def test_a_tiny_training_run_lowers_the_loss():
    cfg = CNNConfig(widths=(8, 8, 8, 8, 8, 8), epochs=4, batch_size=8, lr_step_epochs=10, patches_per_epoch=128)
    model, history = train(_toy_set(), cfg, seed=0, device=torch.device("cpu"))
    assert history[-1] < 0.6 * history[0]
    # and the result is reproducible
    _, again = train(_toy_set(), cfg, seed=0, device=torch.device("cpu"))
    assert again == history
    bucketed = CNNConfig(widths=(8, 8, 8, 8, 8, 8), epochs=4, batch_size=8, lr_step_epochs=10, patches_per_epoch=128,
                         size_bucket_window=4)
    _, history = train(_toy_set(), bucketed, seed=0, device=torch.device("cpu"))
    assert history[-1] < 0.6 * history[0]
    cropped = replace(cfg, train_crop="random", train_max_patch=(6, 6, 4))
    _, history = train(_toy_set(), cropped, seed=0, device=torch.device("cpu"))
    _, again = train(_toy_set(), cropped, seed=0, device=torch.device("cpu"))
    assert history[-1] < 0.6 * history[0] and again == history  # the random crops follow the seed


def test_progress_reports_the_epochs_running_mean_loss_not_the_last_batchs(monkeypatch):
    import msnl.training

    batch_losses: list[float] = []
    loss = msnl.training.training_loss

    def recorded(*args):
        value = loss(*args)
        batch_losses.append(float(value.detach()))
        return value

    monkeypatch.setattr(msnl.training, "training_loss", recorded)
    cfg = CNNConfig(widths=(8, 8, 8, 8, 8, 8), epochs=2, batch_size=8, lr_step_epochs=10, patches_per_epoch=64)
    reported: list[float] = []
    _, history = train(_toy_set(), cfg, seed=0, device=torch.device("cpu"),
                       on_batch=lambda epoch, i, n, mean: reported.append(mean))
    assert len(reported) == len(batch_losses) == 16
    for epoch in range(2):
        losses = batch_losses[8 * epoch:8 * epoch + 8]
        assert reported[8 * epoch:8 * epoch + 8] == pytest.approx(np.cumsum(losses) / np.arange(1, 9))
        assert reported[8 * epoch + 7] == pytest.approx(history[epoch])
    assert reported != pytest.approx(batch_losses)  # one batch's loss alone is not what is shown


def test_weight_decay_shrinks_the_conv_weights_and_is_off_by_default():
    cfg = CNNConfig(widths=(8, 8, 8, 8, 8, 8), epochs=2, batch_size=8, lr_step_epochs=10, patches_per_epoch=64)
    assert cfg.weight_decay == 0.0  # the paper's Adam

    def conv_norm(model):
        return float(sum(m.weight.detach().norm() ** 2 for m in model.modules() if isinstance(m, torch.nn.Conv3d)) ** 0.5)

    plain, _ = train(_toy_set(), cfg, seed=0, device=torch.device("cpu"))
    # lr 1e-3 x 20 takes 2 % off every weight at each of the 16 steps, about a quarter in all
    decayed, history = train(_toy_set(), replace(cfg, weight_decay=20.0), seed=0, device=torch.device("cpu"))
    assert conv_norm(decayed) < 0.85 * conv_norm(plain)
    assert np.isfinite(history).all()
    with pytest.raises(ConfigError, match="weight_decay"):
        CNNConfig(weight_decay=-1e-4)


def test_training_balances_sources_by_the_folder_in_each_pair_name(monkeypatch):
    assert source_of("sim-real:sub-001:ses-01-ses-02") == "sim-real"
    data = _toy_set()
    data.sources = [f"{'big' if k < 40 else 'small'}:sub-{k:03d}:1-2" for k in range(len(data))]
    cfg = CNNConfig(widths=(8, 8, 8, 8, 8, 8), epochs=2, batch_size=8, lr_step_epochs=10, patches_per_epoch=64)
    _, plain = train(data, cfg, seed=0, device=torch.device("cpu"))
    seen = []

    def spy(*args):
        seen.append(args[4])
        return epoch_indices(*args)

    monkeypatch.setattr("msnl.training.epoch_indices", spy)
    _, balanced = train(data, replace(cfg, balance_sources=True), seed=0, device=torch.device("cpu"))
    assert [sorted(set(s)) for s in seen] == [["big", "small"]] * 2  # grouped by folder, not by pair
    assert len(balanced) == 2 and np.isfinite(balanced).all() and balanced != plain  # other draws, same seed


def test_masked_loss_ignores_padding():
    logits = torch.zeros(1, 1, 2, 1, 1)
    truth = torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1, 1)
    mask = torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1, 1)
    assert float(masked_bce(logits, truth, mask)) == pytest.approx(np.log(2))
    logits[0, 0, 1] = 50.0  # a confident mistake in padding changes nothing
    assert float(masked_bce(logits, truth, mask)) == pytest.approx(np.log(2))


def test_soft_dice_rewards_confident_lesion_voxels_and_ignores_padding():
    truth = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 1, 3, 1, 1)
    mask = torch.tensor([1.0, 1.0, 0.0]).reshape(1, 1, 3, 1, 1)
    right = torch.tensor([9.0, -9.0, 9.0]).reshape(1, 1, 3, 1, 1)  # the last voxel is padding
    wrong = torch.tensor([-9.0, 9.0, -9.0]).reshape(1, 1, 3, 1, 1)
    assert float(masked_soft_dice(right, truth, mask)) < 0.01
    assert float(masked_soft_dice(wrong, truth, mask)) > 0.6


def test_candidate_hits_count_a_candidates_own_voxels_not_its_margin():
    labels = np.zeros((12, 6, 4), np.int32)
    labels[1:3, 1:3, 1:3] = 1
    labels[6:8, 1:3, 1:3] = 2
    labels[10, 4, 2] = 3
    truth = np.zeros(labels.shape, bool)
    truth[2, 2, 2] = True  # inside candidate 1
    truth[4, 1:3, 1:3] = True  # inside candidate 2's 2-voxel margin, not candidate 2
    assert candidate_hits(labels, truth, np.array([1, 2, 3])).tolist() == [True, False, False]


def test_the_tp_rule_decides_which_patches_balance_the_batches():
    data = TrainingSet()
    patch = np.ones((5, 6, 6, 4), np.float32)
    lesion, margin_only = np.zeros((6, 6, 4), bool), np.zeros((6, 6, 4), bool)
    lesion[2:4, 2:4, 1:3] = True
    margin_only[0, 0, 0] = True
    data.add(patch, lesion, False, "toy", own_hit=True)
    data.add(patch, margin_only, False, "toy", own_hit=False)
    data.add(patch, np.zeros((6, 6, 4), bool), False, "toy")
    data.add(patch, lesion, False, "toy")  # own_hit unknown: any truth voxel counts
    assert data.tp_flags("any_truth").tolist() == [True, True, False, True]
    assert data.tp_flags("own_component").tolist() == [True, False, False, True]
    only_margins = TrainingSet()
    only_margins.add(patch, margin_only, False, "toy", own_hit=False)
    only_margins.add(patch, np.zeros((6, 6, 4), bool), False, "toy")
    cfg = CNNConfig(widths=(4,) * 6, epochs=1, batch_size=2, patches_per_epoch=4)
    train(only_margins, cfg, seed=0, device=torch.device("cpu"))  # one TP under the rule
    with pytest.raises(ValueError, match="both TP and FP"):
        train(only_margins, replace(cfg, tp_patches="own_component"), seed=0, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="tp_patches"):
        CNNConfig(tp_patches="margin")
