"""The device loader: batches, seeded order, exact resume, normalisation, no augmentation at eval."""
from types import SimpleNamespace

import pytest
import torch
import torchvision.transforms as T

from utils.data.augment import CropFlip, NoAugmentation
from utils.data.cifar import CIFAR_MEAN, CIFAR_STD
from utils.data.loader import DeviceLoader, build_loaders, channel_stats
from utils.data.registry import Split


def _indexed_split(n):
    """Image i is filled with i % 256 and labelled i, so a batch tells which samples it holds."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous()
    return Split(images, torch.arange(n))


def _loader(n=300, batch_size=128, shuffle=True, seed=0, augmentation=None):
    return DeviceLoader(_indexed_split(n), batch_size, "cpu", CIFAR_MEAN, CIFAR_STD,
                        augmentation, shuffle=shuffle, seed=seed)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_batches_cover_the_split_once_and_keep_the_last_partial_batch():
    loader = _loader(n=300, batch_size=128)
    batches = _epoch(loader, 0)
    assert [len(y) for _, y in batches] == [128, 128, 44] and len(loader) == 3
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(300)) and seen.tolist() != list(range(300))


def test_same_seed_and_epoch_give_identical_batches_across_loaders():
    a, b = _loader(seed=7, augmentation=CropFlip(4, True)), _loader(seed=7, augmentation=CropFlip(4, True))
    for (xa, ya), (xb, yb) in zip(_epoch(a, 3), _epoch(b, 3)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_order_changes_with_epoch_and_seed_and_returns_for_a_resumed_epoch():
    loader = _loader(seed=0)
    first = torch.cat([y for _, y in _epoch(loader, 0)])
    second = torch.cat([y for _, y in _epoch(loader, 1)])
    other_seed = torch.cat([y for _, y in _epoch(_loader(seed=1), 0)])
    assert not torch.equal(first, second) and not torch.equal(first, other_seed)
    # a resumed run sets the epoch and sees exactly what the uninterrupted run saw
    _epoch(loader, 5)
    assert torch.equal(torch.cat([y for _, y in _epoch(loader, 1)]), second)


def test_unshuffled_loader_keeps_file_order():
    labels = torch.cat([y for _, y in _epoch(_loader(shuffle=False), 4)])
    assert labels.tolist() == list(range(300))


def test_normalisation_equals_totensor_then_normalize():
    split = Split(torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8), torch.zeros(10).long())
    loader = DeviceLoader(split, 10, "cpu", CIFAR_MEAN, CIFAR_STD)
    images, _ = next(iter(loader))
    reference = T.Compose([T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    expected = torch.stack([reference(img.permute(1, 2, 0).numpy()) for img in split.images])
    torch.testing.assert_close(images, expected, rtol=1e-5, atol=1e-5)
    assert images.dtype == torch.float32 and loader.images.dtype == torch.uint8


def test_augmentation_is_applied_per_sample_with_the_drawn_parameters():
    aug = CropFlip(4, True)
    loader = _loader(n=64, batch_size=64, augmentation=aug)
    images, labels = _epoch(loader, 2)[0]
    # black padding shows up after normalisation as (0 - mean) / std in some border pixels
    border = (-torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)).view(3, 1, 1)
    padded = [(torch.isclose(img, border.expand_as(img), atol=1e-5)).any().item()
              for img, label in zip(images, labels) if label % 256 != 0]
    assert 0 < sum(padded) < len(padded)


def _params(**overrides):
    values = dict(dataset="digits", data_dir="unused", num_workers=0, augmentation=1, source="p.json",
                  batch_size=100, seed=0)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_build_loaders_for_digits():
    train, test = build_loaders(_params(), "cpu")
    assert train.num_samples == 1438 and test.num_samples == 359
    assert isinstance(train.augmentation, CropFlip) and train.augmentation.flip is False
    assert isinstance(test.augmentation, NoAugmentation) and not test.shuffle and train.shuffle
    mean, std = channel_stats(train.images.cpu())
    torch.testing.assert_close(train.shift.flatten(), torch.tensor(mean, dtype=torch.float32) /
                               torch.tensor(std, dtype=torch.float32))
    # the training split normalised by its own statistics has mean 0 and std 1
    x = train.images.float() * train.scale - train.shift
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3


def test_augmentation_switch_and_eval_batch_size():
    train, test = build_loaders(_params(augmentation=0), "cpu", eval_batch_size=500)
    assert isinstance(train.augmentation, NoAugmentation) and len(test) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sees_the_same_batches_as_cpu():
    cpu = DeviceLoader(_indexed_split(300), 128, "cpu", CIFAR_MEAN, CIFAR_STD, CropFlip(4, True), True, 3)
    gpu = DeviceLoader(_indexed_split(300), 128, "cuda", CIFAR_MEAN, CIFAR_STD, CropFlip(4, True), True, 3)
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)
    assert gpu.images.device.type == "cuda" and gpu.images.dtype == torch.uint8
