"""Intermediate features ("stage outputs") of every network, without a second forward.

Each network class names its stage submodules, shallow to deep, in a class attribute
`stages` (a class attribute is not in the state_dict, so checkpoints load unchanged).
`forward_features` runs the network's own `forward` once with forward hooks on those
submodules, so there is one forward per network to maintain:

    import nets
    model = nets.build_model("resnet18", num_classes=100, input_size=32)
    logits, feats = nets.forward_features(model, images)  # logits == model(images)
    nets.stage_names(model)                     # ('layer1', 'layer2', 'layer3', 'layer4')
    nets.stage_shapes("resnet18", 100, 32)      # [(64, 32, 32), ..., (512, 4, 4)]

Gradients flow through `feats` (an auxiliary head on a stage trains the backbone), and a
DistributedDataParallel / 1-device DataParallel / torch.compile wrapper can be passed: the
hooks go on the wrapped network's submodules, the call goes through the wrapper. A compiled
network runs eagerly for that call (compiled graphs do not see per-call hooks).

What a stage output is: the output of the named submodule, before anything the parent's
forward does to it. For `net` and `mlp` that is before the block's (functional) max-pool
and ReLU; for `preresnet*` the residual sum, before the final BN-ReLU; for `densenet*` a
dense block's concatenated maps, before the transition (compression, 2x2 pooling).

Stage outputs for one sample (C x H x W, or F features), as `stage_shapes` gives them.
`net` is shown with num_channels=32 (its stages have c, 2c, 4c channels); `net`, `mlp`
and `preresnet*` take 32x32 inputs only. `mobilenetv2`'s 1x1 stem has padding 1 (34x34).

    model(s)                                stage                         32x32 input  64x64 input
    --------------------------------------  ----------------------------  -----------  -----------
    net                                     bn1                           32x32x32     -
                                            bn2                           64x16x16     -
                                            bn3                           128x8x8      -
    mlp                                     fc1                           512          -
                                            fc2                           512          -
    preresnet20, preresnet32                layer1                        16x32x32     -
                                            layer2                        32x16x16     -
                                            layer3                        64x8x8       -
    preresnet44, preresnet56, preresnet110  layer1                        64x32x32     -
                                            layer2                        128x16x16    -
                                            layer3                        256x8x8      -
    resnet18, resnet34                      layer1                        64x32x32     64x64x64
                                            layer2                        128x16x16    128x32x32
                                            layer3                        256x8x8      256x16x16
                                            layer4                        512x4x4      512x8x8
    resnet50, resnet101, resnet152          layer1                        256x32x32    256x64x64
                                            layer2                        512x16x16    512x32x32
                                            layer3                        1024x8x8     1024x16x16
                                            layer4                        2048x4x4     2048x8x8
    resnext29                               stage_1                       256x32x32    256x64x64
                                            stage_2                       512x16x16    512x32x32
                                            stage_3                       1024x8x8     1024x16x16
    densenet121                             features.dense_block_layer_0  256x32x32    256x64x64
                                            features.dense_block_layer_1  512x16x16    512x32x32
                                            features.dense_block_layer_2  1024x8x8     1024x16x16
                                            features.dense_block3         1024x4x4     1024x8x8
    densenet161                             features.dense_block_layer_0  384x32x32    384x64x64
                                            features.dense_block_layer_1  768x16x16    768x32x32
                                            features.dense_block_layer_2  2112x8x8     2112x16x16
                                            features.dense_block3         2208x4x4     2208x8x8
    densenet169                             features.dense_block_layer_0  256x32x32    256x64x64
                                            features.dense_block_layer_1  512x16x16    512x32x32
                                            features.dense_block_layer_2  1280x8x8     1280x16x16
                                            features.dense_block3         1664x4x4     1664x8x8
    densenet201                             features.dense_block_layer_0  256x32x32    256x64x64
                                            features.dense_block_layer_1  512x16x16    512x32x32
                                            features.dense_block_layer_2  1792x8x8     1792x16x16
                                            features.dense_block3         1920x4x4     1920x8x8
    mobilenetv2                             stage1                        16x34x34     16x66x66
                                            stage2                        24x17x17     24x33x33
                                            stage3                        32x9x9       32x17x17
                                            stage4                        64x5x5       64x9x9
                                            stage5                        96x5x5       96x9x9
                                            stage6                        160x5x5      160x9x9
                                            stage7                        320x5x5      320x9x9
    shufflenetv2                            stage2                        116x16x16    116x32x32
                                            stage3                        232x8x8      232x16x16
                                            stage4                        464x4x4      464x8x8

(tests/test_features.py checks this table against `stage_shapes`.)
"""
import contextlib

import torch
import torch.nn as nn

from utils.base.errors import ConfigError, did_you_mean

from .registry import build_model


def _wrapper_chain(model):
    """[model, ..., network], through DDP / DataParallel `.module` and compile `._orig_mod`."""
    chain = [model]
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return chain
        chain.append(model)


def _check_wrappers(chain):
    """DataParallel on several devices runs replicas that share the hooks: every stage
    would fire once per device, on part of the batch; DDP has one replica per process."""
    for wrapper in chain:
        if isinstance(wrapper, nn.DataParallel) and len(wrapper.device_ids) > 1:
            raise ConfigError("stage outputs of a DataParallel network on several devices are "
                              "not supported; use DistributedDataParallel (torchrun)")


def unwrap_model(model):
    """The network inside DDP / DataParallel and torch.compile wrappers (itself when bare)."""
    return _wrapper_chain(model)[-1]


def _eager_if_compiled(chain):
    """A context that runs compiled code eagerly, when the wrapper chain involves torch.compile.

    Dynamo does not guard on the hooks of submodules (`skip_nnmodule_hook_guards`), so a
    graph compiled before would ignore hooks added for one call, or replay stale ones.
    Running this one call eagerly keeps it correct; plain calls stay compiled.
    """
    compiled = any(isinstance(getattr(m, "_orig_mod", None), nn.Module) for m in chain)
    compiled = compiled or any(getattr(m, "_compiled_call_impl", None) is not None
                               for m in chain[:-1] + list(chain[-1].modules()))
    if not compiled:
        return contextlib.nullcontext()
    if not hasattr(torch.compiler, "set_stance"):
        raise ConfigError("stage outputs of a torch.compile'd network need torch >= 2.6 "
                          f"(this is {torch.__version__}); pass the network uncompiled")
    return torch.compiler.set_stance("force_eager")


def stage_names(model):
    """The names of `model`'s stage submodules, shallow to deep (its class's `stages`)."""
    inner = unwrap_model(model)
    names = getattr(inner, "stages", None)
    kind = type(inner).__name__
    if not names:
        raise ConfigError(f"network {kind} declares no stages (a class attribute `stages` "
                          f"naming its stage submodules, shallow to deep)")
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"network {kind}: `stages` must be a tuple of submodule names, "
                          f"got {names!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"network {kind} lists a stage twice: {names!r}")
    return tuple(names)


def _stage_modules(inner, names):
    """The submodules for `names`, or a one-line ConfigError naming the first wrong one."""
    modules = []
    for name in names:
        try:
            modules.append(inner.get_submodule(name))
        except AttributeError:
            known = [n for n, _ in inner.named_modules() if n]
            raise ConfigError(f"network {type(inner).__name__} has no stage submodule {name!r}"
                              f"{did_you_mean(name, known)}") from None
    return modules


def _recorder(name, kind, outputs):
    """A forward hook keeping the output of stage `name` (and its version, see below)."""
    def hook(module, inputs, output):
        # a module that runs twice per forward (shared, or inside a loop) is no stage:
        # which call would be "the" output is ambiguous, so the name is wrong
        if name in outputs:
            raise ConfigError(f"stage {name!r} of network {kind} ran more than once in one "
                              f"forward pass: it is not a stage (wrong stage name?)")
        if not isinstance(output, torch.Tensor):
            raise ConfigError(f"stage {name!r} of network {kind} returned a "
                              f"{type(output).__name__}, not a tensor")
        outputs[name] = (output, output._version)
    return hook


def forward_features(model, x):
    """(logits, [stage outputs, shallow to deep]) from one call of `model(x)`.

    The hooks exist for this call only: they are removed afterwards, also when the
    forward raises. `model` may be wrapped (DDP, DataParallel, torch.compile); the call
    goes through the wrappers (a compiled one runs eagerly for this call, see above).
    """
    chain = _wrapper_chain(model)
    _check_wrappers(chain)
    inner = chain[-1]
    names = stage_names(inner)
    kind = type(inner).__name__
    outputs = {}
    handles = []
    try:
        for name, module in zip(names, _stage_modules(inner, names)):
            handles.append(module.register_forward_hook(_recorder(name, kind, outputs)))
        with _eager_if_compiled(chain):
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, _collected(names, kind, outputs)


def _collected(names, kind, outputs):
    """The recorded stage outputs in order, once each stage is known to be right."""
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ConfigError(f"stage {missing[0]!r} of network {kind} did not run in forward "
                          f"(wrong stage name?)")
    for name in names:
        # the parent's forward must not change a kept output in place afterwards
        # (an inplace ReLU on it would make the returned feature silently differ)
        tensor, version = outputs[name]
        if tensor._version != version:
            raise ConfigError(f"stage {name!r} of network {kind} is modified in place later "
                              f"in forward; choose a stage whose output is left alone")
    return [outputs[n][0] for n in names]


def stage_shapes(name, num_classes, input_size, **options):
    """Per-stage output shapes for one sample: (C, H, W) or (F,), for `input_size`^2 inputs.

    A dry run on the meta device: no weights are allocated, so it is cheap for every network.
    """
    with torch.device("meta"):
        model = build_model(name, num_classes, input_size=input_size, **options)
    model.eval()
    x = torch.zeros(1, 3, input_size, input_size, device="meta")
    with torch.no_grad():
        _, features = forward_features(model, x)
    return [tuple(f.shape[1:]) for f in features]
