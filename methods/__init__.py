"""The training methods and teacher defences, one module each; importing this package registers
them all.

    import methods
    params = methods.load_params("runs/kd", "kd")     # validated against the common keys + kd's
    method = params.method_entry                      # script, keys, frozen networks, terms, role
    objective = method.build(params, {"teacher": teacher})

A new method or defence is a new module here that calls `register(Method(...))` or
`register_defence(Defence(...))` (see methods/base.py and docs/extending.md): it is found and
imported with the others, no other file changes.
"""
import importlib
import pkgutil

from utils.training import params as _params

from .base import TABLE

# the original's three first and in this order: configs without a 'method' key are recognised
# by their keys, adversarial_resume (nasty) before teacher_resume (kd); then the others by name
FIRST = ("scratch", "nasty", "kd")
for _name in FIRST + tuple(m.name for m in pkgutil.iter_modules(__path__)
                           if m.name not in FIRST and m.name != "base" and not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_name}")


def load_params(path, script=None, overrides=None):
    """utils.training.params.load_params against this package's method table."""
    return _params.load_params(path, TABLE, script, overrides)


def params_from_dict(values, script=None, source="<params>"):
    """utils.training.params.params_from_dict against this package's method table."""
    return _params.params_from_dict(values, TABLE, script, source)
