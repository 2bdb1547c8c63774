"""Every network against the authors' conformance fixture, plus the registry's promises."""
import json

import pytest
import torch
from conftest import FIXTURES
from recipe import recipe_input, recipe_state_dict

import nets
from utils.base.errors import ConfigError

REFERENCE = json.loads((FIXTURES / "net_reference.json").read_text())
CASES = REFERENCE["cases"]
NET_OPTIONS = {"net": {"num_channels": 32, "dropout_rate": 0.0}}


def _case_id(case):
    return f"{case['model_name']}-{case['num_classes']}-{case['input_size']}px"


def _build(case):
    name = case["model_name"]
    return nets.build_model(name, case["num_classes"], input_size=case["input_size"],
                            **NET_OPTIONS.get(name, {}))


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_network_matches_original(case):
    model = _build(case)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, list(s)) for k, s in case["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == case["num_parameters"]

    model.load_state_dict(recipe_state_dict(case["state_dict"], REFERENCE["seed"]))
    model.eval()
    with torch.no_grad():
        logits = model(recipe_input(REFERENCE["seed"], case["input_size"])).double()
    expected = torch.tensor(case["logits"], dtype=torch.float64)
    atol = 1e-4 * expected.abs().max().item()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=atol)


def test_fixture_covers_every_architecture_family():
    assert len(CASES) == 20
    covered = {c["model_name"] for c in CASES}
    assert {"net", "mlp", "resnet18", "preresnet20", "resnext29", "mobilenetv2",
            "shufflenetv2", "densenet121"} <= covered


def test_registry_lists_every_name_of_the_original_release():
    assert nets.model_names() == sorted([
        "net", "mlp", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
        "preresnet20", "preresnet32", "preresnet44", "preresnet56", "preresnet110",
        "resnext29", "mobilenetv2", "shufflenetv2",
        "densenet121", "densenet161", "densenet169", "densenet201"])


@pytest.mark.parametrize("name,num_classes,num_parameters", [
    # not in the fixture: counts follow from the original's block lists
    ("preresnet44", 10, 683162), ("resnet101", 10, 42512970), ("resnet152", 10, 58156618),
    ("densenet161", 10, 26482378), ("densenet169", 10, 12493322), ("densenet201", 10, 18104330)])
def test_networks_outside_the_fixture_build_with_known_sizes(name, num_classes, num_parameters):
    model = nets.build_model(name, num_classes)
    assert sum(p.numel() for p in model.parameters()) == num_parameters


def test_preresnet_honours_num_classes():
    model = nets.build_model("preresnet20", 100).eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 100)


@pytest.mark.parametrize("name", ["resnet18", "resnext29", "mobilenetv2", "shufflenetv2",
                                  "densenet121"])
def test_size_agnostic_networks_take_32_and_64_pixels(name):
    model = nets.build_model(name, 7).eval()
    with torch.no_grad():
        for size in (32, 64):
            assert model(torch.zeros(2, 3, size, size)).shape == (2, 7)


@pytest.mark.parametrize("name", ["net", "mlp", "preresnet20", "preresnet110"])
def test_fixed_size_networks_refuse_64_pixels_when_built(name):
    with pytest.raises(ConfigError, match=rf"model '{name}' only works on 32x32 inputs.*not 64x64"):
        nets.build_model(name, 200, input_size=64, **NET_OPTIONS.get(name, {}))


def test_unknown_name_suggests_and_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        nets.build_model("resnet19", 10)
    message = str(err.value)
    assert "unknown model 'resnet19' (did you mean 'resnet18'?)" in message
    assert "valid names: densenet121, densenet161" in message and "\n" not in message


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"model 'net' needs option\(s\) num_channels, dropout_rate"):
        nets.build_model("net", 10)
    with pytest.raises(ConfigError, match=r"takes no option 'num_chanels' \(did you mean 'num_channels'\?\)"):
        nets.build_model("net", 10, num_chanels=32, dropout_rate=0.0)
    with pytest.raises(ConfigError, match="takes no option 'dropout_rate'"):
        nets.build_model("resnet18", 10, dropout_rate=0.1)
    with pytest.raises(ConfigError, match="num_classes must be a positive integer"):
        nets.build_model("resnet18", 0)


def test_net_options_set_width_and_dropout():
    model = nets.build_model("net", 10, num_channels=8, dropout_rate=0.5)
    assert model.conv1.out_channels == 8 and model.fc1.in_features == 4 * 4 * 32
    assert model.dropout_rate == 0.5


def test_mlp_keeps_the_original_output_relu():
    model = nets.build_model("mlp", 10).eval()
    with torch.no_grad():
        assert (model(torch.randn(16, 3, 32, 32)) >= 0).all()


def test_register_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="registered twice"):
        nets.register("resnet18")(lambda num_classes: None)
