"""The training methods, one module each; importing this package registers them all.

    import methods
    method = methods.get_method("kd")          # script, keys, frozen networks, terms, role
    objective = method.build(params, {"teacher": teacher})

A new method is a new module here that calls `register(Method(...))` (see methods/base.py and
README, "Extending"): it is found and imported with the others, no other file changes.
"""
import importlib
import pkgutil

from .base import (DEFENDED_TEACHER, ROLES, SCRIPTS, STUDENT, TEACHER, Frozen, Method,  # noqa: F401
                   Objective, Step, get_method, infer_method, method_keys, method_names,
                   register)
# the original's three first and in this order: configs without a 'method' key are recognised
# by their keys, adversarial_resume (nasty) before teacher_resume (kd)
from . import scratch, nasty, kd  # noqa: F401,E402

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
