"""The deterministic weight recipe of tests/fixtures/net_reference.json (see its 'recipe').

Filling a network with these tensors and comparing eval-mode logits against the fixture
checks the forward computation, not only the key names and shapes.
"""
import zlib

import numpy as np
import torch


def recipe_tensor(key, shape, seed, keys):
    rs = np.random.RandomState((zlib.crc32(key.encode()) + seed) % 2 ** 32)
    z = rs.standard_normal(max(1, int(np.prod(shape)))).reshape(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):
        value = 0.5 + 0.5 * np.abs(z)
    elif key.endswith(".weight") and key[: -len("weight")] + "running_var" in keys:
        value = 1.0 + 0.1 * z
    elif len(shape) <= 1:
        value = 0.1 * z
    else:
        value = z / np.sqrt(np.prod(shape[1:]))
    return torch.from_numpy(np.asarray(value, dtype=np.float32))


def recipe_state_dict(key_shapes, seed):
    """Ordered state_dict for [(key, shape), ...] filled by the recipe."""
    keys = {k for k, _ in key_shapes}
    return {k: recipe_tensor(k, tuple(s), seed, keys) for k, s in key_shapes}


def recipe_input(seed, size, batch=2):
    x = np.random.RandomState(seed).standard_normal((batch, 3, size, size)).astype(np.float32)
    return torch.from_numpy(x)
