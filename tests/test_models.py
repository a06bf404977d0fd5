"""The model zoo and model specs: shapes, sizes, ONNX export, spec resolution and errors."""

from __future__ import annotations

import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.models import ZOO
from compress.modelspec import (
    ZOO_HELP,
    build_model,
    canonical_spec,
    count_params,
    list_layers,
    parse_model_args,
    resolve_factory,
)

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
CASES = [(name, shape) for name in ZOO for shape in IMAGE_SHAPES] + [("mlp", (64,))]
MNIST = (1, 28, 28)


def _write(tmp_path, name: str, source: str):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def _params(spec: str, **args) -> int:
    return count_params(build_model(spec, MNIST, 10, args))


@pytest.mark.parametrize("name,shape", CASES)
def test_zoo_output_shape(name, shape):
    model = build_model(name, shape, 10)
    assert model(torch.randn(3, *shape)).shape == (3, 10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy (dynamo=False) exporter
@pytest.mark.parametrize("name,shape", CASES)
def test_zoo_exports_to_onnx(name, shape, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, shape, 7).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, *shape),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, *shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_settings_change_param_counts():
    assert _params("mlp", hidden=[1200, 1200]) > _params("mlp") > _params("mlp", hidden=[30, 30])
    assert _params("mlp-1200") == _params("mlp", hidden=[1200, 1200])
    assert _params("resnet20", width=32) > _params("resnet20") > _params("resnet14") > _params("resnet8")
    assert _params("resnet", blocks=3) == _params("resnet20")
    assert _params("cnn", channels=[8, 16], hidden=32) < _params("cnn")


def test_mlp_teacher_dropout():
    model = build_model("mlp-1200", MNIST, 10)
    assert model.input_dropout.p == 0.2 and model.fc1.dropout.p == 0.5
    assert model.fc2.linear.out_features == 1200


def test_top_level_names():
    def children(name):
        return [n for n, _ in build_model(name, (1, 8, 8), 10).named_children()]

    assert children("cnn") == ["block1", "block2", "head"]
    assert children("resnet8") == ["stem", "layer1", "layer2", "layer3", "pool", "flatten", "fc"]
    assert children("mlp") == ["flatten", "input_dropout", "fc1", "fc2", "out"]


@pytest.mark.parametrize(
    "pairs,expected",
    [
        (
            ["hidden=1200,1200", "dropout=0.5", "name=foo", "flag=true"],
            {"hidden": [1200, 1200], "dropout": 0.5, "name": "foo", "flag": True},
        ),
        (["a=FALSE", "b=None", "c=[1, (2, 3)]", "d=16"], {"a": False, "b": None, "c": [1, [2, 3]], "d": 16}),
        (
            [" width = 32 ", "path=/tmp/x.py", "empty=", "s={1, 2}", "eq=a=b"],
            {"width": 32, "path": "/tmp/x.py", "empty": "", "s": "{1, 2}", "eq": "a=b"},
        ),
        ([], {}),
    ],
)
def test_parse_model_args(pairs, expected):
    assert parse_model_args(pairs) == expected


@pytest.mark.parametrize("pair", ["hidden", "=3", " =3"])
def test_parse_model_args_rejects_non_pairs(pair):
    with pytest.raises(CompressError, match="is not KEY=VALUE; write it like"):
        parse_model_args([pair])


def test_resolve_zoo_name_independent_of_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_factory("resnet8") is ZOO["resnet8"]
    assert canonical_spec("resnet8") == "resnet8"


def test_resolve_module_spec():
    assert resolve_factory("compress.models.mlp:mlp") is ZOO["mlp"]
    assert canonical_spec("compress.models.mlp:mlp") == "compress.models.mlp:mlp"


def test_file_spec_resolves_and_canonical_is_absolute(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    _write(
        tmp_path,
        "models/net.py",
        """
        from torch import nn

        def tiny(in_shape, num_classes, width=4):
            return nn.Sequential(nn.Linear(in_shape[0], width), nn.Linear(width, num_classes))
        """,
    )
    monkeypatch.chdir(tmp_path)
    spec = canonical_spec("models/net.py:tiny")
    assert spec == f"{(tmp_path / 'models' / 'net.py').resolve()}:tiny"
    assert resolve_factory("models/net.py:tiny").__name__ == "tiny"
    monkeypatch.chdir(tmp_path / "models")
    model = build_model(spec, (5,), 3, {"width": 6})
    assert model(torch.zeros(2, 5)).shape == (2, 3)
    assert count_params(model) == 5 * 6 + 6 + 6 * 3 + 3


def test_list_layers():
    model = build_model("resnet8", (3, 32, 32), 10).train()
    layers = list_layers(model, (3, 32, 32))
    assert all(m.training for m in model.modules())
    names = [layer["name"] for layer in layers]
    assert [n for n in names if "." not in n] == ["stem", "layer1", "layer2", "layer3", "pool", "flatten", "fc"]
    assert names.index("layer1") < names.index("layer1.0") < names.index("layer1.0.conv1") < names.index("layer2")
    by_name = {layer["name"]: layer for layer in layers}
    assert by_name["layer1"]["output_shape"] == [16, 32, 32]
    assert by_name["layer2"]["output_shape"] == [32, 16, 16]
    assert by_name["layer3"]["output_shape"] == [64, 8, 8]
    assert by_name["fc"] == {"name": "fc", "type": "Linear", "output_shape": [10], "params": 650}
    assert by_name["layer1"]["params"] == 0 and by_name["stem.conv"]["params"] == 3 * 16 * 9


def test_list_layers_mlp_and_unused_module():
    layers = {layer["name"]: layer for layer in list_layers(build_model("mlp", MNIST, 10), MNIST)}
    assert layers["fc1"]["output_shape"] == [800]
    assert layers["fc2.linear"]["params"] == 800 * 800 + 800

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x)

    model = Unused().eval()
    assert [(layer["name"], layer["output_shape"]) for layer in list_layers(model, (4,))] == [
        ("used", [2]),
        ("spare", None),
    ]
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize(
    "source,tail,message",
    [
        ("raise RuntimeError('boom')\n", ":f", r"broken\.py failed to import \(RuntimeError: boom\); fix"),
        ("x = 1\n", ":missing", r"has no attribute 'missing'"),
        ("f = 3\n", ":f", r"'f' in file .* is a int, not callable"),
        ("def f(in_shape, num_classes):\n    return 3\n", ":f", r"returned a int, not a torch\.nn\.Module"),
        (
            "from torch import nn\ndef f(in_shape, num_classes):\n    return nn.Linear(5, 3)\n",
            ":f",
            r"fails on a zeros input of shape \(1, 1, 8, 8\) \(RuntimeError: .*\); check the input",
        ),
        (
            "from torch import nn\ndef f(in_shape, num_classes):\n    return nn.Flatten()\n",
            ":f",
            r"outputs \(1, 64\) for an input of shape \(1, 1, 8, 8\), expected \(1, 3\)",
        ),
        (
            "def f(in_shape, num_classes):\n    raise ValueError('bad size')\n",
            ":f",
            r"could not be built .* \(ValueError: bad size\); check the model arguments",
        ),
    ],
)
def test_file_spec_errors(tmp_path, source, tail, message):
    path = _write(tmp_path, "broken.py", source)
    with pytest.raises(CompressError, match=message):
        build_model(f"{path}{tail}", (1, 8, 8), 3)


@pytest.mark.parametrize(
    "spec,message",
    [
        (
            "resnet99",
            r"unknown model 'resnet99'; use a zoo name \(mlp, .*resnet8.*\), "
            r"'path/to/file\.py:factory'",
        ),
        ("nowhere/net.py:f", r"model file .*nowhere/net\.py not found; check the path"),
        ("no_such_module_xyz:f", r"module 'no_such_module_xyz' failed to import \(ModuleNotFoundError: .*PYTHONPATH"),
        ("compress.models.mlp:nothing", r"module compress\.models\.mlp has no attribute 'nothing'"),
        ("compress.models:ZOO", r"'ZOO' in module compress\.models is a dict, not callable"),
        ("net.py:", r"does not name a file or module and a factory"),
    ],
)
def test_spec_errors(spec, message):
    with pytest.raises(CompressError, match=message):
        resolve_factory(spec)


@pytest.mark.parametrize(
    "spec,args,message",
    [
        (
            "mlp",
            {"foo": 1},
            r"^model 'mlp' does not accept argument 'foo' \(it takes: hidden, dropout, input_dropout\)",
        ),
        ("resnet8", {"blocks": 2}, r"does not accept argument 'blocks' \(it takes: width\)"),
        ("mlp", {"hidden": "wide"}, r"hidden must be positive integers, got 'wide'; write it like"),
        ("mlp", {"dropout": 1.5}, r"dropout must be a number in \[0, 1\)"),
        ("resnet", {"width": 0}, r"width must be a positive integer"),
        ("cnn", {"channels": [8, 8, 8, 8]}, r"halves the image 4 times, too often for 8x8 input; give fewer"),
    ],
)
def test_bad_model_args(spec, args, message):
    with pytest.raises(CompressError, match=message):
        build_model(spec, (1, 8, 8), 10, args)


@pytest.mark.parametrize("name", ["cnn", "resnet8", "resnet20"])
def test_image_models_refuse_flat_input(name):
    with pytest.raises(CompressError, match=r"needs image input \(C,H,W\).*'mlp' for flat"):
        build_model(name, (64,), 10)


def test_bad_shape_or_classes():
    with pytest.raises(CompressError, match="give positive sizes"):
        build_model("mlp", (0, 8), 10)
    with pytest.raises(CompressError, match="give a positive number of classes"):
        build_model("cnn", (1, 8, 8), 0)


def test_errors_are_one_line_and_help_lists_zoo():
    with pytest.raises(CompressError) as info:
        build_model("mlp", (1, 8, 8), 10, {"foo": 1})
    assert "\n" not in str(info.value)
    assert all(name in ZOO_HELP for name in ZOO) and "\n" not in ZOO_HELP
