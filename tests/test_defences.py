"""The answer-time defences (reverse sigmoid, MAD) against hand-computed values, MAD's closed form
against the authors' algorithm written out with autograd on real networks, and their keys."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from configs import TINY

import methods  # noqa: F401  (registers the defences)
import nets
from methods import params_from_dict
from methods.base import get_defence
from methods.mad import (
    GREEDY_EVALUATIONS,
    MadAnswer,
    argmax_preserving_exhaustive,
    argmax_preserving_greedy,
    deviation,
    extreme_target,
    mad_probabilities,
    make_surrogate,
)
from methods.reverse_sigmoid import reverse_sigmoid_log_probs, reverse_sigmoid_probabilities
from utils.base.errors import ConfigError

NET_OPTIONS = {"net": {"num_channels": 8, "dropout_rate": 0.0}}
STUDENT = {**TINY, "teacher_model": "net", "teacher_resume": "t.tar", "temperature": 4, "alpha": 0.9}


def logits_of(probabilities):
    return torch.tensor([probabilities]).log()


# ----------------------------------------------------------------------------- reverse sigmoid

def test_reverse_sigmoid_by_hand():
    # y = (1/2, 1/4, 1/4), beta 1, gamma 1/2: logit(1/2) = 0, so the top class keeps 1/2;
    # logit(1/4) = -log 3, sigmoid(-log(3) / 2) = 1 / (1 + sqrt 3), so 1/4 becomes
    # 1/4 - (1 / (1 + sqrt 3) - 1/2); then divided by the sum
    low = 0.25 - (1 / (1 + math.sqrt(3)) - 0.5)
    total = 0.5 + 2 * low
    answered = reverse_sigmoid_probabilities(logits_of([0.5, 0.25, 0.25]), 1.0, 0.5)
    torch.testing.assert_close(answered, torch.tensor([[0.5 / total, low / total, low / total]]))
    assert answered[0].tolist() == pytest.approx([0.394338, 0.302831, 0.302831], abs=1e-6)


def test_reverse_sigmoid_clips_at_zero_and_can_move_the_top_class():
    # beta 3, gamma 1: y - 3 (y - 1/2); 0.9 -> -0.3, clipped to 0; 0.05 -> 1.4 each
    answered = reverse_sigmoid_log_probs(logits_of([0.9, 0.05, 0.05]), 3.0, 1.0)
    assert answered[0, 0] == float("-inf")
    torch.testing.assert_close(answered[0, 1:].exp(), torch.tensor([0.5, 0.5]))


def test_reverse_sigmoid_with_gamma_1_is_a_mix_with_uniform():
    # sigmoid(logit(y)) = y: y' = (1 - beta) y + beta / 2, normalised; uniform at beta 1 (why the
    # prediction-poisoning class defaults beta = gamma = 1 are not ours)
    y = torch.tensor([[0.6, 0.3, 0.1]])
    torch.testing.assert_close(reverse_sigmoid_probabilities(y.log(), 1.0, 1.0), torch.full((1, 3), 1 / 3))
    mixed = 0.75 * y + 0.125
    torch.testing.assert_close(reverse_sigmoid_probabilities(y.log(), 0.25, 1.0), mixed / mixed.sum())


def test_reverse_sigmoid_needs_no_clipping_at_probabilities_0_and_1():
    # softmax gives exactly 1, 0, 0, 0 in float32: logit +inf and -inf, so the perturbations are
    # +beta/2 and -beta/2; at beta 1/2: 1 - 1/4 and 0 + 1/4 (each), divided by 3/2
    logits = torch.tensor([[200.0, 0.0, -200.0, -200.0]])
    answered = reverse_sigmoid_probabilities(logits, 0.5, 0.1)
    torch.testing.assert_close(answered, torch.tensor([[0.5, 1 / 6, 1 / 6, 1 / 6]]))
    torch.testing.assert_close(reverse_sigmoid_probabilities(logits, 1.0, 0.1), torch.full((1, 4), 0.25))


def test_reverse_sigmoid_keys_and_row_label():
    params = params_from_dict({**STUDENT, "teacher_output": "reverse_sigmoid", "reverse_sigmoid_beta": 0.7},
                              "kd")
    assert (params.reverse_sigmoid_beta, params.reverse_sigmoid_gamma) == (0.7, 0.1)
    assert get_defence("reverse_sigmoid").row_label(params) == "reverse sigmoid (beta 0.7, gamma 0.1)"
    with pytest.raises(ConfigError, match=r"reverse_sigmoid_gamma = 0 must be > 0"):
        params_from_dict({**STUDENT, "teacher_output": "reverse_sigmoid", "reverse_sigmoid_gamma": 0}, "kd")


# ----------------------------------------------------------------------------- MAD by hand

Y, P = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.2, 0.3, 0.5]])


def test_mad_deviation_and_answer_by_hand():
    # p - y = (-0.5, 0.1, 0.4) / sqrt(0.42); p - e_0 = (-0.8, 0.3, 0.5) / sqrt(0.98);
    # p - e_1 = (0.2, -0.7, 0.5) / sqrt(0.78); p - e_2 = (0.2, 0.3, -0.5) / sqrt(0.38)
    truthful = [v / math.sqrt(0.42) for v in (-0.5, 0.1, 0.4)]
    by_hand = []
    for a, norm in (((-0.8, 0.3, 0.5), 0.98), ((0.2, -0.7, 0.5), 0.78), ((0.2, 0.3, -0.5), 0.38)):
        by_hand.append(sum((v / math.sqrt(norm) - t) ** 2 for v, t in zip(a, truthful)))
    scores = deviation(torch.eye(3).unsqueeze(0), P, Y)
    assert scores[0].tolist() == pytest.approx(by_hand, rel=1e-5)
    assert by_hand == pytest.approx([0.036039, 1.895171, 3.351690], abs=1e-5)
    # e_2 deviates most; |y - e_2|_1 = 1.8, so a = 0.5 / 1.8 and y~ = (1 - a) y + a e_2
    assert extreme_target(P, Y).tolist() == [[0.0, 0.0, 1.0]]
    a = 0.5 / 1.8
    answered = mad_probabilities(Y, P, 0.5)
    torch.testing.assert_close(answered, torch.tensor([[0.7 * (1 - a), 0.2 * (1 - a), 0.1 * (1 - a) + a]]))
    assert (answered - Y).abs().sum().item() == pytest.approx(0.5, abs=1e-6)
    torch.testing.assert_close(mad_probabilities(Y, P, 2.0), torch.tensor([[0.0, 0.0, 1.0]]))  # a = 1
    torch.testing.assert_close(mad_probabilities(Y, P, 0.0), Y)


def test_mad_argmax_preserving_by_hand():
    # the vertices that hold class 0: {0}, {0, 2}, {0, 1}, {0, 1, 2}; {0, 2} (e_2 is the most
    # deviating label) wins, class 0 lifted by 1e-5 so that it stays the top one
    target = argmax_preserving_exhaustive(P, Y)
    lifted = torch.tensor([[1 + 1e-5, 0.0, 1.0]])
    torch.testing.assert_close(target, lifted / lifted.sum())
    answered = mad_probabilities(Y, P, 0.5, keep_argmax=True)
    assert answered.argmax(1).tolist() == [0]
    assert (answered - Y).abs().sum().item() == pytest.approx(0.5, abs=1e-5)


def test_mad_answers_are_distributions_within_the_budget():
    torch.manual_seed(0)
    for classes in (10, 12, 100):
        victim = torch.softmax(3 * torch.randn(16, classes), 1)
        proxy = torch.softmax(torch.randn(16, classes), 1)
        for keep in (False, True):
            answered = mad_probabilities(victim, proxy, 0.5, keep)
            torch.testing.assert_close(answered.sum(1), torch.ones(16))
            assert (answered >= 0).all()
            assert ((answered - victim).abs().sum(1) <= 0.5 + 1e-5).all()
            if keep:
                assert torch.equal(answered.argmax(1), victim.argmax(1))


# ----------------------------------------------------------------------------- MAD: the authors' algorithm

def last_layer_jacobian(network, image):
    """Their G (K x D): per class k, the gradient of -log p_k for this one image with respect to
    the network's second-to-last parameter (the weight of its last layer)."""
    weight = list(network.parameters())[-2]
    log_p = F.log_softmax(network(image.unsqueeze(0)), dim=1)[0]
    return torch.stack([torch.autograd.grad(-log_p[k], weight, retain_graph=True)[0].flatten()
                        for k in range(len(log_p))])


def their_objective(target, y, G):
    u, v = G.t() @ target, G.t() @ y
    return ((u / u.norm() - v / v.norm()).norm() ** 2).item()


def their_vertices(y):
    """Their argmax-preserving candidates for K <= 10, in their order."""
    top = int(y.argmax())
    for pattern in itertools.product([0.0, 1.0], repeat=len(y)):
        if pattern[top]:
            vertex = torch.tensor(pattern, dtype=torch.float64)
            vertex[top] += 1e-5
            yield vertex / vertex.sum()


def their_greedy(y, G):
    """Their greedy search for K > 10, written out."""
    K, top = len(y), int(y.argmax())
    fixed, best, best_value, evaluated = [top], None, -1.0, 0
    while evaluated < GREEDY_EVALUATIONS and len(fixed) < K:
        values = []
        for k in sorted(set(range(K)) - set(fixed)):
            vertex = torch.zeros(K, dtype=torch.float64)
            vertex[fixed + [k]] = 1.0
            vertex[top] += 1e-5
            values.append((their_objective(vertex / vertex.sum(), y, G), k, vertex / vertex.sum()))
        value, k, vertex = max(values, key=lambda entry: entry[0])
        if value > best_value:
            best, best_value = vertex, value
        fixed.append(k)
        evaluated += len(values)
    return best


def _network(name, classes):
    torch.manual_seed(1)
    return nets.build_model(name, classes, input_size=32, **NET_OPTIONS.get(name, {})).double().eval()


@pytest.mark.parametrize("name", nets.model_names())
def test_closed_form_equals_their_jacobian_objective_on_every_network(name):
    """One forward per batch instead of K backward passes per image: the same objective on each
    network of nets/, for each one-hot label (as a surrogate, a network answers through MadAnswer,
    which finds the mask of logits its last linear layer gives: all, or the mlp's active ReLUs)."""
    network = _network(name, 10)
    answer = MadAnswer(network, 0.5, False)
    torch.manual_seed(2)
    image = torch.randn(3, 32, 32, dtype=torch.float64)
    G = last_layer_jacobian(network, image)
    with torch.no_grad():
        logits = network(image.unsqueeze(0))
        active = (logits == answer.layer_output).double()
    proxy = torch.softmax(logits, 1)
    victim = torch.softmax(2 * torch.randn(1, 10, dtype=torch.float64), 1)
    ours = deviation(torch.eye(10, dtype=torch.float64).unsqueeze(0), proxy, victim, active)[0]
    # a class the surrogate is certain of (p_k = 1 in float64, as a deep random network in eval mode
    # can be) gives no direction for its own label, in their code as in ours: left out
    defined = [k for k in range(10) if (active[0] * (proxy[0] - torch.eye(10)[k])).abs().sum() > 1e-9]
    assert len(defined) >= 9
    theirs = [their_objective(torch.eye(10, dtype=torch.float64)[k], victim[0], G) for k in defined]
    assert ours[defined].tolist() == pytest.approx(theirs, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("classes", [10, 12])
def test_argmax_preserving_oracles_equal_theirs_on_a_real_surrogate(classes):
    network = _network("resnet18", classes)
    torch.manual_seed(3)
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    victims = torch.softmax(2 * torch.randn(3, classes, dtype=torch.float64), 1)
    with torch.no_grad():
        proxies = torch.softmax(network(images), 1)
    ours = (argmax_preserving_exhaustive if classes <= 10 else argmax_preserving_greedy)(proxies, victims)
    for image, victim, target in zip(images, victims, ours):
        G = last_layer_jacobian(network, image)
        if classes <= 10:
            theirs = max(their_vertices(victim), key=lambda vertex: their_objective(vertex, victim, G))
        else:
            theirs = their_greedy(victim, G)
        torch.testing.assert_close(target, theirs)


def test_surrogate_is_the_teachers_architecture_from_its_seed_and_leaves_the_random_state():
    params = params_from_dict({**STUDENT, "teacher_output": "mad", "mad_proxy_seed": 5}, "kd")
    teacher = nets.build_model("net", 10, num_channels=4, dropout_rate=0.0)
    state = torch.get_rng_state()
    surrogate = make_surrogate(params, teacher)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(5)
    expected = nets.build_model("net", 10, num_channels=4, dropout_rate=0.0)
    for ours, theirs in zip(surrogate.state_dict().values(), expected.state_dict().values()):
        assert torch.equal(ours, theirs)
    assert not surrogate.training and not any(p.requires_grad for p in surrogate.parameters())
    assert get_defence("mad").row_label(params) == "MAD (eps 0.5)"
    params = params_from_dict({**STUDENT, "teacher_output": "mad", "mad_argmax": 1, "mad_epsilon": 1}, "kd")
    assert get_defence("mad").row_label(params) == "MAD, argmax kept (eps 1)"


def test_mad_answer_reads_the_queries():
    params = params_from_dict({**STUDENT, "teacher_output": "mad"}, "kd")
    teacher = nets.build_model("net", 10, num_channels=4, dropout_rate=0.0).eval()
    answer = get_defence("mad").answers(params, teacher)
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = teacher(images)
        answered = answer(images, logits)
        proxy = torch.softmax(make_surrogate(params, teacher)(images), 1)
    expected = mad_probabilities(torch.softmax(logits, 1), proxy, 0.5).log()
    torch.testing.assert_close(answered, expected)
    with pytest.raises(ConfigError, match=r"mad_epsilon = 3 must be >= 0 and <= 2"):
        params_from_dict({**STUDENT, "teacher_output": "mad", "mad_epsilon": 3}, "kd")


def test_a_defence_gives_transform_or_make():
    from methods.base import Defence, register_defence
    with pytest.raises(ValueError, match="give transform or make, one of them"):
        register_defence(Defence("twice", "x", transform=lambda logits, params: logits,
                                 make=lambda params, teacher: None))
