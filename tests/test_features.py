"""Stage outputs (`nets.forward_features`) of every network, through hooks on its own forward."""
import re

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import nets
import nets.features
from utils.base.errors import ConfigError

NET_OPTIONS = {"net": {"num_channels": 32, "dropout_rate": 0.0}}
# batch 1 for the deepest networks keeps the file fast; eval mode does not need a batch of 2
SMALL_BATCH = {"resnet101", "resnet152", "densenet161", "densenet169", "densenet201",
               "preresnet110"}
RESNET_LIKE = ("resnet", "preresnet", "resnext", "densenet")

# Worked out from the architectures (not printed from the code), 32x32 input, per sample:
EXPECTED_32 = {
    # 3x3 stride-1 stem keeps 32x32; layer1 keeps it, layers 2-4 double C and halve H, W
    "resnet18": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)],
    # depth 20 = 6*3+2: basic blocks of 16/32/64 channels, strides 1, 2, 2
    "preresnet20": [(16, 32, 32), (32, 16, 16), (64, 8, 8)],
    # num_channels c=32: padded 3x3 convs keep the size and the stage is taken before each
    # block's 2x2 max-pool, so 32 -> 16 -> 8 as the channels go c -> 2c -> 4c
    "net": [(32, 32, 32), (64, 16, 16), (128, 8, 8)],
    # the two 512-unit hidden layers
    "mlp": [(512,), (512,)],
    # 1x1 stem with padding 1: 34x34; stride-2 3x3 convs (padding 1) give 17, 9, 5;
    # stages 5-7 have stride 1
    "mobilenetv2": [(16, 34, 34), (24, 17, 17), (32, 9, 9), (64, 5, 5), (96, 5, 5),
                    (160, 5, 5), (320, 5, 5)],
    # stride-1 stem; each stage opens with a stride-2 unit: 116/232/464 channels
    "shufflenetv2": [(116, 16, 16), (232, 8, 8), (464, 4, 4)],
    # widen factor 4: 256/512/1024 channels, strides 1, 2, 2
    "resnext29": [(256, 32, 32), (512, 16, 16), (1024, 8, 8)],
    # growth 32, blocks 6/12/24/16, stem 64: 64+6*32=256; transition halves C and H, W:
    # 128+12*32=512 @16; 256+24*32=1024 @8; 512+16*32=1024 @4
    "densenet121": [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (1024, 4, 4)],
}
EXPECTED_64 = {  # size-agnostic networks: same channels, every spatial side doubled
    "resnet18": [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8)],
    # 66 after the stem; (66+2-3)//2+1 = 33, then 17, then 9
    "mobilenetv2": [(16, 66, 66), (24, 33, 33), (32, 17, 17), (64, 9, 9), (96, 9, 9),
                    (160, 9, 9), (320, 9, 9)],
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP threads spin against other
    processes and a forward gets ~50x slower; these tests check results, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name, num_classes=10, input_size=32):
    return nets.build_model(name, num_classes, input_size=input_size, **NET_OPTIONS.get(name, {}))


def _hooks_left(model):
    """Every forward/backward hook still attached to any submodule."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
             "_backward_pre_hooks", "_forward_hooks_always_called")
    return [(n, k) for n, m in model.named_modules() for k in kinds if getattr(m, k, None)]


def _cases():
    for name in nets.model_names():
        yield name, 32
        if nets.model_input_sizes(name) is None:  # adaptive pooling: any size
            yield name, 64


@pytest.mark.slow
@pytest.mark.parametrize("name,size", list(_cases()), ids=lambda v: str(v))
def test_stage_outputs_of_every_network(name, size):
    torch.manual_seed(0)
    model = _build(name, input_size=size).eval()
    x = torch.randn(1 if name in SMALL_BATCH else 2, 3, size, size)
    keys = list(model.state_dict())
    with torch.no_grad():
        expected = model(x)
        logits, feats = nets.forward_features(model, x)
    assert torch.equal(logits, expected)
    assert list(model.state_dict()) == keys
    assert _hooks_left(model) == []

    shapes = [tuple(f.shape[1:]) for f in feats]
    assert all(f.shape[0] == x.shape[0] for f in feats)
    assert len(shapes) == len(nets.stage_names(model)) >= 1
    if name.startswith(RESNET_LIKE):
        assert len(shapes) in (3, 4)
    assert shapes == nets.stage_shapes(name, 10, size, **NET_OPTIONS.get(name, {}))
    table = EXPECTED_32 if size == 32 else EXPECTED_64
    if name in table:
        assert shapes == table[name]


def _documented_table():
    """{model name: [(stage, shape at 32, shape at 64 or None)]} from nets/features.py."""
    lines = nets.features.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("model(s)")) + 2
    table, models = {}, []
    for line in lines[start:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 4:
            models = cells.pop(0).split(", ")
        stage, at32, at64 = cells
        for model in models:
            table.setdefault(model, []).append((stage, _shape(at32), _shape(at64)))
    return table


def _shape(cell):
    return None if cell == "-" else tuple(int(v) for v in cell.split("x"))


@pytest.mark.slow
def test_documented_table_matches_every_network():
    table = _documented_table()
    assert sorted(table) == nets.model_names()
    for name, rows in table.items():
        options = NET_OPTIONS.get(name, {})
        assert tuple(r[0] for r in rows) == nets.stage_names(_meta_build(name, **options))
        assert [r[1] for r in rows] == nets.stage_shapes(name, 10, 32, **options), name
        if nets.model_input_sizes(name) is None:
            assert [r[2] for r in rows] == nets.stage_shapes(name, 10, 64, **options), name
        else:
            assert all(r[2] is None for r in rows), name


def _meta_build(name, **options):
    with torch.device("meta"):
        return nets.build_model(name, 10, **options)


def _first_layer(model):
    return next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


@pytest.mark.parametrize("name", ["net", "mlp", "preresnet20", "resnet18", "mobilenetv2",
                                  "shufflenetv2", "densenet121"])
def test_auxiliary_head_trains_the_backbone(name):
    torch.manual_seed(0)
    model = _build(name).train()
    _, feats = nets.forward_features(model, torch.randn(2, 3, 32, 32))
    feature = feats[-2]
    pooled = feature.mean((2, 3)) if feature.dim() == 4 else feature
    head = nn.Linear(pooled.shape[1], 10)
    # only the head's loss: any gradient in the backbone came through the stage output
    nn.functional.cross_entropy(head(pooled), torch.tensor([1, 2])).backward()
    assert _first_layer(model).weight.grad.abs().sum() > 0
    assert head.weight.grad.abs().sum() > 0
    assert _hooks_left(model) == []


def _one_line_error(call):
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_wrong_stage_name_is_a_one_line_error():
    model = _build("resnet18").eval()
    model.stages = ("layer1", "layer5")  # instance attribute: shadows the class's stages
    message = _one_line_error(lambda: nets.forward_features(model, torch.zeros(1, 3, 32, 32)))
    assert "'layer5'" in message and "did you mean 'layer4'" in message
    assert _hooks_left(model) == []


def test_stage_that_runs_twice_is_rejected_and_hooks_are_removed():
    model = _build("preresnet20").eval()
    model.stages = ("layer1", "layer1.0.relu")  # a block's ReLU runs twice per block
    message = _one_line_error(lambda: nets.forward_features(model, torch.zeros(1, 3, 32, 32)))
    assert "more than once" in message
    assert _hooks_left(model) == []


class _Toy(nn.Module):
    """A stage that never runs (`unused`) and one changed in place later (`conv` by the ReLU)."""

    stages = ("conv",)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.unused = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return torch.relu_(self.conv(x)).mean((1, 2, 3))


def test_stages_that_never_run_or_change_in_place_are_rejected():
    x = torch.zeros(1, 3, 8, 8)
    model = _Toy()
    assert "in place" in _one_line_error(lambda: nets.forward_features(model, x))
    model.stages = ("unused",)
    assert "did not run" in _one_line_error(lambda: nets.forward_features(model, x))
    model.stages = ()
    assert "declares no stages" in _one_line_error(lambda: nets.stage_names(model))
    assert "declares no stages" in _one_line_error(lambda: nets.stage_names(nn.Linear(2, 2)))
    assert _hooks_left(model) == []


def test_compiled_network_gives_its_stage_outputs():
    model = _build("net").eval()
    compiled = torch.compile(model, backend="eager")  # dynamo only: the hook issue, no codegen
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected_logits, expected = nets.forward_features(model, x)
        compiled(x)  # a graph compiled without hooks exists before the features are asked for
        logits, feats = nets.forward_features(compiled, x)
        assert torch.equal(compiled(x), expected_logits)  # and plain calls still work after
    assert torch.equal(logits, expected_logits)
    assert all(torch.equal(a, b) for a, b in zip(feats, expected))
    assert nets.stage_names(compiled) == ("bn1", "bn2", "bn3")
    assert _hooks_left(model) == []


def test_network_compiled_in_place_gives_its_stage_outputs():
    model = _build("mlp").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected_logits, expected = nets.forward_features(model, x)
        model.compile(backend="eager")  # Module.compile: no wrapper, the same object
        model(x)
        logits, feats = nets.forward_features(model, x)
    assert torch.equal(logits, expected_logits)
    assert all(torch.equal(a, b) for a, b in zip(feats, expected))
    assert _hooks_left(model) == []


@pytest.fixture
def one_process_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("compile_first", [False, True])
def test_ddp_wrapped_network_trains_through_stage_outputs(one_process_group, compile_first):
    torch.manual_seed(0)
    model = _build("preresnet20").train()
    # the trainer wraps DDP around the compiled network
    inner = torch.compile(model, backend="eager") if compile_first else model
    wrapped = nn.parallel.DistributedDataParallel(inner)
    logits, feats = nets.forward_features(wrapped, torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == EXPECTED_32["preresnet20"]
    head = nn.Linear(32, 10)
    loss = logits.sum() + head(feats[1].mean((2, 3))).sum()
    loss.backward()
    assert model.conv1.weight.grad.abs().sum() > 0
    assert _hooks_left(model) == []


def test_stage_shapes_checks_its_arguments():
    assert nets.stage_shapes("mlp", 3, 32) == [(512,), (512,)]
    assert "only works on 32x32" in _one_line_error(lambda: nets.stage_shapes("mlp", 3, 64))
    assert "needs option" in _one_line_error(lambda: nets.stage_shapes("net", 3, 32))
    assert nets.stage_shapes("net", 3, 32, num_channels=8, dropout_rate=0.5) == [
        (8, 32, 32), (16, 16, 16), (32, 8, 8)]
