"""The model zoo of the original release, state_dict-compatible with its checkpoints.

    from nets import build_model, model_names
    model = build_model("resnet18", num_classes=100, input_size=32)

Importing this package registers every network (each module decorates its builders).
"""
from . import densenet, mobilenetv2, preresnet, resnet, resnext, shufflenetv2, simple  # noqa: F401
from .registry import (build_model, check_input_size, check_model_name, model_names,  # noqa: F401
                       model_options, register)
