"""The one place networks are built from params: the trained one, frozen teachers and adversaries,
and the networks reproduce.py's figures compare.

    model = build_network(params, params.model_name, device)
    teacher = load_frozen(params, "resnet18", "run/best_model.tar", device, role="teacher")
"""
import torch

import nets
from utils.base.checkpoint import load_weights
from utils.training.speed import maybe_compile, to_layout


def build_network(params, name, device="cpu"):
    """Network `name` for the data set of `params` (with the options it reads from them), on
    `device` in the memory layout `params` asks for."""
    model = nets.build_model(name, params.num_classes, input_size=params.input_size,
                             **params.model_options(name))
    return to_layout(model.to(device), bool(params.channels_last))


def build_seeded(params, name, seed, device="cpu"):
    """Network `name` randomly initialised from `seed` (a defence's surrogate or random network),
    frozen; the global random state is left as it was, so the trained network's is unchanged."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        network = build_network(params, name, device)
    return freeze(network)


def freeze(network, compile_it=False):
    """Eval mode, no gradients, compiled when asked: how teachers and adversaries run."""
    network.eval()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return maybe_compile(network, compile_it)


def load_frozen(params, name, path, device="cpu", role="network", compile_it=False):
    """Network `name` with the weights of checkpoint `path`, frozen."""
    network = build_network(params, name, device)
    load_weights(network, path, map_location=device,
                 what=f"{role} {name} with {params.num_classes} classes")
    return freeze(network, compile_it)


def make_optimizer(model_name, parameters, lr):
    """The original's choice, by the network's registry entry: Adam for `net` and `mlp`, else SGD
    with momentum 0.9 and weight decay 5e-4. `parameters`: the model's, then an objective's own."""
    if nets.optimizer_of(model_name) == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    return torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=5e-4)
