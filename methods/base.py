"""The method table: what a training method and a teacher defence are, and the registries every
module of methods/ adds itself to.

    from methods.base import Frozen, Method, Role, register
    register(Method(name="kd", script="kd", role=Role.STUDENT, build=build, ...))
    register_defence(Defence(name="sparse", transform=..., label=..., keys=...))

A method says which script runs it, the params.json keys it adds, the frozen networks it reads
(and the keys naming their checkpoints, from which reproduce.py orders stages), its loss terms by
name, and what the results tables need: its role, its label and rank, its setting, the temperature
it reads soft outputs at. A defence is what a normal teacher hands its students instead of its
logits (the `teacher_output` key selects it); it declares its keys and its row label. The training
layer is handed `TABLE` (utils.training.params) and the chosen method; repro/ reads only these
declarations. So a method or a defence is one module here (see docs/extending.md).
"""
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch

from utils.base.errors import ConfigError, did_you_mean
from utils.base.schema import FLOAT, REQUIRED, STR, Key, Word, bounds

SCRIPTS = {"scratch": "train_scratch.py", "nasty": "train_nasty.py", "kd": "train_kd.py"}
RESERVED_TERMS = ("loss", "acc")  # 'loss' is the total every method returns; acc is logged apart


class Role(Word):
    """A method's place in the results tables (repro/report.py, repro/matrix.py)."""
    TEACHER = "teacher"                       # trained on labels: a normal teacher, or a student alone
    DEFENDED_TEACHER = "defended teacher"     # trained to teach badly (nasty)
    STUDENT = "student strategy"              # learns from a frozen teacher


class Access(Word):
    """What a student strategy needs of its teacher: the threat model of the matrix's column."""
    OUTPUTS = "outputs"                       # what an API answers: a defence of the outputs applies
    WEIGHTS = "weights"                       # the network itself (features, gradients): white-box


# keys several methods share: one row each, so the schema has one meaning per name
TEMPERATURE = Key("temperature", FLOAT, REQUIRED, "softmax temperature of the soft labels",
                  bounds(low=0, low_open=True))


class Objective(torch.nn.Module):
    """A training loss and what it needs: `forward(model, images, labels, step)` returns
    (the trained model's logits, {"loss": total, <term>: value, ...}) as 0-d tensors; `step`
    (utils.training.step.Step) says where training is, for delays and warm-ups.

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
    `transform(images, logits)` (a teacher defence, say) may change first; `per_step(step)` gives
    the loss's arguments that change during training (a warm-up factor, say)."""

    def __init__(self, role, network, loss, transform=None, per_step=None, **hyper):
        super().__init__({role: network})
        self.role, self.loss, self.transform, self.hyper = role, loss, transform, hyper
        self.per_step = per_step
        self.cache = None  # an AnswerCache (utils/training/answer_cache.py): set by teacher_cache

    def frozen_logits(self, images, step=None):
        """What the loss reads of the frozen network for `images`: its logits through `transform`,
        the logits read from `cache` where an earlier run kept them for this `step`."""
        with torch.inference_mode():
            if self.transform is not None and not needs_logits(self.transform):
                return self.transform(images, None)  # it asks the network other queries itself
            network = self.frozen[self.role]
            if self.cache is not None and step is not None:
                logits = self.cache.outputs(step, lambda: network(images))
            else:
                logits = network(images)
            return logits if self.transform is None else self.transform(images, logits)

    def forward(self, model, images, labels, step):
        frozen_logits = self.frozen_logits(images, step)
        logits = model(images)
        hyper = {**self.hyper, **self.per_step(step)} if self.per_step else self.hyper
        return logits, self.loss(logits, frozen_logits, labels, **hyper)


class Frozen(NamedTuple):
    role: str                        # "teacher", "adversarial": how logs and errors name it
    model_key: str                   # params key of its network name
    resume_key: str                  # params key of its checkpoint


# ----------------------------------------------------------------------------- defences

@dataclass(frozen=True)
class Defence:
    """What a normal teacher hands out instead of its logits, selected by `teacher_output`.

    A defence of the logits alone gives `transform`; one that also reads the query (a surrogate
    network's view of the images, MAD) gives `make(params, teacher)` -> answer(images, logits),
    a plain callable (not a Module: what it holds is neither trained nor checkpointed).
    What the student reads are logits or log-probabilities, read at the student's temperature.
    """
    name: str                        # the teacher_output value
    summary: str                     # one line for the docs and the key's help
    transform: Optional[Callable] = None  # transform(logits, params) -> what the student reads
    label: Callable = None           # label(params) -> its row in the defence x student table
    keys: Tuple[Key, ...] = ()       # params keys it reads; they join every defended student's
    check: Optional[Callable] = None  # check(typed values, num_classes) -> [problems]
    rank: int = 50                   # row order in the tables (the undefended teacher is 0)
    make: Optional[Callable] = None  # make(params, teacher) -> answer(images, logits)

    def row_label(self, params):
        return self.label(params) if self.label else self.name

    def answers(self, params, teacher):
        """answer(images, teacher logits) -> what the student reads, for this run."""
        if self.make is not None:
            return self.make(params, teacher)
        return partial(_logits_only, self.transform, params)


def needs_logits(answer):
    """Whether answer(images, logits) reads the logits of the plain queries. An answer that asks
    the teacher other queries itself (the key holder's keyed ones, methods/sdb.py) says
    `needs_logits = False`: the forward on the plain queries is then skipped."""
    return getattr(answer, "needs_logits", True)


def _logits_only(transform, params, images, logits):
    return transform(logits, params)


_DEFENCES: Dict[str, Defence] = {}


def check_one_row_per_key(kind, entry, others):
    """A key name means one thing: `entry` (a method or defence) may share a key with `others`
    only as the same Key row."""
    for other in others:
        for key in entry.keys:
            twin = next((k for k in other.keys if k.name == key.name), None)
            if twin is not None and twin != key:
                raise ValueError(f"key {key.name!r} of {kind} {entry.name!r} differs from "
                                 f"{kind} {other.name!r}'s; share one Key row")


def register_defence(defence):
    """Add `defence` to the table; a key name means one thing across all defences."""
    if defence.name in _DEFENCES:
        raise ValueError(f"defence {defence.name!r} is registered twice")
    if (defence.transform is None) == (defence.make is None):
        raise ValueError(f"defence {defence.name!r}: give transform or make, one of them")
    check_one_row_per_key("defence", defence, _DEFENCES.values())
    _DEFENCES[defence.name] = defence
    return defence


def defence_names():
    """The defences in table order (their ranks)."""
    return [d.name for d in sorted(_DEFENCES.values(), key=lambda d: d.rank)]


def get_defence(name):
    return _DEFENCES[name]


def _known_defence(value):
    # lower() as the schema's one_of: 'SPARSE' still finds 'sparse'
    names = defence_names()
    return None if value in _DEFENCES else (
        f"is not a known teacher output{did_you_mean(value.lower(), names)}, valid: {', '.join(names)}")


NO_DEFENCE = register_defence(Defence(
    "logits", "the teacher's own logits (no defence)", lambda logits, params: logits,
    label=lambda params: "normal", rank=0))
TEACHER_OUTPUT = Key("teacher_output", STR, NO_DEFENCE.name, "what a normal teacher hands its "
                     "students: its logits, or the output of a defence of methods/ (sparse, ...)",
                     _known_defence)


def defence_keys():
    """The keys of every defence, once each (they join every defended student's schema)."""
    return tuple({key.name: key for d in _DEFENCES.values() for key in d.keys}.values())


def defence_of(params):
    """The defence a defended student's teacher answers through."""
    return _DEFENCES[params.teacher_output]


def defended_logits(logits, params):
    """A normal teacher's logits as its student's defence hands them out (a defence of the logits
    alone; one that reads the query is made with its teacher: teacher_answers)."""
    return defence_of(params).transform(logits, params)


def teacher_answers(params, teacher):
    """answer(images, logits): what the run's defence hands a student for these queries."""
    return defence_of(params).answers(params, teacher)


# ----------------------------------------------------------------------------- methods

@dataclass(frozen=True)
class Method:
    name: str
    script: str                      # a key of SCRIPTS: train_<script>.py runs this method
    role: Role
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
    # train_split(params, frozen, save_path, log, world) -> utils.data.registry.Split: the training
    # split to use instead of the real one, which is then never read (data-free distillation).
    # Called with the frozen networks loaded, on every rank at once: rank 0 makes it; the others
    # must wait for it without collectives (by polling a file), so no process-group timeout applies.
    train_split: Optional[Callable] = None
    # work(params, epochs, macs) -> multiply-adds of a whole run, for reproduce.py's order of the
    # ready runs (repro/schedule.py), where its epochs of images through its networks are far off
    # (a synthesis); macs(name) -> one forward of that network on one image
    work: Optional[Callable] = None
    # --- what the results tables need (repro/ reads these and names no method)
    defended: bool = False           # reads its frozen teacher through the run's defence
    label: Optional[Callable] = None  # label(params) -> its column (student) or row (defended teacher)
    rank: int = 50                   # order of its column or row
    paper_table: bool = False        # its undefended students fill the paper's table
    setting: Optional[Callable] = None  # setting(params) -> "T=4, alpha=0.9": tells runs apart
    temperature: Optional[Callable] = None  # temperature(params) -> T of the soft outputs it uses
    made_split: Optional[Callable] = None  # made_split(run folder) -> the Split it trained on, or None
    defence_after: Optional[str] = None  # the key after which the defence keys come (None: last)
    # a student alone that the defences are judged against (the matrix's reference column and
    # its verdicts); never taken for "the same network trained alone"
    reference: bool = False
    access: Optional[Access] = None  # a student strategy: what it needs of its teacher

    @property
    def script_file(self):
        return SCRIPTS[self.script]

    @property
    def all_keys(self):
        """Its own keys and, for a defended student, the defence keys (after `defence_after`:
        the order in which defaults are filled in, so the order of training.log's lines)."""
        if not self.defended:
            return self.keys
        names = [key.name for key in self.keys]
        at = names.index(self.defence_after) + 1 if self.defence_after else len(names)
        return self.keys[:at] + (TEACHER_OUTPUT, *defence_keys()) + self.keys[at:]

    def defence(self, params):
        """The defence its teacher answers through (None: not a defended student)."""
        return defence_of(params) if self.defended else None

    def in_paper_table(self, params):
        return self.paper_table and self.defence(params) in (None, NO_DEFENCE)

    def table_label(self, params):
        return self.label(params) if self.label else self.name

    def setting_text(self, params):
        return self.setting(params) if self.setting else ""

    def soft_temperature(self, params):
        return self.temperature(params) if self.temperature else None

    def problems(self, values, num_classes):
        """Problems across keys (the schema checked each key alone): its own check, its defence's."""
        defence = _DEFENCES.get(values.get(TEACHER_OUTPUT.name)) if self.defended else None
        found = defence.check(values, num_classes) if defence and defence.check and num_classes else []
        return found + self.undefended(values) + (list(self.check(values)) if self.check else [])

    def undefended(self, values):
        """A defence asked of a student that reads nothing it acts on: a problem, not ignored."""
        asked = values.get(TEACHER_OUTPUT.name, NO_DEFENCE.name)
        if self.role != Role.STUDENT or self.defended or asked == NO_DEFENCE.name:
            return []
        return [f"teacher_output = {asked!r} does not apply to method {self.name!r}: it reads the "
                f"teacher's {self.access or 'network'}, not the outputs a defence changes; "
                f"remove the key"]


_METHODS: Dict[str, Method] = {}


def _check_entry(method):
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    if method.script not in SCRIPTS or not isinstance(method.role, Role):
        raise ValueError(f"method {method.name!r}: script must be one of {list(SCRIPTS)}, "
                         f"role a methods.base.Role")
    clash = [t for t in method.terms if t in RESERVED_TERMS or not t.isidentifier()]
    if clash:
        raise ValueError(f"method {method.name!r}: term name {clash[0]!r} is reserved or invalid")
    names = {key.name for key in method.keys}
    for frozen in method.frozen:
        if not {frozen.model_key, frozen.resume_key} <= names:
            raise ValueError(f"method {method.name!r}: keys of frozen {frozen.role!r} not declared")


def register(method):
    """Add `method` to the table; refuses a clash that would make a config mean two things."""
    _check_entry(method)
    check_one_row_per_key("method", method, _METHODS.values())
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
        for key in method.all_keys:
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


class MethodTable:
    """The table as the training layer sees it: utils.training.params is handed `TABLE`, so it
    imports nothing of methods/ (the layers import downward only)."""
    scripts = SCRIPTS
    names = staticmethod(method_names)
    get = staticmethod(get_method)
    infer = staticmethod(infer_method)
    keys = staticmethod(method_keys)


TABLE = MethodTable()
