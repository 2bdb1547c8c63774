"""The `params.json` of a run folder, validated against one schema: the common keys below and
the keys of its method (methods/).

    from methods import TABLE                      # the layers above hand the method table in
    params = load_params("experiments/CIFAR100/kd_nasty_resnet18/resnet18", TABLE, "kd",
                         overrides={"teacher_resume": args.teacher_resume})
    params.method_entry                                       # its row of the method table
    print(params.as_dict())                                   # what the log records

Every problem of a file is collected and raised together as one `ConfigError` whose message
is a single line, `<path>: problem; problem; ...`, so a user fixes a file in one pass instead
of meeting its mistakes one run at a time.

The method is the file's `method` key, else the script's own (train_kd.py: kd), else (reproduce.py,
no script) the one its keys imply. Keys of other methods are accepted and ignored: the original
release reuses one file across several scripts. The number of classes and the input size follow
from `dataset` alone (see `DATASETS`); there is no silent fallback to 10 classes as in the original.

To add a key every run has, add one `Key(...)` row to `COMMON`; a method's keys live in its module.
"""
import json
from pathlib import Path

from nets import registry
from utils.base.errors import ConfigError, did_you_mean
from utils.base.schema import (
    FLAG,
    FLOAT,
    INT,
    MODEL,
    REQUIRED,
    SCHEDULE,
    STR,
    Key,
    Problem,
    bounds,
    one_of,
    show,
)
from utils.data.registry import DATASETS

AMP_MODES = ("off", "bf16", "fp16")


# the keys of every run; each method of methods/ adds its own (methods.method_keys())
COMMON = (
    Key("method", STR, None, "the training method (methods/); without it: the script's own, or "
        "for reproduce.py the one its keys imply (adversarial_resume: nasty, teacher_resume: kd, "
        "else scratch); checked against the method table handed in"),
    Key("model_name", MODEL, REQUIRED, "the network this run trains"),
    Key("learning_rate", FLOAT, REQUIRED, "initial step size of the optimiser",
        bounds(low=0, low_open=True), training=True),
    Key("schedule", SCHEDULE, REQUIRED, "epochs at which the learning rate is multiplied "
        "by gamma ([999] never fires)", training=True),
    Key("gamma", FLOAT, REQUIRED, "learning-rate factor at each schedule epoch",
        bounds(low=0, low_open=True), training=True),
    Key("batch_size", INT, REQUIRED, "training images per step", bounds(low=1), training=True),
    Key("num_epochs", INT, REQUIRED, "length of training", bounds(low=1), training=True),
    Key("dataset", STR, REQUIRED, "data set; fixes the number of classes and input size",
        one_of(DATASETS, "data set")),
    Key("num_workers", INT, 4, "threads that decode Tiny-ImageNet once (the original's "
        "DataLoader workers; the device loader needs none)", bounds(low=0)),
    Key("augmentation", FLAG, 1, "random crops and flips of the training images"),
    Key("cuda", FLAG, 1, "use a GPU if there is one (0: always the CPU)"),
    Key("seed", INT, 0, "seed of every random number generator", bounds(low=0)),
    Key("data_dir", STR, "data", "folder that holds the data sets"),
    Key("amp", STR, "off", "mixed precision: off (fp32, as the original), bf16, or fp16 "
        "with a gradient scaler", one_of(AMP_MODES, "amp mode")),
    Key("channels_last", FLAG, 0, "NHWC memory layout for the convolutions (speed only)"),
    Key("compile", FLAG, 0, "torch.compile the trained and the frozen network (speed only)"),
    Key("sync_bn", FLAG, 0, "under torchrun on GPUs: batch-norm statistics over the global "
        "batch instead of each process's share"),
    Key("deterministic", FLAG, 1, "deterministic cuDNN as the original; 0 lets "
        "cudnn.benchmark pick the fastest kernels"),
    Key("num_channels", INT, None, "width of the 'net' CNN", bounds(low=1)),
    Key("dropout_rate", FLOAT, None, "dropout of the 'net' CNN",
        bounds(low=0, high=1, high_open=True)),
)
def keys_of(method):
    """The schema rows of a method's runs: the common keys, then the method's own (with, for a
    defended student, the defence keys)."""
    return COMMON + tuple(method.all_keys)


def all_keys(table):
    """{name: Key} of every key some run can have (a name has one row, see methods.register)."""
    return {**{key.name: key for key in COMMON},
            **{name: key for name, (key, _) in table.keys().items()}}


def describe(table, method_name):
    """One line per key of a method's runs: name, kind, default and why (for --help texts)."""
    method = table.get(method_name)
    return "\n".join(f"{key.name:<20} {key.kind.name:<7} {key.default_text():<22} {key.why}"
                     for key in keys_of(method))


# ----------------------------------------------------------------------------- Params

class Params:
    """Validated contents of one params.json.

    Every key of the run (the common ones and its method's) is an attribute, typed (int, float,
    bool for 0/1 flags, list of int, str), with defaults filled in; those that are absent and have
    no default (e.g. num_channels for a ResNet) are None. Keys of other methods that the file
    holds are kept unchecked, as given, in `as_dict()` only. `method` is always the method's
    name, `method_entry` its row of the method table.
    """

    def __init__(self, method, path, values):
        self.path = path                 # the json file, or None when built from a dict
        for key in keys_of(method):
            setattr(self, key.name, values.get(key.name))
        self._values = dict(values)
        self._order = list(values)
        self.method_entry = method
        self.method = method.name

    @property
    def source(self):
        """What an error names first: the json file, or '<params>' for a dict."""
        return str(self.path) if self.path else "<params>"

    @property
    def script(self):
        return self.method_entry.script

    @property
    def num_classes(self):
        return DATASETS[self.dataset].num_classes

    @property
    def input_size(self):
        return DATASETS[self.dataset].input_size

    def as_dict(self):
        """The keys in file order, then the defaults that were filled in."""
        return {name: getattr(self, name, self._values[name]) for name in self._order}

    def model_options(self, name):
        """The options `nets.build_model(name, ...)` takes, read from these params."""
        required, optional = registry.model_options(name)
        return {option: getattr(self, option) for option in required + optional
                if getattr(self, option, None) is not None}

    def __repr__(self):
        return f"Params(method={self.method!r}, path={str(self.path)!r}, {self.as_dict()!r})"


# ----------------------------------------------------------------------------- validation

def _typed_value(key, value):
    """The typed value of `key`, or raise Problem with a text that names key and value."""
    try:
        typed = key.kind.parse(value)
    except Problem as reason:
        raise Problem(f"{key.name} = {show(value)} {reason}") from None
    problem = key.check(typed) if key.check else None
    if problem:
        raise Problem(f"{key.name} = {show(value)} {problem}")
    return typed


def _check_keys(values, method, table, evaluating=False):
    """(typed values, problems) of the keys: unknown, mistyped, out of range, missing."""
    typed, problems = {}, []
    known, own = all_keys(table), {key.name: key for key in keys_of(method)}
    for name, value in values.items():
        if name == "method" and isinstance(value, str) and value not in table.names():
            problems.append(f"method = {show(value)} is not a known method"
                            f"{did_you_mean(value, table.names())}, valid: {', '.join(table.names())}")
        elif name not in known:
            problems.append(f"unknown key {name!r}{did_you_mean(name, known)}")
        elif name not in own:
            typed[name] = value          # another method's key: the original reuses files
        else:
            try:
                typed[name] = _typed_value(own[name], value)
            except Problem as problem:
                problems.append(str(problem))
    for key in own.values():
        if key.name in values:
            continue
        if key.default is REQUIRED:
            if not (evaluating and key.training):  # an evaluation trains nothing
                problems.append(f"missing key {key.name!r} (required for {method.name})")
        elif key.default is not None:
            typed[key.name] = key.kind.parse(key.default)
    return typed, problems


def _check_models(values, typed, method):
    """Problems of the named networks: unknown names, input size, options they need."""
    problems, reported = [], set()
    dataset = typed.get("dataset")
    for key in keys_of(method):
        if key.kind is not MODEL or key.name not in typed:
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


def _check_script(method, script, table):
    if script is not None and method.script != script:
        return [f"method {method.name!r} runs with {method.script_file}, not "
                f"{table.scripts[script]}"]
    return []


def _build(values, table, script, source, path, problems, evaluating=False):
    if script is not None and script not in table.scripts:
        raise ValueError(f"script must be one of {', '.join(table.scripts)}, not {script!r}")
    method = table.infer(values, script)
    typed, key_problems = _check_keys(values, method, table, evaluating)
    problems = (list(problems) + key_problems + _check_script(method, script, table)
                + _check_models(values, typed, method))
    if not problems:  # checks across keys need every key valid first
        dataset = DATASETS.get(typed.get("dataset"))
        problems += method.problems(typed, dataset.num_classes if dataset else None)
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    return Params(method, path, typed)


def evaluation_params(values, table, source="<params>"):
    """Params of a network to evaluate (evaluate.py --model --dataset): the keys that train a
    network (learning rate, schedule, batch size, ...) are not required, and are None if absent."""
    return _build(dict(values), table, None, source, None, (), evaluating=True)


def params_from_dict(values, table, script=None, source="<params>"):
    """Params from an already parsed dict (tests, or a config assembled in code)."""
    return _build(dict(values), table, script, source, None, ())


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
        raise ConfigError(f"{file}: top level must be a JSON object {{...}}, not {show(values)}")
    return values, duplicates


def check_set_keys(params, keys, flag="--set"):
    """A `--set KEY=...` of a key that the run's method does not read would change nothing:
    refused in one line (unknown keys were refused, with a suggestion, by the schema)."""
    own = {key.name for key in keys_of(params.method_entry)}
    unused = [key for key in keys if key not in own]
    if unused:
        names = ", ".join(sorted(own - {key.name for key in COMMON}))
        raise ConfigError(f"{flag} {unused[0]}: method {params.method!r} does not use this key, so "
                          f"it would change nothing (the method's own keys: {names or 'none'})")


def load_params(path, table, script=None, overrides=None):
    """Read and validate `<path>/params.json` (or the json file `path`) for a run of `script`
    ("scratch", "nasty", "kd"; None: whichever the file's keys say, as reproduce.py reads them),
    against the method table `table` (methods.TABLE: handed in, as this layer imports no method).

    `overrides` replaces keys before validation, e.g. command-line flags and `--set`; a None value
    means "flag not given" and is skipped. Raises ConfigError listing every problem.
    """
    file = _params_file(Path(path))
    values, duplicates = read_json(file)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    return _build(values, table, script, file, file, duplicates)
