"""Data-free distillation with DeepInversion (Yin et al., CVPR 2020), run by train_kd.py.

The student never sees a real training image: a set of `synthesis_images` images is synthesised from
the frozen teacher alone (batch-norm statistics, cross-entropy to target classes, total-variation and
l2 priors, random jitter and flips; see `synthesize_batch` below), cached in the run folder as
`synthetic.pt`, and the student is distilled on it exactly as by kd (same keys; `teacher_output`
defends the logits the student distils from, while the synthesis inverts the teacher's raw
network). The test split is read for evaluation only. The adaptive "competition" term with the
student is left out.

Defaults: the CIFAR-10 settings of NVlabs/DeepInversion (cifar10/README.md, "parameters from the
paper"); the first-layer multiplier, tv_l1 and flips are their ImageNet code's options, off there.
"""

import hashlib
import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.base.checkpoint import file_sha256, load_checkpoint, remove_partial_writes, save_checkpoint
from utils.base.errors import ConfigError, NastyError
from utils.base.lock import RunLock, waiting_lock
from utils.base.schema import FLAG, FLOAT, INT, Key, bounds
from utils.data.loader import epoch_seed
from utils.data.registry import DATASETS, Split

from .base import TEMPERATURE, Access, Method, register
from .kd import ALPHA, STUDENT, TEACHER_KEYS, build, distillation_setting

# DeepInversion (Yin et al., "Dreaming to Distill", CVPR 2020): a training set synthesised from a
# frozen teacher alone, for data-free distillation.
#
#     recipe = Recipe(images=1000, batch=100, iterations=200, lr=0.05, bn_weight=10.0, ...)
#     split = synthetic_set(teacher, recipe, made_by, save_path, device, log, mean, std, classes, 32)
#
# Each batch starts from Gaussian noise in the teacher's normalised input space and is optimised with
# Adam, the teacher in eval mode, to minimise
#     CE(teacher(x~), target) + bn_weight * sum_l m_l (||mu_l(x~) - mean_l||_2 + ||var_l(x~) - var_l||_2)
#     + tv_l1 * TV1(x~) + tv_l2 * TV2(x~) + l2 * ||x~||_2
# where x~ is x rolled by a random jitter (and flipped at random when asked), mu_l / var_l the batch
# mean and (biased) variance of what batch-norm layer l receives, mean_l / var_l its running
# statistics, m_l = first_bn_multiplier for the first layer and 1 for the others. Image i of the set
# aims at class i mod classes (the CIFAR-10 script's class columns), so the classes are balanced.
# The result is denormalised to uint8 and kept in `<save_path>/synthetic.pt` after every batch,
# with what made it: a killed run resumes at the next unfinished batch.
#
# Left out: the adaptive ("competition") term with the student, and the original's "best inputs"
# (its copy aliases the optimised tensor, so it keeps the last iterate, as we do).

CACHE_NAME = "synthetic.pt"
SHARED_FOLDER = "synthetic"  # beside a teacher's checkpoint: the sets its students share
CACHE_FORMAT = "nasty-teacher/synthetic-1"
STREAM = 1 << 32  # batch b draws from epoch_seed(seed, STREAM + b): apart from the epochs' streams


class Recipe(NamedTuple):
    images: int
    batch: int
    iterations: int
    lr: float
    bn_weight: float
    first_bn_multiplier: float
    tv_l1: float
    tv_l2: float
    l2: float
    jitter: int
    flip: bool
    seed: int

    @property
    def batches(self):
        return -(-self.images // self.batch)


# ----------------------------------------------------------------------------- the loss (pure)

def bn_statistic_loss(features, running_means, running_vars, first_multiplier=1.0):
    """sum_l m_l (||mean of features_l - running mean_l||_2 + ||var - running var_l||_2), the mean and
    the biased variance per channel over every dimension but the channels (dim 1), as batch norm
    normalises with; m_0 = first_multiplier, the others 1."""
    total = features[0].new_zeros(())
    for layer, (x, mean, var) in enumerate(zip(features, running_means, running_vars)):
        dims = [0] + list(range(2, x.dim()))
        distance = (torch.linalg.vector_norm(x.mean(dims) - mean)
                    + torch.linalg.vector_norm(x.var(dims, unbiased=False) - var))
        total = total + (first_multiplier if layer == 0 else 1.0) * distance
    return total


def tv_priors(x):
    """(l1, l2) total variation of images x (N, C, H, W) over the 4 neighbour directions
    (right, down and both diagonals): sum of the mean absolute differences, sum of their l2 norms."""
    diffs = (x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :],
             x[..., 1:, :-1] - x[..., :-1, 1:], x[..., :-1, :-1] - x[..., 1:, 1:])
    return sum(d.abs().mean() for d in diffs), sum(torch.linalg.vector_norm(d) for d in diffs)


def l2_prior(x):
    return torch.linalg.vector_norm(x)


class BatchNormInputs:
    """While entered: `.features()` are the inputs the network's batch-norm layers received in its
    last forward, in module order, beside their running means and variances."""

    def __init__(self, network):
        self.layers = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self.seen, self.handles = {}, []

    def __enter__(self):
        self.handles = [layer.register_forward_hook(self._keep) for layer in self.layers]
        return self

    def _keep(self, module, inputs, output):
        self.seen[module] = inputs[0]

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.seen.clear()

    def loss(self, first_multiplier):
        return bn_statistic_loss([self.seen[m] for m in self.layers],
                                 [m.running_mean for m in self.layers],
                                 [m.running_var for m in self.layers], first_multiplier)


def synthesis_loss(teacher, captured, x, targets, recipe):
    """(total, {'ce', 'bn'}) of the (jittered) images x."""
    ce = F.cross_entropy(teacher(x), targets)
    bn = captured.loss(recipe.first_bn_multiplier)
    tv1, tv2 = tv_priors(x)
    total = ce + recipe.bn_weight * bn + recipe.tv_l1 * tv1 + recipe.tv_l2 * tv2 + recipe.l2 * l2_prior(x)
    return total, {"ce": ce.detach(), "bn": bn.detach()}


# ----------------------------------------------------------------------------- the loop

def pixel_bounds(mean, std, device):
    """(lowest, highest) normalised value of each channel: pixels 0 and 1, as (1, C, 1, 1)."""
    mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1) for v in (mean, std))
    return -mean / std, (1 - mean) / std


def synthesize_batch(teacher, recipe, targets, shape, generator, bounds, bar=None):
    """(normalised images, {'bn_start', 'bn', 'ce', 'agree'}) of one batch; random numbers from
    the CPU `generator` alone, so a batch is a function of its seed. After every step the images
    are clipped to `bounds` (as their ImageNet code does), so that uint8 pixels keep what the
    teacher saw."""
    low, high = bounds
    x = torch.randn(shape, generator=generator).to(low.device)
    x = torch.max(torch.min(x, high), low).requires_grad_()
    shifts = torch.randint(-recipe.jitter, recipe.jitter + 1, (recipe.iterations, 2), generator=generator)
    flips = torch.rand(recipe.iterations, generator=generator) < 0.5
    optimizer = torch.optim.Adam([x], lr=recipe.lr)
    targets = targets.to(low.device)
    with torch.enable_grad(), BatchNormInputs(teacher) as captured:
        for it in range(recipe.iterations):
            moved = torch.roll(x, shifts=tuple(shifts[it].tolist()), dims=(2, 3))
            if recipe.flip and flips[it]:
                moved = moved.flip(3)
            loss, parts = synthesis_loss(teacher, captured, moved, targets, recipe)
            if it == 0:
                bn_start = parts["bn"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.copy_(torch.max(torch.min(x, high), low))
            if bar is not None:
                bar.update(1)
    with torch.no_grad(), BatchNormInputs(teacher) as captured:
        agree = (teacher(x).argmax(1) == targets).float().mean()
        bn_end = captured.loss(recipe.first_bn_multiplier)
    return x.detach(), {"bn_start": bn_start.item(), "bn": bn_end.item(), "ce": parts["ce"].item(),
                        "agree": 100.0 * agree.item()}


def to_uint8(x, mean, std):
    """Normalised images -> uint8 pixels (N, C, H, W) on the CPU."""
    view = (1, -1, 1, 1)
    pixels = x.cpu() * torch.tensor(std).view(view) + torch.tensor(mean).view(view)
    return pixels.clamp(0, 1).mul(255).round().to(torch.uint8)


def target_classes(start, count, classes):
    return torch.arange(start, start + count) % classes


def batch_generator(seed, batch):
    return torch.Generator().manual_seed(epoch_seed(seed, STREAM + batch))


# ----------------------------------------------------------------------------- the cache

def read_cache(path, made_by):
    """The cache at `path` if it was made by `made_by` (settings and teacher); None when absent."""
    if not path.exists():
        return None
    cache = load_checkpoint(path)  # refuses a damaged file in one line
    if cache.get("format") != CACHE_FORMAT:
        raise NastyError(f"{path} is not a synthetic set of ours; delete it or choose another run folder")
    old = cache.get("made_by", {})
    if old != made_by:
        changed = [k for k in sorted(set(old) | set(made_by)) if old.get(k) != made_by.get(k)]
        shown = ", ".join(f"{k} {old.get(k)!r} -> {made_by.get(k)!r}" for k in changed[:3])
        raise ConfigError(f"{path} was synthesised with other settings or another teacher ({shown}); "
                          "delete it to synthesise a new set")
    return cache


def empty_cache(made_by):
    # the images and labels tensors live under 'state_dict' so load_checkpoint accepts the file
    return {"format": CACHE_FORMAT, "made_by": made_by, "batches_done": 0,
            "state_dict": {"images": torch.zeros(0, dtype=torch.uint8),
                           "labels": torch.zeros(0, dtype=torch.long)}}


def finished_split(path, made_by, recipe, poll=5.0):
    """The finished set, once rank 0 has made it: ranks other than 0 poll the file, outside any
    collective (a synthesis may take hours, far past a process group's timeout). A cache of other
    settings is refused at once; if rank 0 fails, torchrun stops this rank."""
    made_by = {**recipe._asdict(), **made_by}
    while True:
        cache = read_cache(path, made_by) if path.exists() else None
        if cache is not None and cache["batches_done"] >= recipe.batches:
            return Split(cache["state_dict"]["images"], cache["state_dict"]["labels"])
        time.sleep(poll)


def synthetic_set(teacher, recipe, made_by, save_path, device, log, mean, std, classes, size,
                  until=None, shared=None):
    """The synthetic training split of the run in `save_path`: read from its cache, whose missing
    batches are synthesised first (under the folder lock) and saved one by one; `until`: stop after
    that many batches in all (tests). Nothing is written when the cache is complete. The cache
    must have been made by `recipe` and `made_by` (what else decides the set: the teacher...).
    `shared`: a file where the set is made first (or found made), under a lock that other runs
    of the same set wait on; the run folder then keeps a copy."""
    path, made_by = Path(save_path) / CACHE_NAME, {**recipe._asdict(), **made_by}
    stop = recipe.batches if until is None else min(until, recipe.batches)
    synthesise = Synthesis(teacher, recipe, device, log, (mean, std, classes, size))
    with RunLock(save_path) as lock:
        cache = read_cache(path, made_by) or empty_cache(made_by)
        if cache["batches_done"] < stop:
            lock.keep()  # this run writes into the folder from here on
            remove_partial_writes(save_path)
            if shared is None:
                synthesise.fill(path, cache, stop)
            else:
                cache = shared_set(Path(shared), made_by, stop, synthesise)
                save_checkpoint(path, cache)
    return Split(cache["state_dict"]["images"], cache["state_dict"]["labels"])


class Synthesis(NamedTuple):
    """What synthesising batches needs besides the cache: the frozen teacher, the recipe, the
    device, the log and (mean, std, classes, size) of the data set."""
    teacher: torch.nn.Module
    recipe: Recipe
    device: object
    log: object
    data: tuple

    def fill(self, path, cache, stop):
        """Synthesise the missing batches up to `stop` into `cache`, saved to `path` after each."""
        recipe = self.recipe
        self.log.info(f"Synthesising {recipe.images} images from the teacher (DeepInversion): "
                      f"batches {cache['batches_done'] + 1} to {stop} of {recipe.batches}, "
                      f"{recipe.iterations} iterations each; kept in {path}")
        for batch in range(cache["batches_done"], stop):
            add_batch(cache, self.teacher, recipe, batch, self.device, self.log, self.data)
            save_checkpoint(path, cache)


def shared_set(path, made_by, stop, synthesise):
    """The cache at the shared `path`, completed up to `stop` batches by this run unless another
    run of the same set holds its lock (then this one waits and reads what that one made)."""
    path.parent.mkdir(exist_ok=True)  # shareable_path made it; a caller that gives `shared` may not
    note = lambda pid: synthesise.log.info(f"Waiting for pid {pid}, which synthesises this set in {path}")
    with waiting_lock(lock_path(path), on_wait=note):
        cache = read_cache(path, made_by) or empty_cache(made_by)
        if cache["batches_done"] < stop:
            for leftover in path.parent.glob(f".{path.name}.*.tmp"):  # a killed write of this file
                leftover.unlink(missing_ok=True)
            synthesise.fill(path, cache, stop)
        else:
            synthesise.log.info(f"Synthetic set read from {path}, shared by the students of this "
                                "teacher with this recipe and seed")
    return cache


def lock_path(path):
    """The file whose flock says who is making the shared set `path`."""
    return path.with_name(path.name + ".lock")


def shared_cache_path(teacher_resume, made_by):
    """Where the students of one teacher checkpoint share a set: beside the checkpoint, named by a
    digest of everything that decides the set (recipe, seed, data set, the teacher's SHA-256)."""
    digest = hashlib.sha256(json.dumps(made_by, sort_keys=True).encode()).hexdigest()[:16]
    return Path(teacher_resume).resolve().parent / SHARED_FOLDER / f"{digest}.pt"


def add_batch(cache, teacher, recipe, batch, device, log, data):
    mean, std, classes, size = data
    start = batch * recipe.batch
    count = min(recipe.batch, recipe.images - start)
    targets = target_classes(start, count, classes)
    started = time.time()
    with tqdm(total=recipe.iterations, desc=f"synthesis {batch + 1}/{recipe.batches}", leave=False,
              dynamic_ncols=True, disable=None) as bar:
        x, stats = synthesize_batch(teacher, recipe, targets, (count, len(mean), size, size),
                                    batch_generator(recipe.seed, batch), pixel_bounds(mean, std, device),
                                    bar)
    held = cache["state_dict"]
    held["images"] = torch.cat([held["images"].view(-1, len(mean), size, size), to_uint8(x, mean, std)])
    held["labels"] = torch.cat([held["labels"], targets])
    cache["batches_done"] = batch + 1
    log.info(f"- Synthesis batch {batch + 1}/{recipe.batches}: {count} images in "
             f"{time.time() - started:.1f} s; BN statistic loss {stats['bn_start']:.3f} -> "
             f"{stats['bn']:.3f}, teacher CE {stats['ce']:.3f}, teacher agrees with the target "
             f"class on {stats['agree']:.1f}%")


# ----------------------------------------------------------------------------- the method
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
    Key("synthesis_shared", FLAG, 0, "1: make the set once beside the teacher's checkpoint, for "
        "every student of that teacher with this recipe and seed (answer-time defences all invert "
        "the same network); 0: in the run folder alone"),
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
        raise ConfigError(f"{params.source}: deepinversion needs a teacher with batch-norm layers; "
                          f"{params.teacher_model} has none")
    recipe, spec = recipe_of(params), DATASETS[params.dataset]
    if spec.mean is None:
        raise ConfigError(f"{params.source}: data set {params.dataset!r} measures its mean and std on "
                          "the real training split, which deepinversion must not read; give them "
                          "as constants in its DatasetSpec")
    identity = made_by(params)
    if not world.is_main:
        return finished_split(Path(save_path) / CACHE_NAME, identity, recipe)
    device = next(teacher.parameters()).device
    shared = (shareable_path(params, {**recipe._asdict(), **identity}, log)
              if params.synthesis_shared else None)
    return synthetic_set(teacher, recipe, identity, save_path, device, log, spec.mean, spec.std,
                         spec.num_classes, spec.input_size, shared=shared)


def shareable_path(params, made_by, log):
    """The shared file of this set, its folder and lock file made; None (with a warning) where the
    teacher's folder takes no files: the run then synthesises its own."""
    path = shared_cache_path(params.teacher_resume, made_by)
    try:
        path.parent.mkdir(exist_ok=True)
        os.close(os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as error:
        log.warning(f"warning: synthesis_shared: {path.parent} takes no files ({error.strerror}); "
                    "this run synthesises its own set")
        return None
    return path


def work(params, epochs, macs):
    """Multiply-adds of a run: the synthesis (each image's iterations through the teacher, forward
    and backward) and the epochs on the synthetic set (the student's step, the teacher's answer)."""
    teacher, student = macs(params.teacher_model), macs(params.model_name)
    synthesis = params.synthesis_images * params.synthesis_iterations * 3 * teacher
    return synthesis + epochs * params.synthesis_images * (3 * student + teacher)


def check(values):
    if values["synthesis_images"] < values["batch_size"]:
        return [f"synthesis_images = {values['synthesis_images']} is smaller than batch_size "
                f"= {values['batch_size']}: the student would not have one batch"]
    return []


def made_split(folder):
    """The synthetic set a finished run of this method trained on (for reproduce.py's figure)."""
    path = Path(folder) / CACHE_NAME
    if not path.exists():
        return None
    held = load_checkpoint(path)["state_dict"]
    return Split(held["images"], held["labels"])


register(Method(
    name="deepinversion", script="kd", build=build,
    # the synthesis reads the teacher's batch-norm statistics and input gradients: white-box;
    # the distillation reads its outputs through the run's defence
    **{**STUDENT, "access": Access.WEIGHTS},
    summary="data-free distillation: kd on images synthesised from the teacher (DeepInversion)",
    keys=(TEMPERATURE, *TEACHER_KEYS, ALPHA, *KEYS),
    terms=("ce", "kl"),
    log_lines=(("loss", "Train loss"), ("ce", "Train CE loss"), ("kl", "Train KD (KL) loss")),
    check=check, train_split=synthetic_split, work=work, rank=30, defence_after="alpha", setting=distillation_setting,
    temperature=lambda params: params.temperature, made_split=made_split))
