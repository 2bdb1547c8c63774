"""Batched, per-sample data augmentation on the training device.

An augmentation first draws its random parameters for a whole epoch at once on a CPU
generator (`draw`), so every device sees the same numbers, then applies them one batch
at a time as tensor work (`apply`):

    aug = CropFlip(padding=4, flip=True)
    params = aug.draw(len(dataset), generator)                  # once per epoch
    batch = aug.apply(images[idx], {k: v[idx_pos] for k, v in params.items()})

`CropFlip` is torchvision's RandomCrop(size, padding) + RandomHorizontalFlip() on
zero-padded uint8 images; `RotateFlip` is RandomRotation(degrees) (nearest, zero fill)
+ RandomHorizontalFlip().
"""
import math

import torch
import torch.nn.functional as F


class NoAugmentation:
    def draw(self, n, generator):
        return {}

    def apply(self, images, params):
        return images


class CropFlip:
    """Random crop of the original size from a zero-padded image, then an optional flip."""

    def __init__(self, padding, flip):
        self.padding, self.flip = padding, flip

    def draw(self, n, generator):
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return {"offsets": offsets, "flips": flips}

    def apply(self, images, params):
        return crop_flip(images, params["offsets"].to(images.device),
                         params["flips"].to(images.device), self.padding)


def crop_flip(images, offsets, flips, padding):
    """Per-sample crop at (row, col) `offsets` of the `padding`-padded images, mirrored where `flips`.

    A flip after the crop is the crop read with reversed column order, so both are one gather.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    rows = offsets[:, :1] + torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device).expand(n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols) + offsets[:, 1:]
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


class RotateFlip:
    """Random rotation in [-degrees, degrees] about the centre (nearest, zero fill), then a flip."""

    def __init__(self, degrees):
        self.degrees = degrees

    def draw(self, n, generator):
        angles = torch.empty(n).uniform_(-self.degrees, self.degrees, generator=generator)
        return {"angles": angles, "flips": torch.rand(n, generator=generator) < 0.5}

    def apply(self, images, params):
        return rotate_flip(images, params["angles"].to(images.device),
                           params["flips"].to(images.device))


def rotate_flip(images, angles, flips):
    """Rotate each image counter-clockwise by `angles` degrees, mirrored afterwards where `flips`.

    Returns float images holding the original 0-255 values (nearest sampling copies pixels).
    """
    rad = angles.to(torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # inverse map from output to input pixel, in grid_sample's normalised (x right, y down) frame
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    grid = torch.where(flips[:, None, None, None], grid.flip(2), grid)
    return F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros",
                         align_corners=False)
