"""Networks are built by name: `build_model("resnet18", num_classes=100, input_size=32)`.

Each module of `nets/` decorates its builders with `@register(name)`; `nets/__init__.py`
imports them all, so importing `nets` is enough to see every name.
"""
import inspect
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from utils.base.errors import ConfigError, did_you_mean


class _Entry(NamedTuple):
    builder: Callable
    input_sizes: Optional[Tuple[int, ...]]  # None: any size (adaptive pooling before the classifier)
    optimizer: str                          # the original's choice for this network: sgd or adam


_REGISTRY: Dict[str, _Entry] = {}


OPTIMIZERS = ("sgd", "adam")


def register(name: str, input_sizes: Optional[Tuple[int, ...]] = None, optimizer: str = "sgd"):
    """Register `builder(num_classes, **options)` under `name`.

    `input_sizes` lists the square input sizes the network works on when it has fixed
    pooling or a fixed flatten (the original's `net`, `mlp`, `preresnet*`). `optimizer` is
    what the original trains it with: SGD (momentum 0.9, weight decay 5e-4), or Adam for its
    small `net` and `mlp`.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, not {optimizer!r}")
    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = _Entry(builder, tuple(input_sizes) if input_sizes else None, optimizer)
        return builder
    return decorate


def model_names():
    return sorted(_REGISTRY)


def check_model_name(name, what="model"):
    """Raise ConfigError for a name that is not registered, listing the valid ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"unknown {what} {name!r}{did_you_mean(name, _REGISTRY)}; "
                          f"valid names: {', '.join(model_names())}")


def check_input_size(name, input_size):
    """Raise ConfigError when `name` cannot take square inputs of `input_size` pixels."""
    check_model_name(name)
    sizes = _REGISTRY[name].input_sizes
    if sizes is not None and input_size not in sizes:
        allowed = " or ".join(f"{s}x{s}" for s in sizes)
        raise ConfigError(f"model {name!r} only works on {allowed} inputs (fixed pooling in the "
                          f"original network), not {input_size}x{input_size}")


def model_input_sizes(name):
    """The square input sizes `name` is restricted to, or None when it takes any size."""
    check_model_name(name)
    return _REGISTRY[name].input_sizes


def optimizer_of(name):
    """'sgd' or 'adam': the optimizer the original trains network `name` with."""
    check_model_name(name)
    return _REGISTRY[name].optimizer


def model_options(name):
    """(required, optional) option names that the builder of `name` takes besides num_classes."""
    check_model_name(name)
    params = list(inspect.signature(_REGISTRY[name].builder).parameters.values())[1:]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    optional = [p.name for p in params if p.default is not inspect.Parameter.empty]
    return required, optional


def build_model(name, num_classes, input_size=None, **options):
    """Build network `name` for `num_classes` classes; checks the input size and options first."""
    if input_size is not None:
        check_input_size(name, input_size)
    check_model_name(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    required, optional = model_options(name)
    unknown = sorted(set(options) - set(required) - set(optional))
    if unknown:
        raise ConfigError(f"model {name!r} takes no option {unknown[0]!r}"
                          f"{did_you_mean(unknown[0], required + optional)}")
    missing = [k for k in required if k not in options]
    if missing:
        raise ConfigError(f"model {name!r} needs option(s) {', '.join(missing)}")
    return _REGISTRY[name].builder(num_classes, **options)
