"""The model zoo of the original release, state_dict-compatible with its checkpoints.

    from nets import build_model, forward_features, model_names
    model = build_model("resnet18", num_classes=100, input_size=32)
    logits, stage_outputs = forward_features(model, images)  # see nets/features.py

Importing this package imports every module in it, and each module registers its networks
(`@register(name)`), so a new network is a new module here (docs/extending.md).
"""
import importlib
import pkgutil

from .features import forward_features, stage_names, stage_shapes, unwrap_model  # noqa: F401
from .registry import (  # noqa: F401
    build_model,
    check_input_size,
    check_model_name,
    model_input_sizes,
    model_names,
    model_options,
    optimizer_of,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
