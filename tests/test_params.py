"""params.json: the 60 published files load unchanged; every rule is reported, all at once."""
import json
from pathlib import Path

import pytest
from configs import FOLLOW_UP_PREFIXES, GENERATED_PREFIXES

import methods
import nets  # noqa: F401  (registers every network name the checks look up)
from methods import load_params, params_from_dict
from utils.base.errors import ConfigError
from utils.data.registry import DATASETS
from utils.training.params import COMMON, all_keys, describe, evaluation_params

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
ALL_CONFIGS = sorted(EXPERIMENTS.rglob("params.json"))


def _is_original(file):
    """One of the original release's 60 files: not under experiments/Digits*, not in a follow-up
    folder, not a copy reproduce.py generated."""
    parts = file.relative_to(EXPERIMENTS).parts
    return not parts[0].startswith("Digits") and not any(
        part.startswith(FOLLOW_UP_PREFIXES + GENERATED_PREFIXES) for part in parts[1:-1])


PUBLISHED = [p for p in ALL_CONFIGS if _is_original(p)]


def _published(relative):
    return json.loads((EXPERIMENTS / relative / "params.json").read_text())


SCRATCH = _published("CIFAR100/baseline/resnet18")
NASTY = _published("CIFAR10/kd_nasty_resnet18/nasty_resnet18")
KD = _published("CIFAR10/kd_normal_resnet18/preresnet20")
BASES = {"scratch": SCRATCH, "nasty": NASTY, "kd": KD}


def _mode_of(values):
    if "adversarial_model" in values:
        return "nasty"
    return "kd" if "teacher_model" in values else "scratch"


DROP = object()  # as a change: delete the key


def _write(folder, values, **changes):
    """A copy of `values` with `changes` applied, written as folder/params.json."""
    values = dict(values)
    for name, value in changes.items():
        if value is DROP:
            values.pop(name, None)
        else:
            values[name] = value
    file = folder / "params.json"
    file.write_text(json.dumps(values, indent=4))
    return file


def _error(path, mode, overrides=None):
    """The message of the ConfigError that loading raises; checks it is one line naming the file."""
    with pytest.raises(ConfigError) as caught:
        load_params(path, mode, overrides)
    message = str(caught.value)
    file = path / "params.json" if Path(path).is_dir() else path
    assert message.startswith(f"{file}: "), message
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- published files

def test_there_are_exactly_60_published_files():
    assert len(PUBLISHED) == 60


@pytest.mark.parametrize("file", PUBLISHED,
                         ids=lambda f: f.parent.relative_to(EXPERIMENTS).as_posix())
def test_every_published_file_loads_unchanged(file):
    values = json.loads(file.read_text())
    params = load_params(file.parent, _mode_of(values))
    assert params.path == file
    assert params.method == params.script == _mode_of(values)
    for name, value in values.items():
        assert getattr(params, name) == value
    assert params.num_classes == DATASETS[values["dataset"]].num_classes


def test_published_cifar10_baseline_cnn_exact_values():
    params = load_params(EXPERIMENTS / "CIFAR10/baseline/cnn", "scratch")
    assert params.model_name == "net"
    assert params.learning_rate == 0.001 and isinstance(params.learning_rate, float)
    assert params.schedule == [999]
    assert params.num_classes == 10 and params.input_size == 32
    assert (params.num_channels, params.dropout_rate) == (32, 0.0)
    assert params.num_epochs == 100 and params.batch_size == 128


def test_published_tiny_imagenet_files_have_200_classes_of_64_pixels():
    tiny = [f for f in PUBLISHED if f.relative_to(EXPERIMENTS).parts[0] == "TinyImageNet"]
    assert len(tiny) == 24
    for file in tiny:
        params = load_params(file, _mode_of(json.loads(file.read_text())))
        assert (params.num_classes, params.input_size) == (200, 64)


def test_published_nasty_and_kd_exact_values():
    nasty = load_params(EXPERIMENTS / "CIFAR100/kd_nasty_resnet50/nasty_resnet50", "nasty")
    assert (nasty.model_name, nasty.adversarial_model) == ("resnet50", "resnet50")
    assert nasty.adversarial_resume == "experiments/CIFAR100/baseline/resnet50/best_model.tar"
    assert nasty.num_classes == 100 and nasty.temperature == 20.0
    kd = load_params(EXPERIMENTS / "CIFAR10/kd_nasty_resnet18/cnn", "kd")
    assert (kd.teacher_model, kd.temperature, kd.alpha) == ("resnet18", 4.0, 0.9)
    assert kd.teacher_resume == ("experiments/CIFAR10/kd_nasty_resnet18/nasty_resnet18/"
                                 "best_model.tar")


def test_a_kd_file_loads_as_scratch_keeping_the_other_keys_as_given():
    params = load_params(EXPERIMENTS / "CIFAR10/kd_normal_resnet18/preresnet20", "scratch")
    given = params.as_dict()
    assert given["teacher_model"] == "resnet18" and given["temperature"] == 4 and "alpha" in given
    # ... but only the run's own keys are attributes: scratch reads no teacher
    assert not hasattr(params, "teacher_model") and not hasattr(params, "sparse_ratio")


def test_params_hold_the_methods_keys_with_defaults_and_no_other_methods_keys():
    scratch = params_from_dict(SCRATCH, "scratch")
    assert scratch.seed == 0 and scratch.num_channels is None  # common keys: default, or None
    assert not any(hasattr(scratch, key) for key in ("temperature", "weight", "teacher_output"))
    kd = params_from_dict({**SCRATCH, "teacher_model": "resnet18", "teacher_resume": "t.tar",
                           "temperature": 4, "alpha": 0.9}, "kd")
    assert (kd.teacher_output, kd.sparse_ratio) == ("logits", 1.0)  # the defence keys' defaults
    assert not hasattr(kd, "weight") and not hasattr(kd, "synthesis_images")


# ----------------------------------------------------------------------------- paths and JSON

def test_path_may_be_the_folder_or_the_file(tmp_path):
    file = _write(tmp_path, SCRATCH)
    assert load_params(tmp_path, "scratch").path == file
    assert load_params(file, "scratch").path == file
    assert load_params(str(file), "scratch").as_dict() == load_params(tmp_path, "scratch").as_dict()


def test_missing_file_is_named(tmp_path):
    message = _error(tmp_path / "nothere.json", "scratch")
    assert message == f"{tmp_path / 'nothere.json'}: no such file or directory"


def test_directory_without_params_json(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_params(tmp_path, "scratch")
    assert str(caught.value) == f"{tmp_path}: directory has no params.json"


def test_malformed_json_gives_line_and_column(tmp_path):
    file = tmp_path / "params.json"
    file.write_text('{\n    "model_name": "resnet18",\n'
                    '    "gamma": 0.1\n    "batch_size": 128\n}\n')
    assert _error(tmp_path, "scratch") == (
        f"{file}: invalid JSON at line 4, column 5: Expecting ',' delimiter")


def test_top_level_must_be_an_object(tmp_path):
    file = tmp_path / "params.json"
    file.write_text("[1, 2, 3]")
    assert "top level must be a JSON object" in _error(file, "scratch")


def test_duplicate_key_is_reported(tmp_path):
    file = tmp_path / "params.json"
    file.write_text(json.dumps(SCRATCH)[:-1] + ', "gamma": 0.5}')
    assert "duplicate key 'gamma'" in _error(file, "scratch")


# ----------------------------------------------------------------------------- keys

def test_unknown_key_suggests_the_close_one(tmp_path):
    _write(tmp_path, SCRATCH, learing_rate=0.1)
    message = _error(tmp_path, "scratch")
    assert "unknown key 'learing_rate' (did you mean 'learning_rate'?)" in message


def test_unknown_key_without_a_close_one_suggests_nothing(tmp_path):
    _write(tmp_path, SCRATCH, zzzz=1)
    message = _error(tmp_path, "scratch")
    assert message.endswith("unknown key 'zzzz'")


@pytest.mark.parametrize("mode,key", [
    ("scratch", "model_name"), ("scratch", "learning_rate"), ("scratch", "schedule"),
    ("scratch", "gamma"), ("scratch", "batch_size"), ("scratch", "num_epochs"),
    ("scratch", "dataset"), ("nasty", "adversarial_model"), ("nasty", "adversarial_resume"),
    ("nasty", "temperature"), ("nasty", "weight"), ("kd", "teacher_model"),
    ("kd", "teacher_resume"), ("kd", "temperature"), ("kd", "alpha"),
])
def test_missing_required_key(tmp_path, mode, key):
    _write(tmp_path, BASES[mode], **{key: DROP})
    assert f"missing key {key!r} (required for {mode})" in _error(tmp_path, mode)


def test_keys_of_other_modes_are_accepted_and_ignored(tmp_path):
    # unchecked: a scratch run must not fail on a teacher it never loads
    _write(tmp_path, SCRATCH, teacher_model="resnt18", alpha=7, weight="x")
    params = load_params(tmp_path, "scratch")
    given = params.as_dict()
    assert (given["teacher_model"], given["alpha"], given["weight"]) == ("resnt18", 7, "x")
    assert not hasattr(params, "adversarial_model")


def test_defaults_are_filled_in(tmp_path):
    values = {k: v for k, v in SCRATCH.items() if k not in ("num_workers", "augmentation", "cuda")}
    _write(tmp_path, values)
    params = load_params(tmp_path, "scratch")
    assert (params.num_workers, params.augmentation, params.cuda) == (4, True, True)
    assert (params.seed, params.data_dir) == (0, "data")
    assert params.num_channels is None and params.dropout_rate is None
    assert list(params.as_dict()) == list(values) + [
        "num_workers", "augmentation", "cuda", "seed", "data_dir", "amp", "channels_last",
        "compile", "sync_bn", "deterministic"]
    assert params.sync_bn is False  # per-rank batch statistics, as one DDP process per GPU does
    # the speed switches default to the original's numerics
    assert (params.amp, params.channels_last, params.compile, params.deterministic) == \
        ("off", False, False, True)


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_amp_modes(tmp_path, amp):
    _write(tmp_path, SCRATCH, amp=amp)
    assert load_params(tmp_path, "scratch").amp == amp


def test_unknown_amp_mode_is_named(tmp_path):
    _write(tmp_path, SCRATCH, amp="fp8")
    assert "amp = 'fp8' is not a known amp mode" in _error(tmp_path, "scratch")


def test_overrides_replace_and_add_keys_before_validation(tmp_path):
    _write(tmp_path, KD, teacher_resume="old.tar")
    params = load_params(tmp_path, "kd", {"teacher_resume": "new.tar", "data_dir": "/d",
                                          "seed": None})
    assert (params.teacher_resume, params.data_dir, params.seed) == ("new.tar", "/d", 0)
    assert list(params.as_dict())[:len(KD)] == list(KD)
    message = _error(tmp_path, "kd", {"alpha": 2})
    assert "alpha = 2 must be >= 0 and <= 1" in message


def test_overrides_may_pass_a_path_for_a_folder_but_not_other_objects(tmp_path):
    _write(tmp_path, SCRATCH)
    assert load_params(tmp_path, "scratch", {"data_dir": tmp_path}).data_dir == str(tmp_path)
    assert "data_dir = {1} must be a string" in _error(tmp_path, "scratch", {"data_dir": {1}})


def test_an_override_supplies_a_missing_key(tmp_path):
    _write(tmp_path, KD, teacher_resume=DROP)
    assert load_params(tmp_path, "kd", {"teacher_resume": "t.tar"}).teacher_resume == "t.tar"


# ----------------------------------------------------------------------------- types

@pytest.mark.parametrize("key,value,text", [
    ("learning_rate", "0.1", "learning_rate = '0.1' must be a number, not a string"),
    ("gamma", None, "gamma = null must be a number"),
    ("num_epochs", 100.0, "num_epochs = 100.0 must be an integer, not a float"),
    ("batch_size", 12.5, "batch_size = 12.5 must be an integer, not a float"),
    ("batch_size", "128", "batch_size = '128' must be an integer, not a string"),
    ("learning_rate", True, "learning_rate = true must be a number"),
    ("num_workers", False, "num_workers = false must be an integer"),
    ("dataset", 10, "dataset = 10 must be a string"),
    ("model_name", ["resnet18"], "model_name = [\"resnet18\"] must be a model name"),
    ("data_dir", 3, "data_dir = 3 must be a string"),
])
def test_wrong_type_names_key_and_value(tmp_path, key, value, text):
    _write(tmp_path, SCRATCH, **{key: value})
    assert text in _error(tmp_path, "scratch")


def test_integral_numbers_are_fine_for_float_keys(tmp_path):
    _write(tmp_path, NASTY, learning_rate=1, gamma=1, weight=0)
    params = load_params(tmp_path, "nasty")
    assert params.learning_rate == 1.0 and isinstance(params.learning_rate, float)
    assert params.weight == 0.0


@pytest.mark.parametrize("value,expected", [(0, False), (1, True), (False, False), (True, True)])
def test_flags_take_0_1_true_false(tmp_path, value, expected):
    _write(tmp_path, SCRATCH, augmentation=value, cuda=value)
    params = load_params(tmp_path, "scratch")
    assert params.augmentation is expected and params.cuda is expected


@pytest.mark.parametrize("value", [2, -1, "yes", 1.0])
def test_flags_reject_other_values(tmp_path, value):
    _write(tmp_path, SCRATCH, cuda=value)
    shown = repr(value) if isinstance(value, str) else json.dumps(value)
    assert f"cuda = {shown} must be 0, 1, true or false" in _error(tmp_path, "scratch")


def test_non_finite_numbers_are_rejected(tmp_path):
    file = tmp_path / "params.json"
    text = json.dumps(SCRATCH).replace('"learning_rate": 0.1', '"learning_rate": Infinity')
    file.write_text(text)
    assert "learning_rate = Infinity must be a finite number" in _error(file, "scratch")


# ----------------------------------------------------------------------------- ranges

@pytest.mark.parametrize("mode,key,value,rule", [
    ("scratch", "learning_rate", 0, "> 0"), ("scratch", "learning_rate", -0.1, "> 0"),
    ("kd", "alpha", -0.1, ">= 0 and <= 1"), ("kd", "alpha", 1.01, ">= 0 and <= 1"),
    ("kd", "temperature", 0, "> 0"), ("nasty", "temperature", -4, "> 0"),
    ("scratch", "gamma", 0, "> 0"), ("nasty", "weight", -0.01, ">= 0"),
    ("scratch", "batch_size", 0, ">= 1"), ("scratch", "num_epochs", 0, ">= 1"),
    ("scratch", "num_workers", -1, ">= 0"), ("scratch", "seed", -1, ">= 0"),
    ("scratch", "num_channels", 0, ">= 1"), ("scratch", "dropout_rate", 1, ">= 0 and < 1"),
    ("scratch", "dropout_rate", -0.5, ">= 0 and < 1"),
])
def test_out_of_range(tmp_path, mode, key, value, rule):
    _write(tmp_path, BASES[mode], **{key: value})
    assert f"{key} = {json.dumps(value)} must be {rule}" in _error(tmp_path, mode)


@pytest.mark.parametrize("mode,key,value", [
    ("kd", "alpha", 0), ("kd", "alpha", 1), ("nasty", "weight", 0), ("scratch", "num_workers", 0),
    ("scratch", "seed", 0), ("scratch", "dropout_rate", 0), ("scratch", "dropout_rate", 0.99),
    ("scratch", "batch_size", 1), ("scratch", "num_epochs", 1), ("kd", "temperature", 0.5),
])
def test_range_boundaries_that_are_valid(tmp_path, mode, key, value):
    _write(tmp_path, BASES[mode], **{key: value})
    assert getattr(load_params(tmp_path, mode), key) == value


@pytest.mark.parametrize("schedule", [[999], [], [0], [60, 120, 160], [80, 120]])
def test_valid_schedules(tmp_path, schedule):
    _write(tmp_path, SCRATCH, schedule=schedule)
    assert load_params(tmp_path, "scratch").schedule == schedule


@pytest.mark.parametrize("schedule,text", [
    ([120, 60], "schedule = [120, 60] must be strictly increasing"),
    ([60, 60], "schedule = [60, 60] must be strictly increasing"),
    ([-1, 60], "schedule = [-1, 60] must hold non-negative epochs"),
    ([60.0, 120], "schedule = [60.0, 120] must be a list of integers"),
    ([60, True], "schedule = [60, true] must be a list of integers"),
    (60, "schedule = 60 must be a list of integers"),
    ("60,120", "schedule = '60,120' must be a list of integers"),
])
def test_invalid_schedules(tmp_path, schedule, text):
    _write(tmp_path, SCRATCH, schedule=schedule)
    assert text in _error(tmp_path, "scratch")


# ----------------------------------------------------------------------------- data sets and models

def test_datasets_table():
    assert {name: (info.num_classes, info.input_size) for name, info in DATASETS.items()} == {
        "cifar10": (10, 32), "cifar100": (100, 32), "tiny_imagenet": (200, 64), "digits": (10, 32)}
    assert DATASETS["tiny_imagenet"].num_classes == 200 and DATASETS["digits"].input_size == 32


@pytest.mark.parametrize("dataset,num_classes,input_size", [
    ("cifar10", 10, 32), ("cifar100", 100, 32), ("tiny_imagenet", 200, 64), ("digits", 10, 32)])
def test_classes_and_input_size_follow_the_dataset(tmp_path, dataset, num_classes, input_size):
    _write(tmp_path, SCRATCH, dataset=dataset)
    params = load_params(tmp_path, "scratch")
    assert (params.num_classes, params.input_size) == (num_classes, input_size)


def test_unknown_dataset_suggests_the_close_one(tmp_path):
    _write(tmp_path, SCRATCH, dataset="cifar1000")
    message = _error(tmp_path, "scratch")
    assert "dataset = 'cifar1000' is not a known data set (did you mean 'cifar100'?)" in message
    assert "valid: cifar10, cifar100, digits, tiny_imagenet" in message


def test_uppercase_dataset_suggests_the_lowercase_name(tmp_path):
    _write(tmp_path, SCRATCH, dataset="CIFAR10")
    assert "(did you mean 'cifar10'?)" in _error(tmp_path, "scratch")


@pytest.mark.parametrize("mode,key", [
    ("scratch", "model_name"), ("kd", "teacher_model"), ("nasty", "adversarial_model")])
def test_unknown_model_name(tmp_path, mode, key):
    _write(tmp_path, BASES[mode], **{key: "resnt18"})
    assert f"unknown {key} 'resnt18' (did you mean 'resnet18'?)" in _error(tmp_path, mode)


@pytest.mark.parametrize("mode,key,model", [
    ("scratch", "model_name", "preresnet20"), ("scratch", "model_name", "mlp"),
    ("kd", "teacher_model", "preresnet32"), ("nasty", "adversarial_model", "mlp")])
def test_model_that_cannot_take_the_dataset_input_size(tmp_path, mode, key, model):
    _write(tmp_path, BASES[mode], dataset="tiny_imagenet", **{key: model})
    message = _error(tmp_path, mode)
    assert f"{key}: model {model!r} only works on 32x32 inputs" in message
    assert "not 64x64 (dataset 'tiny_imagenet')" in message


@pytest.mark.parametrize("mode,key", [
    ("scratch", "model_name"), ("kd", "teacher_model"), ("nasty", "adversarial_model")])
def test_net_needs_its_options_wherever_it_is_named(tmp_path, mode, key):
    _write(tmp_path, BASES[mode], **{key: "net"})
    message = _error(tmp_path, mode)
    assert "missing key 'num_channels' (required by model 'net')" in message
    assert "missing key 'dropout_rate' (required by model 'net')" in message
    _write(tmp_path, BASES[mode], num_channels=16, dropout_rate=0.5, **{key: "net"})
    assert load_params(tmp_path, mode).model_options("net") == {"num_channels": 16,
                                                                "dropout_rate": 0.5}


def test_model_options_for_net_and_resnet18():
    params = load_params(EXPERIMENTS / "CIFAR10/kd_nasty_resnet18/cnn", "kd")
    assert params.model_options("net") == {"num_channels": 32, "dropout_rate": 0.0}
    assert params.model_options("resnet18") == {}
    model = nets.build_model(params.model_name, params.num_classes, input_size=params.input_size,
                             **params.model_options(params.model_name))
    assert model is not None


# ----------------------------------------------------------------------------- the error itself

def test_three_problems_are_reported_in_one_error(tmp_path):
    file = _write(tmp_path, KD, learing_rate=0.1, num_epochs=100.0, alpha=DROP)
    message = _error(tmp_path, "kd")
    assert message.startswith(f"{file}: ")
    assert "unknown key 'learing_rate'" in message
    assert "num_epochs = 100.0 must be an integer" in message
    assert "missing key 'alpha' (required for kd)" in message
    assert message.count("; ") == 2


def test_config_error_exits_with_2(tmp_path):
    _write(tmp_path, SCRATCH, gamma=-1)
    with pytest.raises(ConfigError) as caught:
        load_params(tmp_path, "scratch")
    assert caught.value.exit_code == 2


def test_unknown_mode_is_a_programming_error(tmp_path):
    _write(tmp_path, SCRATCH)
    with pytest.raises(ValueError):
        load_params(tmp_path, "teacher")


# ----------------------------------------------------------------------------- the schema

def test_schema_rows_are_complete_and_unique():
    names = [key.name for key in COMMON] + list(methods.base.method_keys())
    assert len(names) == len(set(names))
    for key in all_keys(methods.TABLE).values():
        assert key.why and key.kind
    # one row shared by every method with soft labels (registration order: the original's three,
    # then the other modules of methods/ alphabetically)
    assert methods.base.method_keys()["temperature"][1] == ["nasty", "kd", "deepinversion", "dkd",
                                                            "sdb", "skeptical"]


def test_params_from_dict_and_describe():
    params = params_from_dict(SCRATCH, "scratch")
    assert params.path is None and params.num_classes == 100
    with pytest.raises(ConfigError, match=r"^<params>: missing key 'gamma'"):
        params_from_dict({k: v for k, v in SCRATCH.items() if k != "gamma"}, "scratch")
    assert "alpha" in describe(methods.TABLE, "kd") and "alpha" not in describe(methods.TABLE, "scratch")


def test_an_evaluation_needs_no_training_keys():
    """evaluate.py --model --dataset: the network and the data set are enough; nothing is invented."""
    params = evaluation_params({"model_name": "resnet18", "dataset": "cifar10"}, methods.TABLE)
    assert (params.learning_rate, params.batch_size, params.num_epochs) == (None, None, None)
    assert params.num_classes == 10 and params.method == "scratch"
    assert "learning_rate" not in params.as_dict()
    with pytest.raises(ConfigError, match="missing key 'learning_rate'"):
        params_from_dict({"model_name": "resnet18", "dataset": "cifar10"})  # a training run needs it
    with pytest.raises(ConfigError, match=r"missing key 'num_channels' \(required by model 'net'\)"):
        evaluation_params({"model_name": "net", "dataset": "cifar10"}, methods.TABLE)
