"""Batched augmentation: per-sample draws with the right distribution, and pixel equality
with the torchvision transforms of the original for fixed parameters."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from utils.data.augment import CropFlip, NoAugmentation, RotateFlip, crop_flip, rotate_flip


def _images(n, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_crop_flip_equals_torchvision_pad_crop_flip_per_sample():
    images = _images(18)
    offsets = torch.tensor([[i % 9, (i * 5) % 9] for i in range(18)])
    flips = torch.tensor([i % 2 == 0 for i in range(18)])
    ours = crop_flip(images, offsets, flips, padding=4)
    for i in range(18):
        expected = TF.crop(TF.pad(images[i], [4]), int(offsets[i, 0]), int(offsets[i, 1]), 32, 32)
        expected = TF.hflip(expected) if flips[i] else expected
        assert torch.equal(ours[i], expected), i
    assert ours.dtype == torch.uint8


def test_crop_flip_equals_the_original_pil_pipeline():
    # the original: RandomCrop(32, padding=4) + RandomHorizontalFlip on PIL images, then ToTensor
    image = _images(1)[0]
    pil = TF.to_pil_image(image)
    for top, left, flip in [(0, 0, False), (8, 8, True), (3, 6, True), (4, 4, False)]:
        expected = TF.crop(TF.pad(pil, 4, fill=0), top, left, 32, 32)
        expected = TF.hflip(expected) if flip else expected
        expected = torch.from_numpy(np.array(expected)).permute(2, 0, 1)
        ours = crop_flip(image[None], torch.tensor([[top, left]]), torch.tensor([flip]), 4)[0]
        assert torch.equal(ours, expected)


def test_padding_is_zeros():
    images = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    out = crop_flip(images, torch.tensor([[0, 0], [8, 8]]), torch.tensor([False, False]), 4)
    assert (out[0, :, :4, :] == 0).all() and (out[0, :, :, :4] == 0).all()
    assert (out[0, :, 4:, 4:] == 200).all()
    assert (out[1, :, -4:, :] == 0).all() and (out[1, :, :28, :28] == 200).all()


def test_crop_flip_draws_cover_every_offset_and_flip_half_the_time():
    draws = CropFlip(padding=4, flip=True).draw(20000, torch.Generator().manual_seed(1))
    for axis in (0, 1):
        counts = torch.bincount(draws["offsets"][:, axis], minlength=9)
        assert len(counts) == 9 and (counts > 20000 / 9 * 0.85).all()
    assert abs(draws["flips"].float().mean().item() - 0.5) < 0.02


def test_each_sample_draws_its_own_parameters():
    draws = CropFlip(padding=4, flip=True).draw(128, torch.Generator().manual_seed(2))
    assert len({tuple(o) for o in draws["offsets"].tolist()}) > 30
    assert 0 < draws["flips"].sum() < 128
    angles = RotateFlip(20).draw(128, torch.Generator().manual_seed(2))["angles"]
    assert len(set(angles.tolist())) == 128


def test_no_flip_option_never_flips():
    assert not CropFlip(padding=4, flip=False).draw(1000, torch.Generator())["flips"].any()


@pytest.mark.parametrize("angle", [0.0, 5.0, -13.0, 20.0, -19.7])
@pytest.mark.parametrize("flip", [False, True])
def test_rotate_flip_equals_torchvision_rotate_then_flip(angle, flip):
    images = _images(3, size=64)
    ours = rotate_flip(images, torch.full((3,), angle), torch.full((3,), flip))
    expected = TF.rotate(images, angle, interpolation=InterpolationMode.NEAREST, fill=0)
    expected = TF.hflip(expected) if flip else expected
    assert torch.equal(ours, expected.float())


def test_rotate_agrees_with_pil_up_to_rounding_ties():
    # the original rotated PIL images; nearest-neighbour ties round differently on <0.5% of pixels
    images = _images(4, size=64, seed=3)
    for angle in (7.0, -20.0, 15.5):
        ours = rotate_flip(images, torch.full((4,), angle), torch.zeros(4, dtype=torch.bool))
        pil = torch.stack([torch.from_numpy(np.array(TF.rotate(
            TF.to_pil_image(x), angle, interpolation=InterpolationMode.NEAREST, fill=0))).permute(2, 0, 1)
            for x in images]).float()
        assert (ours != pil).float().mean().item() < 0.005


def test_rotation_fills_corners_with_zeros_and_keeps_the_centre():
    images = torch.full((1, 3, 64, 64), 100, dtype=torch.uint8)
    out = rotate_flip(images, torch.tensor([20.0]), torch.tensor([False]))
    assert (out[0, :, 0, 0] == 0).all() and (out[0, :, 32, 32] == 100).all()


def test_rotation_draws_are_uniform_in_range():
    draws = RotateFlip(20).draw(20000, torch.Generator().manual_seed(4))
    angles = draws["angles"]
    assert angles.min() >= -20 and angles.max() <= 20
    assert angles.min() < -19.9 and angles.max() > 19.9
    assert abs(angles.mean().item()) < 0.3 and abs((angles.abs() < 10).float().mean().item() - 0.5) < 0.02
    assert abs(draws["flips"].float().mean().item() - 0.5) < 0.02


def test_no_augmentation_is_the_identity():
    images = _images(4)
    aug = NoAugmentation()
    assert aug.draw(4, torch.Generator()) == {} and aug.apply(images, {}) is images
