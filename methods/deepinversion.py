"""Data-free distillation with DeepInversion (Yin et al., CVPR 2020), run by train_kd.py.

The student never sees a real training image: a set of `synthesis_images` images is synthesised from
the frozen teacher alone (utils/synthesis.py: batch-norm statistics, cross-entropy to target classes,
total-variation and l2 priors, random jitter and flips), cached in the run folder as
`synthetic.pt`, and the student is distilled on it exactly as by kd (same keys; `teacher_output`
defends the logits the student distils from, while the synthesis inverts the teacher's raw
network). The test split is read for evaluation only. The adaptive "competition" term with the
student is left out.

Defaults: the CIFAR-10 settings of NVlabs/DeepInversion (cifar10/README.md, "parameters from the
paper"); the first-layer multiplier, tv_l1 and flips are their ImageNet code's options, off there.
"""
from pathlib import Path

from utils.data import DATASETS
from utils.errors import ConfigError
from utils.schema import FLAG, FLOAT, INT, Key, bounds
from utils.synthesis import CACHE_NAME, Recipe, file_sha256, finished_split, synthetic_set

from .base import STUDENT, TEMPERATURE, Method, register
from .kd import ALPHA, DEFENCE_KEYS, TEACHER, TEACHER_KEYS, build, check_defence, log_teacher_accuracy

POSITIVE = bounds(low=0, low_open=True)
NON_NEGATIVE = bounds(low=0)
KEYS = (
    Key("synthesis_images", INT, 50000, "images synthesised, the student's whole training set (the "
        "size of CIFAR-10's real one)", bounds(low=1)),
    Key("synthesis_batch", INT, 256, "images optimised together; their batch statistics are "
        "matched to the teacher's (paper: 256)", bounds(low=1)),
    Key("synthesis_iterations", INT, 2000, "Adam steps per batch (paper: 2000)", bounds(low=1)),
    Key("synthesis_lr", FLOAT, 0.05, "Adam step size on the normalised pixels (paper: 0.05)", POSITIVE),
    Key("synthesis_bn_weight", FLOAT, 10.0, "weight of the batch-norm statistic loss (paper: 10)",
        NON_NEGATIVE),
    Key("synthesis_first_bn_multiplier", FLOAT, 1.0, "extra factor on the first batch-norm "
        "layer's term (their ImageNet code: 10; CIFAR-10: 1)", NON_NEGATIVE),
    Key("synthesis_tv_l1", FLOAT, 0.0, "weight of the l1 total-variation prior (smoothness; their "
        "ImageNet option, 0 on CIFAR-10)", NON_NEGATIVE),
    Key("synthesis_tv_l2", FLOAT, 2.5e-5, "weight of the l2 total-variation prior (paper: 2.5e-5)",
        NON_NEGATIVE),
    Key("synthesis_l2", FLOAT, 0.0, "weight of the l2 norm of the images (paper: 0)", NON_NEGATIVE),
    Key("synthesis_jitter", INT, 2, "largest random shift (pixels, rolled) of each step's images "
        "(paper: 2 on CIFAR-10)", NON_NEGATIVE),
    Key("synthesis_flip", FLAG, 0, "flip each step's images at random (their ImageNet code; "
        "0 on CIFAR-10; no use on digits)"),
)
RECIPE_KEYS = {field: f"synthesis_{field}" for field in Recipe._fields if field != "seed"}


def recipe_of(params):
    return Recipe(**{field: getattr(params, key) for field, key in RECIPE_KEYS.items()},
                  seed=params.seed)


def made_by(params):
    """What a cached set must have been made with besides the recipe: the data set and the teacher."""
    spec = DATASETS[params.dataset]
    return {"dataset": params.dataset, "mean": spec.mean, "std": spec.std,
            "teacher_model": params.teacher_model,
            "teacher_sha256": file_sha256(params.teacher_resume)}


def synthetic_split(params, frozen, save_path, log, world):
    """The method table's train_split: the synthetic set, made on rank 0, read by the others."""
    teacher = frozen["teacher"]
    teacher = getattr(teacher, "_orig_mod", teacher)  # hooks go on the plain network, not compiled
    if not any(hasattr(m, "running_var") for m in teacher.modules()):
        raise ConfigError(f"{params.path}: deepinversion needs a teacher with batch-norm layers; "
                          f"{params.teacher_model} has none")
    recipe, spec = recipe_of(params), DATASETS[params.dataset]
    if spec.mean is None:
        raise ConfigError(f"{params.path}: data set {params.dataset!r} measures its mean and std on "
                          "the real training split, which deepinversion must not read; give them "
                          "as constants in its DatasetSpec")
    identity = made_by(params)
    if not world.is_main:
        return finished_split(Path(save_path) / CACHE_NAME, identity, recipe)
    device = next(teacher.parameters()).device
    return synthetic_set(teacher, recipe, identity, save_path, device, log, spec.mean, spec.std,
                         spec.num_classes, spec.input_size)


def check(values):
    problems = check_defence(values)
    if values["synthesis_images"] < values["batch_size"]:
        problems.append(f"synthesis_images = {values['synthesis_images']} is smaller than batch_size "
                        f"= {values['batch_size']}: the student would not have one batch")
    return problems


register(Method(
    name="deepinversion", script="kd", role=STUDENT, build=build,
    summary="data-free distillation: kd on images synthesised from the teacher (DeepInversion)",
    keys=(TEMPERATURE, *TEACHER_KEYS, ALPHA, *DEFENCE_KEYS, *KEYS),
    frozen=(TEACHER,),
    terms=("ce", "kl"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss"), ("kl", "Train KD (KL) loss")),
    on_start=log_teacher_accuracy, check=check, train_split=synthetic_split))
