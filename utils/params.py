"""The `params.json` of a run folder, validated against one schema table.

    from utils.params import load_params
    params = load_params("experiments/CIFAR100/kd_nasty_resnet18/resnet18", "kd",
                         overrides={"teacher_resume": args.teacher_resume})
    model = nets.build_model(params.model_name, params.num_classes,
                             input_size=params.input_size,
                             **params.model_options(params.model_name))
    print(params.as_dict())                                   # what the log records

Every problem of a file is collected and raised together as one `ConfigError` whose message
is a single line, `<path>: problem; problem; ...`, so a user fixes a file in one pass instead
of meeting its mistakes one run at a time.

A key belongs to one or more modes ('scratch', 'nasty', 'kd'). Keys of another mode are
accepted and ignored: the original release reuses one file across several scripts. The
number of classes and the input size follow from `dataset` alone (see `DATASETS`); there is
no silent fallback to 10 classes as in the original.

To add a key, add one `Key(...)` row to `SCHEMA`.
"""
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from nets import registry
from utils.data import DATASETS  # one table: classes, input size, statistics, reader
from utils.errors import ConfigError, did_you_mean


MODES = ("scratch", "nasty", "kd")


class _Problem(Exception):
    """One problem with one key's value; its text already names the key."""


def _show(value):
    # JSON spelling (true, null, 100.0) is what the user sees in the file; strings keep
    # quotes so an empty or blank string is visible. Huge values are cut to keep one line short.
    try:
        text = repr(value) if isinstance(value, str) else json.dumps(value)
    except (TypeError, ValueError):  # an override can be any Python object
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_int(value):
    # bool is a subclass of int in Python, but `true` is no epoch count
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- value kinds
# A kind turns the JSON value into the typed value the scripts see, or raises _Problem
# with the reason (the caller adds the key and value).

class Kind(NamedTuple):
    name: str                        # shown by describe()
    parse: Callable[[Any], Any]


def _parse_int(value):
    if _is_int(value):
        return value
    if isinstance(value, float):
        raise _Problem("must be an integer, not a float")
    raise _Problem("must be an integer" + (", not a string" if isinstance(value, str) else ""))


def _parse_float(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Problem("must be a number" + (", not a string" if isinstance(value, str) else ""))
    if not math.isfinite(value):
        raise _Problem("must be a finite number")
    return float(value)


def _parse_flag(value):
    # the original files write 0/1; true/false are accepted as the obvious spelling
    if isinstance(value, bool) or (_is_int(value) and value in (0, 1)):
        return bool(value)
    raise _Problem("must be 0, 1, true or false")


def _parse_str(value):
    if isinstance(value, os.PathLike):   # overrides from code may pass a Path for a folder
        return os.fspath(value)
    if not isinstance(value, str):
        raise _Problem("must be a string")
    return value


def _parse_model(value):
    if not isinstance(value, str):
        raise _Problem("must be a model name (a string)")
    return value


def _parse_schedule(value):
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise _Problem("must be a list of integers (epochs)")
    if any(v < 0 for v in value):
        raise _Problem("must hold non-negative epochs")
    if any(a >= b for a, b in zip(value, value[1:])):
        raise _Problem("must be strictly increasing")
    return list(value)


INT = Kind("int", _parse_int)
FLOAT = Kind("float", _parse_float)
FLAG = Kind("0/1", _parse_flag)
STR = Kind("str", _parse_str)
MODEL = Kind("model", _parse_model)      # also checked against the registry and the data set
SCHEDULE = Kind("epochs", _parse_schedule)


# ----------------------------------------------------------------------------- range checks
# A check returns the problem text for a typed value, or None when the value is fine.

def _bounds(low=None, low_open=False, high=None, high_open=False):
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    rule = "must be " + " and ".join(parts)

    def check(value):
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        return rule if too_low or too_high else None
    return check


def _one_of(choices, what):
    def check(value):
        if value in choices:
            return None
        # lower() so that 'CIFAR10', the folder spelling, still finds 'cifar10'
        return (f"is not a known {what}{did_you_mean(value.lower(), choices)}, "
                f"valid: {', '.join(choices)}")
    return check


# ----------------------------------------------------------------------------- the schema

REQUIRED = object()   # default of a key that must be in the file
AMP_MODES = ("off", "bf16", "fp16")
ALL = frozenset(MODES)
NASTY, KD = frozenset({"nasty"}), frozenset({"kd"})


class Key(NamedTuple):
    name: str
    kind: Kind
    default: Any                     # REQUIRED; None: optional, absent unless a model needs it
    modes: frozenset
    why: str
    check: Optional[Callable[[Any], Optional[str]]] = None


SCHEMA = (
    Key("model_name", MODEL, REQUIRED, ALL, "the network this run trains"),
    Key("learning_rate", FLOAT, REQUIRED, ALL, "initial step size of the optimiser",
        _bounds(low=0, low_open=True)),
    Key("schedule", SCHEDULE, REQUIRED, ALL, "epochs at which the learning rate is multiplied "
        "by gamma ([999] never fires)"),
    Key("gamma", FLOAT, REQUIRED, ALL, "learning-rate factor at each schedule epoch",
        _bounds(low=0, low_open=True)),
    Key("batch_size", INT, REQUIRED, ALL, "training images per step", _bounds(low=1)),
    Key("num_epochs", INT, REQUIRED, ALL, "length of training", _bounds(low=1)),
    Key("dataset", STR, REQUIRED, ALL, "data set; fixes the number of classes and input size",
        _one_of(DATASETS, "data set")),
    Key("num_workers", INT, 4, ALL, "threads that decode Tiny-ImageNet once (the original's "
        "DataLoader workers; the device loader needs none)", _bounds(low=0)),
    Key("augmentation", FLAG, 1, ALL, "random crops and flips of the training images"),
    Key("cuda", FLAG, 1, ALL, "use a GPU if there is one (0: always the CPU)"),
    Key("seed", INT, 0, ALL, "seed of every random number generator", _bounds(low=0)),
    Key("data_dir", STR, "data", ALL, "folder that holds the data sets"),
    Key("amp", STR, "off", ALL, "mixed precision: off (fp32, as the original), bf16, or fp16 "
        "with a gradient scaler", _one_of(AMP_MODES, "amp mode")),
    Key("channels_last", FLAG, 0, ALL, "NHWC memory layout for the convolutions (speed only)"),
    Key("compile", FLAG, 0, ALL, "torch.compile the trained and the frozen network (speed only)"),
    Key("sync_bn", FLAG, 0, ALL, "under torchrun on GPUs: batch-norm statistics over the global "
        "batch instead of each process's share"),
    Key("deterministic", FLAG, 1, ALL, "deterministic cuDNN as the original; 0 lets "
        "cudnn.benchmark pick the fastest kernels"),
    Key("num_channels", INT, None, ALL, "width of the 'net' CNN", _bounds(low=1)),
    Key("dropout_rate", FLOAT, None, ALL, "dropout of the 'net' CNN",
        _bounds(low=0, high=1, high_open=True)),
    Key("temperature", FLOAT, REQUIRED, NASTY | KD, "softmax temperature of the soft labels",
        _bounds(low=0, low_open=True)),
    Key("adversarial_model", MODEL, REQUIRED, NASTY, "the normal network the nasty teacher "
        "is pushed away from"),
    Key("adversarial_resume", STR, REQUIRED, NASTY, "checkpoint of the adversarial network"),
    Key("weight", FLOAT, REQUIRED, NASTY, "weight of the KL term that makes the teacher nasty",
        _bounds(low=0)),
    Key("teacher_model", MODEL, REQUIRED, KD, "the network the student distils from"),
    Key("teacher_resume", STR, REQUIRED, KD, "checkpoint of the teacher"),
    Key("alpha", FLOAT, REQUIRED, KD, "weight of the distillation term against the hard labels",
        _bounds(low=0, high=1)),
)
_BY_NAME = {key.name: key for key in SCHEMA}


def describe(mode):
    """One line per key of `mode`: name, kind, default and why (for --help texts)."""
    lines = []
    for key in SCHEMA:
        if mode in key.modes:
            default = ("required" if key.default is REQUIRED else
                       "if the model needs it" if key.default is None else f"default {key.default}")
            lines.append(f"{key.name:<20} {key.kind.name:<7} {default:<22} {key.why}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Params

class Params:
    """Validated contents of one params.json.

    Every schema key is an attribute, typed (int, float, bool for 0/1 flags, list of int,
    str), with defaults filled in. Keys of the run's mode that are absent and have no
    default (e.g. num_channels for a ResNet) are None; so are absent keys of other modes.
    Keys of other modes that the file holds are kept unchecked, as given.
    """

    def __init__(self, mode, path, values):
        self.mode = mode
        self.path = path                 # the json file, or None when built from a dict
        for key in SCHEMA:
            setattr(self, key.name, None)
        for name, value in values.items():
            setattr(self, name, value)
        self._order = list(values)

    @property
    def num_classes(self):
        return DATASETS[self.dataset].num_classes

    @property
    def input_size(self):
        return DATASETS[self.dataset].input_size

    def as_dict(self):
        """The keys in file order, then the defaults that were filled in."""
        return {name: getattr(self, name) for name in self._order}

    def model_options(self, name):
        """The options `nets.build_model(name, ...)` takes, read from these params."""
        required, optional = registry.model_options(name)
        return {option: getattr(self, option) for option in required + optional
                if getattr(self, option, None) is not None}

    def __repr__(self):
        return f"Params(mode={self.mode!r}, path={str(self.path)!r}, {self.as_dict()!r})"


# ----------------------------------------------------------------------------- validation

def _typed_value(key, value):
    """The typed value of `key`, or raise _Problem with a text that names key and value."""
    try:
        typed = key.kind.parse(value)
    except _Problem as reason:
        raise _Problem(f"{key.name} = {_show(value)} {reason}") from None
    problem = key.check(typed) if key.check else None
    if problem:
        raise _Problem(f"{key.name} = {_show(value)} {problem}")
    return typed


def _check_keys(values, mode):
    """(typed values, problems) of the keys: unknown, mistyped, out of range, missing."""
    typed, problems = {}, []
    for name, value in values.items():
        key = _BY_NAME.get(name)
        if key is None:
            problems.append(f"unknown key {name!r}{did_you_mean(name, _BY_NAME)}")
        elif mode not in key.modes:
            typed[name] = value          # another script's key: the original reuses files
        else:
            try:
                typed[name] = _typed_value(key, value)
            except _Problem as problem:
                problems.append(str(problem))
    for key in SCHEMA:
        if mode not in key.modes or key.name in values:
            continue
        if key.default is REQUIRED:
            problems.append(f"missing key {key.name!r} (required for {mode})")
        elif key.default is not None:
            typed[key.name] = key.kind.parse(key.default)
    return typed, problems


def _check_models(values, typed, mode):
    """Problems of the named networks: unknown names, input size, options they need."""
    problems, reported = [], set()
    dataset = typed.get("dataset")
    for key in SCHEMA:
        if key.kind is not MODEL or mode not in key.modes or key.name not in typed:
            continue
        name = typed[key.name]
        try:
            registry.check_model_name(name, key.name)
        except ConfigError as error:
            problems.append(str(error))
            continue
        if dataset in DATASETS:
            try:
                registry.check_input_size(name, DATASETS[dataset].input_size)
            except ConfigError as error:
                problems.append(f"{key.name}: {error} (dataset {dataset!r})")
        required, _ = registry.model_options(name)
        for option in required:
            # a present but invalid option was reported already, a missing one only once
            if option not in values and option not in reported:
                reported.add(option)
                problems.append(f"missing key {option!r} (required by model {name!r})")
    return problems


def _build(values, mode, source, path, problems):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    typed, key_problems = _check_keys(values, mode)
    problems = list(problems) + key_problems + _check_models(values, typed, mode)
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    return Params(mode, path, typed)


def params_from_dict(values, mode, source="<params>"):
    """Params from an already parsed dict (tests, or a config assembled in code)."""
    return _build(dict(values), mode, source, None, ())


# ----------------------------------------------------------------------------- reading files

def _params_file(path):
    if path.is_dir():
        if not (path / "params.json").is_file():
            raise ConfigError(f"{path}: directory has no params.json")
        return path / "params.json"
    return path


def read_json(file):
    """(values, duplicate-key problems) of a JSON file that must hold one object."""
    duplicates = []

    def pairs(items):
        seen = {}
        for name, value in items:
            if name in seen:
                duplicates.append(f"duplicate key {name!r} (the last one would win silently)")
            seen[name] = value
        return seen

    try:
        # utf-8-sig: some editors save a byte-order mark, which json.loads rejects
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such file or directory") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not a UTF-8 text file") from None
    except OSError as error:
        raise ConfigError(f"{file}: cannot read ({error.strerror or error})") from None
    try:
        values = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{file}: invalid JSON at line {error.lineno}, "
                          f"column {error.colno}: {error.msg}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{file}: top level must be a JSON object {{...}}, not {_show(values)}")
    return values, duplicates


def load_params(path, mode, overrides=None):
    """Read and validate `<path>/params.json` (or the json file `path`) for `mode`.

    `overrides` replaces keys before validation, e.g. command-line flags; a None value
    means "flag not given" and is skipped. Raises ConfigError listing every problem.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    file = _params_file(Path(path))
    values, duplicates = read_json(file)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return _build(values, mode, file, file, duplicates)
