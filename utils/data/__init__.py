"""The data layer: data sets as uint8 tensors on the training device, augmented there in batches.

registry.py holds the table of data sets; each other reader module (cifar, tiny_imagenet, digits)
registers its own, and importing this package imports them all, like nets/ and methods/.
loader.py builds the device loaders, augment.py the batched augmentations, fixtures.py small
files in the real formats (for tests and benchmarks without the real data).
"""
import importlib
import pkgutil

NOT_DATA_SETS = ("fixtures",)  # writes test files (and needs PIL): imported by tests and bench only
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in NOT_DATA_SETS:
        importlib.import_module(f"{__name__}.{_module.name}")
