"""A network's declared compute: the multiply-adds of one forward pass on one image, counted on
its convolutions and linear layers (what dominates a CNN's time; the rest is ignored).

    forward_macs(build_model("preresnet20", 10), (3, 32, 32))   # about 41 million

reproduce.py's scheduler reads it to tell long stages from short ones before any was timed.
"""
import torch

COUNTED = (torch.nn.Conv2d, torch.nn.Linear)


def layer_macs(module, output):
    if isinstance(module, torch.nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return output.numel() * per_output
    return output.numel() * module.in_features


def forward_macs(network, image_shape):
    """Multiply-adds of `network`'s convolutions and linear layers on one image of `image_shape`
    (channels, height, width), counted by running it once in eval mode on zeros."""
    total = [0]

    def count(module, inputs, output):
        total[0] += layer_macs(module, output)

    hooks = [m.register_forward_hook(count) for m in network.modules() if isinstance(m, COUNTED)]
    was_training = network.training
    try:
        network.eval()
        with torch.inference_mode():
            network(torch.zeros(1, *image_shape))
    finally:
        network.train(was_training)
        for hook in hooks:
            hook.remove()
    return total[0]
