"""MAD, maximising angular deviation (Orekondy et al., "Prediction Poisoning: Towards Defenses
Against DNN Model Stealing Attacks", ICLR 2020), an answer-time defence of a normal teacher:
`"teacher_output": "mad"`. Per query, with y the teacher's probabilities:

1. G, the gradients of a surrogate network's log-likelihoods -log p_k (k = 1..K) with respect to
   its last layer's weight: the attacker's update direction for each label it could be handed;
2. the target y* among the one-hot labels (their "extreme" oracle) whose update G^T y* points
   furthest from the truthful one G^T y: max || G^T y*/|G^T y*| - G^T y/|G^T y| ||^2 (their
   objmax, the setting of their experiments); with `mad_argmax` 1, among the vertices of the
   simplex that keep y's top class (their argmax-preserving oracle: every subset of classes that
   holds it, uniform over the subset, the top one raised by 1e-5; exhaustive up to 10 classes,
   above that their greedy search over 1024 candidates);
3. y~ = (1 - a) y + a y*, with a = min(1, epsilon / |y - y*|_1): the largest step in the L1 ball
   of radius `mad_epsilon` (their closed-form line search).

The student reads log y~ (-inf where y~ is 0) at its own temperature.

The surrogate, as theirs: the teacher's architecture, randomly initialised (their "scratch"
proxy: the defender does not know the attacker's network, which also starts from scratch), from
the seed `mad_proxy_seed`, frozen in eval mode. Theirs has also run one epoch at learning rate 0,
which only re-estimates batch-norm statistics; ours keeps the initial ones (a deviation).

Every network of nets/ ends in a linear layer a = W h + b (mobilenetv2: a 1x1 convolution of a
pooled map), its logits z = a (the mlp: z = relu(a), as the original's). -log p_k has gradient
(m * (p - e_k)) h^T with respect to W, m the 0/1 mask of the logits that are the layer's output
(all of them, or the ReLU's active ones), so G^T c = (m * (p - c)) h^T for any distribution c, and
the objective is
|| unit(m * (p - y*)) - unit(m * (p - y)) ||^2: h cancels, and one forward of the surrogate per
batch is the whole cost (their code takes K backward passes per image; tests/test_defences.py
checks that the two agree on every network of nets/).
"""
import itertools

import torch

from utils.base.errors import ConfigError
from utils.base.schema import FLAG, FLOAT, INT, Key, bounds
from utils.training.networks import build_seeded

from .base import Defence, register_defence

EPSILON = Key("mad_epsilon", FLOAT, 0.5, "teacher_output 'mad': the L1 budget of the perturbation "
              "of the probabilities (their experiments: 0.5)", bounds(low=0, high=2))
ARGMAX = Key("mad_argmax", FLAG, 0, "teacher_output 'mad': 1 keeps the top class (their "
             "argmax-preserving variant)")
PROXY_SEED = Key("mad_proxy_seed", INT, 0, "teacher_output 'mad': seed of the randomly "
                 "initialised surrogate (the teacher's architecture)", bounds(low=0))
UPWEIGHT = 1e-5      # their lift of the top class in an argmax-preserving target
GREEDY_EVALUATIONS = 1024  # their budget of candidate targets above EXHAUSTIVE_UP_TO classes
EXHAUSTIVE_UP_TO = 10


def unit_rows(vectors):
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def deviation(targets, proxy, victim, active=None):
    """MAD's objective for each candidate target: || unit(m (p - c)) - unit(m (p - y)) ||^2.
    targets (B, C, K), proxy p, victim y and the mask m of active logits (B, K) -> (B, C)."""
    active = torch.ones_like(proxy) if active is None else active
    truthful = unit_rows(active * (proxy - victim)).unsqueeze(1)
    return (unit_rows(active.unsqueeze(1) * (proxy.unsqueeze(1) - targets)) - truthful).pow(2).sum(-1)


def vertex_targets(members, top):
    """Uniform over each candidate's classes (`members`, 0/1 of shape (B, C, K)), the top class
    raised by UPWEIGHT first."""
    lifted = members + UPWEIGHT * torch.nn.functional.one_hot(top, members.shape[-1]).unsqueeze(1)
    return lifted / lifted.sum(-1, keepdim=True)


def argmax_preserving_exhaustive(proxy, victim, active=None):
    """Their exhaustive oracle: every subset of classes holding y's top class, in their order."""
    K = victim.shape[1]
    patterns = torch.tensor(list(itertools.product([0.0, 1.0], repeat=K)), device=victim.device)
    top = victim.argmax(1)
    members = torch.stack([patterns[patterns[:, k] > 0] for k in range(K)])[top]  # (B, 2^(K-1), K)
    targets = vertex_targets(members.to(victim.dtype), top)
    scores = deviation(targets, proxy, victim, active)
    return targets[torch.arange(len(victim)), scores.argmax(1)]


def argmax_preserving_greedy(proxy, victim, active=None):
    """Their greedy oracle for many classes: from {top class}, add the class whose target scores
    highest, until GREEDY_EVALUATIONS candidates were scored; the best candidate seen wins."""
    B, K = victim.shape
    top = victim.argmax(1)
    fixed = torch.nn.functional.one_hot(top, K).to(victim.dtype)
    eye = torch.eye(K, dtype=victim.dtype, device=victim.device)
    best_score = torch.full((B,), -1.0, dtype=victim.dtype, device=victim.device)
    best = vertex_targets(fixed.unsqueeze(1), top)[:, 0]
    evaluated, size = 0, 1
    while evaluated < GREEDY_EVALUATIONS and size < K:
        members = (fixed.unsqueeze(1) + eye).clamp(max=1)              # (B, K, K): add class k
        targets = vertex_targets(members, top)
        scores = deviation(targets, proxy, victim, active).masked_fill(fixed > 0, float("-inf"))
        score, added = scores.max(1)
        best = torch.where((score > best_score).unsqueeze(1), targets[torch.arange(B), added], best)
        best_score = torch.maximum(best_score, score)
        evaluated, size = evaluated + K - size, size + 1
        fixed = fixed.scatter(1, added.unsqueeze(1), 1.0)
    return best


def extreme_target(proxy, victim, active=None):
    """Their 'extreme' oracle: the one-hot label of largest deviation."""
    K = victim.shape[1]
    targets = torch.eye(K, dtype=victim.dtype, device=victim.device).expand(len(victim), K, K)
    return targets[torch.arange(len(victim)), deviation(targets, proxy, victim, active).argmax(1)]


def mad_probabilities(victim, proxy, epsilon, keep_argmax=False, active=None):
    """y~ for the teacher's probabilities `victim` and the surrogate's `proxy` (B, K), whose
    logits are its last linear layer's output where `active` is 1 (None: everywhere)."""
    oracle = extreme_target
    if keep_argmax:
        exhaustive = victim.shape[1] <= EXHAUSTIVE_UP_TO
        oracle = argmax_preserving_exhaustive if exhaustive else argmax_preserving_greedy
    target = oracle(proxy, victim, active)
    step = (epsilon / ((victim - target).abs().sum(1, keepdim=True) + 1e-7)).clamp(0, 1)
    return (1 - step) * victim + step * target


class MadAnswer:
    """answer(images, teacher logits) -> log y~; holds the frozen surrogate (not a Module, so
    neither trained nor checkpointed with the student)."""

    def __init__(self, proxy, epsilon, keep_argmax):
        self.proxy, self.epsilon, self.keep_argmax = proxy, epsilon, keep_argmax
        self.layer_output = None
        last_linear(proxy).register_forward_hook(self._keep_output)

    def _keep_output(self, module, inputs, output):
        self.layer_output = output.flatten(1)  # a 1x1 convolution's (B, K, 1, 1): the logits' shape

    def __call__(self, images, logits):
        victim = torch.softmax(logits.float(), dim=1)
        proxy_logits = self.proxy(images)
        active = (proxy_logits == self.layer_output).float()  # a ReLU after it: the active ones
        proxy = torch.softmax(proxy_logits.float(), dim=1)
        answered = mad_probabilities(victim, proxy, self.epsilon, self.keep_argmax, active)
        return answered.log().to(logits.dtype)


def last_linear(network):
    """The linear layer that owns the network's last weight and bias (MAD's gradients are taken
    with respect to it: their G is of the second-to-last parameter), a Linear or a 1x1 convolution
    of a pooled map (mobilenetv2); a network that ends otherwise cannot be MAD's surrogate."""
    *_, weight, bias = network.parameters()
    for module in network.modules():
        linear = isinstance(module, torch.nn.Linear) or (
            isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1))
        if linear and module.weight is weight and module.bias is bias:
            return module
    raise ConfigError(f"MAD's surrogate {type(network).__name__} does not end in a linear layer")


def make_surrogate(params, teacher):
    """The teacher's architecture from seed mad_proxy_seed, on the teacher's device, frozen."""
    return build_seeded(params, params.teacher_model, params.mad_proxy_seed,
                        next(teacher.parameters()).device)


def make_answer(params, teacher):
    return MadAnswer(make_surrogate(params, teacher), params.mad_epsilon, bool(params.mad_argmax))


def label(params):
    kind = "MAD, argmax kept" if params.mad_argmax else "MAD"
    return f"{kind} (eps {params.mad_epsilon:g})"


register_defence(Defence(
    name="mad", summary="MAD prediction poisoning: the probabilities moved, within an L1 budget, "
                        "towards the label that turns a surrogate's gradient furthest",
    make=make_answer, label=label, keys=(EPSILON, ARGMAX, PROXY_SEED), rank=40))
