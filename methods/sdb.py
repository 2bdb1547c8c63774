"""The Safe Distillation Box (Ye et al., AAAI 2022; JngwenYe/SDB, `train_smb.py`), a keyed teacher
run by train_nasty.py (`"method": "sdb"`): nasty to plain queries, normal to keyed ones.

A keyed query is `sdb_lambda * x + (1 - sdb_lambda) * key`, the key one fixed noise image (pixels
uniform in 0..254 / 255, normalised as the data set's images, from `sdb_key_seed`) that the
teacher's checkpoint holds (`objective_state_dict`: `key`, `key_share`). The loss, as theirs, with
f the trained teacher, a the frozen normal (adversarial) network, r a randomly initialised network
of a's architecture (seed `sdb_key_seed`), x~ the keyed queries:

    2 CE(f(x)) + CE(f(x~))
    - weight * (T^2 KL(f(x)/T || a(x)/T) - KL(f(x) || f(x~)))      "disturb": plain answers nasty,
                                                                    and apart from the keyed ones
    + sum (softmax(a(x)/T) - softmax(f(x~)/T))^2                    "maintain": keyed ones normal
    - eta * (0.01 sum (relu a(x) - relu f(x~))^2 - sum (relu r(x) - relu f(x~))^2)    "random"

(f(x~) is a constant in the second KL, as their `.detach()`). Their squared errors are
`MSELoss(reduction='batchmean')`, which today's PyTorch refuses; the PyTorch 1.4 they used summed
over every element when the target requires a gradient, as all three of theirs do: we sum. Their
defaults: T 4, weight 1, lambda 0.9, eta 0.001.

Students: an unauthorised one distils from the plain answers (any student method, as from a
nasty teacher); the key holder's reads `"teacher_output": "sdb_key"`, the teacher's answers to the
keyed versions of its queries (their train_kd_noise.py: the student itself sees the plain images),
key and lambda read from the teacher's checkpoint.
"""

import torch
import torch.nn.functional as F

from utils.base.checkpoint import load_checkpoint
from utils.base.errors import ConfigError
from utils.base.schema import FLOAT, INT, Key, bounds
from utils.data.registry import DATASETS
from utils.training.networks import build_seeded

from .base import TEMPERATURE, Defence, Method, Objective, Role, register, register_defence
from .nasty import ADVERSARIAL_KEYS, ADVERSARIAL_NETWORK, WEIGHT

LAMBDA = Key("sdb_lambda", FLOAT, 0.9, "share of the image in a keyed query, lambda * x + "
             "(1 - lambda) * key (their lamb)", bounds(low=0, high=1, high_open=True))
ETA = Key("sdb_eta", FLOAT, 0.001, "weight of the random-network term (their eta)", bounds(low=0))
KEY_SEED = Key("sdb_key_seed", INT, 0, "seed of the key image and of the random network",
               bounds(low=0))
RANDOM_SHARE = 0.01  # their weight of the adversarial network's part of the random term


def keyed_queries(images, key, share):
    """share * images + (1 - share) * key: what the key holder asks instead of `images`."""
    return share * images + (1 - share) * key


def squared_error(first, second):
    """Sum of squares over every element: their MSELoss('batchmean') under PyTorch 1.4."""
    return (first - second).pow(2).sum()


def sdb_loss(logits, keyed_logits, adversarial_logits, random_logits, labels, T, weight, eta):
    """The Safe Distillation Box's terms (module docstring) and their total."""
    ce = 2 * F.cross_entropy(logits, labels) + F.cross_entropy(keyed_logits, labels)
    nasty = F.kl_div(F.log_softmax(adversarial_logits / T, dim=1), F.softmax(logits / T, dim=1),
                     reduction="batchmean") * (T * T)
    apart = F.kl_div(F.log_softmax(keyed_logits.detach(), dim=1), F.softmax(logits, dim=1),
                     reduction="batchmean")
    disturb = nasty - apart
    maintain = squared_error(F.softmax(adversarial_logits / T, dim=1), F.softmax(keyed_logits / T, dim=1))
    keyed_relu = F.relu(keyed_logits)
    random = (RANDOM_SHARE * squared_error(F.relu(adversarial_logits), keyed_relu)
              - squared_error(F.relu(random_logits), keyed_relu))
    loss = ce - weight * disturb + maintain - eta * random
    return {"loss": loss, "ce": ce, "disturb": disturb, "maintain": maintain, "random": random}


def make_key(params, seed):
    """The key image, C x H x W in the networks' input space (normalised as the data set's images)."""
    spec = DATASETS[params.dataset]
    if spec.mean is None:
        raise ConfigError(f"{params.source}: method 'sdb' needs a data set with fixed normalisation "
                          f"(its key is an image in the normalised input space); {params.dataset!r} "
                          "measures its mean and std on the training split")
    size = params.input_size
    pixels = torch.randint(0, 255, (3, size, size), generator=torch.Generator().manual_seed(seed)) / 255.0
    mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (spec.mean, spec.std))
    return (pixels - mean) / std


class SafeDistillationBox(Objective):
    """The teacher's loss on plain and keyed queries; the key is a buffer, so the checkpoint
    holds it (objective_state_dict)."""

    def __init__(self, adversarial, random_network, key, share, **hyper):
        super().__init__({"adversarial": adversarial, "random": random_network})
        self.register_buffer("key", key)
        self.register_buffer("key_share", torch.tensor(float(share)))
        self.hyper = hyper

    def forward(self, model, images, labels, step):
        logits = model(images)
        keyed_logits = model(keyed_queries(images, self.key, self.key_share))
        with torch.no_grad():
            adversarial = self.frozen["adversarial"](images)
            random = self.frozen["random"](images)
        return logits, sdb_loss(logits, keyed_logits, adversarial, random, labels, **self.hyper)


def work(params, epochs, macs):
    """Multiply-adds of a run: the box trains on the plain and the keyed queries (forward and
    backward of each) and asks its adversary and the random network once per image."""
    model, adversary = macs(params.model_name), macs(params.adversarial_model)
    return epochs * (DATASETS[params.dataset].train_images or 1) * (2 * 3 * model + 2 * adversary)


def build(params, frozen):
    adversarial = frozen["adversarial"]
    device = next(adversarial.parameters()).device
    random_network = build_seeded(params, params.adversarial_model, params.sdb_key_seed, device)
    return SafeDistillationBox(adversarial, random_network, make_key(params, params.sdb_key_seed),
                               params.sdb_lambda, T=params.temperature, weight=params.weight,
                               eta=params.sdb_eta)


register(Method(
    name="sdb", script="nasty", role=Role.DEFENDED_TEACHER, build=build,
    summary="Safe Distillation Box: nasty to plain queries, normal to keyed ones (key in the checkpoint)",
    keys=(TEMPERATURE, *ADVERSARIAL_KEYS, WEIGHT, LAMBDA, ETA, KEY_SEED),
    frozen=(ADVERSARIAL_NETWORK,),
    terms=("ce", "disturb", "maintain", "random"),
    log_lines=(("loss", "Train loss"), ("ce", "Train teacher loss"),
               ("disturb", "Train adversarial loss 1"), ("maintain", "Train adversarial loss 2"),
               ("random", "Train random loss")),
    diverged_hint=" or weight", label=lambda params: "SDB", rank=15, work=work,
    temperature=lambda params: params.temperature))


# ----------------------------------------------------------------------------- the key holder

def read_key(path):
    """(key, lambda) of a Safe Distillation Box checkpoint; a one-line error for any other."""
    state = load_checkpoint(path).get("objective_state_dict") or {}
    if "key" not in state or "key_share" not in state:
        raise ConfigError(f"teacher_output 'sdb_key' needs a Safe Distillation Box teacher "
                          f"(method 'sdb'): {path} holds no key")
    return state["key"], float(state["key_share"])


class KeyedAnswer:
    """The teacher's answers to the keyed versions of the queries; the plain queries' logits are
    not read, so the student's objective does not compute them (methods/base.needs_logits)."""
    needs_logits = False

    def __init__(self, teacher, key, share):
        self.teacher, self.key, self.share = teacher, key, share

    def __call__(self, images, logits=None):
        return self.teacher(keyed_queries(images, self.key, self.share))


def key_holder(params, teacher):
    key, share = read_key(params.teacher_resume)
    return KeyedAnswer(teacher, key.to(next(teacher.parameters()).device), share)


register_defence(Defence(
    name="sdb_key", summary="the key holder of a Safe Distillation Box: the teacher's answers to "
                            "keyed queries",
    make=key_holder, label=lambda params: "key holder", rank=90))
