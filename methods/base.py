"""The method table: what a training method is, and the registry every method module adds itself to.

    from methods.base import Frozen, Method, Objective, register
    register(Method(name="kd", script="kd", role=STUDENT, build=build, ...))

A method says which script runs it, the params.json keys it adds, the frozen networks it reads
(and the keys naming their checkpoints, from which reproduce.py orders stages), its loss terms by
name and its role in the results table. The engine (utils/engine.py) asks the table for all of
it, so adding a method is one module in methods/ (see README, "Extending").
"""
from dataclasses import dataclass
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from utils.errors import ConfigError, did_you_mean
from utils.schema import FLOAT, Key, REQUIRED, bounds

SCRIPTS = {"scratch": "train_scratch.py", "nasty": "train_nasty.py", "kd": "train_kd.py"}
# roles in the results table (repro/report.py)
TEACHER, DEFENDED_TEACHER, STUDENT = "teacher", "defended teacher", "student strategy"
ROLES = (TEACHER, DEFENDED_TEACHER, STUDENT)
RESERVED_TERMS = ("loss", "acc")  # 'loss' is the total every method returns; acc is logged apart

# keys several methods share: one row each, so the schema has one meaning per name
TEMPERATURE = Key("temperature", FLOAT, REQUIRED, "softmax temperature of the soft labels",
                  bounds(low=0, low_open=True))


class Step(NamedTuple):
    """Where training is when an objective is called (for delays and warm-ups)."""
    epoch: int                       # 0-based
    step: int                        # 0-based batch of the epoch
    steps: int                       # batches per epoch

    @property
    def global_step(self):
        return self.epoch * self.steps + self.step


class Objective(torch.nn.Module):
    """A training loss and what it needs: `forward(model, images, labels, at: Step)` returns
    (the trained model's logits, {"loss": total, <term>: value, ...}) as 0-d tensors.

    Modules and parameters it owns (auxiliary heads) train with the model, under the model's
    optimizer, and are checkpointed apart under 'objective_state_dict', so the network's own
    state_dict stays the original's. Frozen networks live in `self.frozen` (a plain dict), outside
    both the parameters and the state_dict.
    """

    def __init__(self, frozen=None):
        super().__init__()
        self.frozen = dict(frozen or {})


class AgainstFrozen(Objective):
    """A loss of the trained network's logits against one frozen network's (constants), which
    `transform` (a teacher defence, say) may change first."""

    def __init__(self, role, network, loss, transform=None, **hyper):
        super().__init__({role: network})
        self.role, self.loss, self.transform, self.hyper = role, loss, transform, hyper

    def frozen_logits(self, images):
        with torch.inference_mode():
            logits = self.frozen[self.role](images)
            return logits if self.transform is None else self.transform(logits)

    def forward(self, model, images, labels, at):
        frozen_logits = self.frozen_logits(images)
        logits = model(images)
        return logits, self.loss(logits, frozen_logits, labels, **self.hyper)


class Frozen(NamedTuple):
    role: str                        # "teacher", "adversarial": how logs and errors name it
    model_key: str                   # params key of its network name
    resume_key: str                  # params key of its checkpoint


@dataclass(frozen=True)
class Method:
    name: str
    script: str                      # a key of SCRIPTS: train_<script>.py runs this method
    role: str                        # one of ROLES
    build: Callable                  # build(params, frozen networks by role) -> Objective
    summary: str                     # one line for --help and the docs
    keys: Tuple[Key, ...] = ()       # params.json keys it adds to the schema
    frozen: Tuple[Frozen, ...] = ()
    terms: Tuple[str, ...] = ()      # loss terms besides the total, logged as train_<term>
    log_lines: Tuple[Tuple[str, str], ...] = (("loss", "Train loss"),)  # training.log wording
    implied_by: Optional[str] = None  # configs without a 'method' key: a key that selects this one
    on_start: Optional[Callable] = None  # on_start(run, frozen): e.g. log the teacher's accuracy
    diverged_hint: str = ""          # what else to lower when the loss diverges
    check: Optional[Callable] = None  # check(typed values) -> [problems] across keys, e.g. k >= 1
    # train_split(params, frozen, save_path, log, world) -> utils.datasets.Split: the training
    # split to use instead of the real one, which is then never read (data-free distillation).
    # Called with the frozen networks loaded, on every rank at once: rank 0 makes it; the others
    # must wait for it without collectives (by polling a file), so no process-group timeout applies.
    train_split: Optional[Callable] = None

    @property
    def script_file(self):
        return SCRIPTS[self.script]


_METHODS: Dict[str, Method] = {}


def register(method):
    """Add `method` to the table; refuses a clash that would make a config mean two things."""
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    if method.script not in SCRIPTS or method.role not in ROLES:
        raise ValueError(f"method {method.name!r}: script must be one of {list(SCRIPTS)}, "
                         f"role one of {list(ROLES)}")
    clash = [t for t in method.terms if t in RESERVED_TERMS or not t.isidentifier()]
    if clash:
        raise ValueError(f"method {method.name!r}: term name {clash[0]!r} is reserved or invalid")
    names = {key.name for key in method.keys}
    for frozen in method.frozen:
        if not {frozen.model_key, frozen.resume_key} <= names:
            raise ValueError(f"method {method.name!r}: keys of frozen {frozen.role!r} not declared")
    for other in _METHODS.values():
        for key in method.keys:
            twin = next((k for k in other.keys if k.name == key.name), None)
            if twin is not None and twin != key:
                raise ValueError(f"key {key.name!r} of method {method.name!r} differs from "
                                 f"method {other.name!r}'s; share one Key row")
    _METHODS[method.name] = method
    return method


def method_names():
    return list(_METHODS)


def get_method(name):
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}{did_you_mean(name, _METHODS)}; "
                          f"valid: {', '.join(_METHODS)}")
    return _METHODS[name]


def method_keys():
    """Every key some method adds, once each, with the methods that use it: {name: (Key, [methods])}."""
    table = {}
    for method in _METHODS.values():
        for key in method.keys:
            table.setdefault(key.name, (key, []))[1].append(method.name)
    return table


def infer_method(values, script=None):
    """The method of a config: its 'method' key; else the script's own (train_kd.py: kd); else, for
    the published configs, the method one of whose keys it holds (adversarial_resume: nasty,
    teacher_resume: kd); else scratch. An invalid 'method' value is reported by the schema."""
    named = values.get("method")
    if isinstance(named, str) and named in _METHODS:
        return _METHODS[named]
    if script is not None:
        return _METHODS[script]
    for method in _METHODS.values():
        if method.implied_by and method.implied_by in values:
            return method
    return _METHODS["scratch"]
