"""The NNCF backend: real nncf.quantize on tiny ONNX graphs, run back through ONNX Runtime."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compress.errors import CompressError
from compress.nncf_backend import NNCF_PRESETS, NNCF_QUANTIZED_TYPES, quantize_with_nncf, quantized_types

# find_spec, not importorskip: importing nncf outside quantize_with_nncf would turn its telemetry on
# (and write ~/intel); the backend imports it with telemetry off.
if importlib.util.find_spec("nncf") is None:
    pytest.skip("NNCF is not installed (pip install 'compress[nncf]')", allow_module_level=True)

ort = pytest.importorskip("onnxruntime")
value = helper.make_tensor_value_info


def save(path, nodes, inputs, outputs, weights):
    graph = helper.make_graph(
        nodes, "g", inputs, outputs, [numpy_helper.from_array(array, name) for name, array in weights.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def classifier(path, extra_weights=None):
    """x (N, 1, 8, 8) -> Conv 3x3 (8 channels) -> Relu -> Flatten -> Gemm -> 10 logits."""
    rng = np.random.default_rng(0)
    weights = {
        "conv.w": rng.normal(0, 0.3, (8, 1, 3, 3)).astype(np.float32),
        "conv.b": rng.normal(0, 0.1, 8).astype(np.float32),
        "fc.w": rng.normal(0, 0.1, (10, 8 * 8 * 8)).astype(np.float32),
        "fc.b": rng.normal(0, 0.1, 10).astype(np.float32),
        **(extra_weights or {}),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    return save(
        path,
        nodes,
        [value("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [value("logits", TensorProto.FLOAT, ["N", 10])],
        weights,
    )


def batches(count=8, size=4, seed=1, **shapes):
    rng = np.random.default_rng(seed)
    shapes = shapes or {"x": (1, 8, 8)}
    return [
        {name: rng.normal(size=(size, *shape)).astype(np.float32) for name, shape in shapes.items()}
        for _ in range(count)
    ]


def run(path, feed):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def fed_by_dequantize(path, node_name):
    """The inputs of ``node_name`` that a DequantizeLinear produces."""
    graph = onnx.load(str(path)).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    node = next(node for node in graph.node if node.name == node_name)
    return [name for name in node.input if name in dequantized]


def op_types(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    return classifier(tmp_path_factory.mktemp("nncf") / "float.onnx")


@pytest.mark.parametrize("preset", NNCF_PRESETS)
def test_each_preset_gives_a_qdq_model_close_to_fp32_and_prints_nothing(float_model, tmp_path, preset, capfd):
    out = tmp_path / "int8.onnx"
    quantize_with_nncf(float_model, out, batches(), preset=preset)

    assert capfd.readouterr() == ("", "")
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(out)
    assert fed_by_dequantize(out, "conv") and fed_by_dequantize(out, "fc")
    assert out.stat().st_size < float_model.stat().st_size / 2  # int8 weights, stored inline
    x = batches(count=1, size=256, seed=2)[0]
    expected, got = run(float_model, x), run(out, x)
    assert (expected.argmax(1) == got.argmax(1)).mean() >= 0.9
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.1


def test_excluded_node_stays_float_and_unknown_names_are_ignored(float_model, tmp_path):
    out = tmp_path / "int8.onnx"
    quantize_with_nncf(float_model, out, batches(), exclude=["fc", "no such node"])

    assert fed_by_dequantize(out, "fc") == []
    assert "fc.w" in {init.name for init in onnx.load(str(out)).graph.initializer}  # the float weights
    assert fed_by_dequantize(out, "conv")


@pytest.mark.parametrize(
    ("only", "quantized", "kept"), [(("Conv",), "conv", "fc"), (("Gemm", "Relu"), "fc", "conv")], ids=["conv", "gemm"]
)
def test_op_types_quantizes_only_those(float_model, tmp_path, only, quantized, kept):
    out = tmp_path / "int8.onnx"
    quantize_with_nncf(float_model, out, batches(), op_types=only)

    assert fed_by_dequantize(out, quantized)
    assert fed_by_dequantize(out, kept) == []


def test_two_inputs_with_a_fixed_batch_take_dict_batches(tmp_path):
    rng = np.random.default_rng(3)
    path = save(
        tmp_path / "two.onnx",
        [
            helper.make_node("Add", ["a", "b"], ["s"], name="add"),
            helper.make_node("MatMul", ["s", "w"], ["y"], name="mm"),
        ],
        [value("a", TensorProto.FLOAT, [2, 16]), value("b", TensorProto.FLOAT, [2, 16])],
        [value("y", TensorProto.FLOAT, [2, 10])],
        {"w": rng.normal(size=(16, 10)).astype(np.float32)},
    )
    out = tmp_path / "int8.onnx"
    quantize_with_nncf(path, out, batches(size=2, a=(16,), b=(16,)))

    assert fed_by_dequantize(out, "mm")
    feed = batches(count=1, size=2, seed=4, a=(16,), b=(16,))[0]
    expected, got = run(path, feed), run(out, feed)
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.1


def test_onnxruntime_warnings_from_nncfs_sessions_stay_off_the_terminal(tmp_path, capfd):
    # onnxruntime warns on file descriptor 2 about an initializer no node uses
    path = classifier(tmp_path / "float.onnx", extra_weights={"unused": np.zeros(3, np.float32)})
    quantize_with_nncf(path, tmp_path / "int8.onnx", batches())

    assert capfd.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("calibration", "says"),
    [
        ([{"image": np.zeros((4, 1, 8, 8), np.float32)}], "missing from input feed"),
        ([{"x": np.zeros((4, 1, 8, 8), np.float64)}], "tensor(double)"),
        ([], "must not be empty"),
    ],
    ids=["wrong-name", "wrong-type", "empty"],
)
def test_bad_calibration_is_one_line_and_prints_nothing(float_model, tmp_path, capfd, calibration, says):
    out = tmp_path / "int8.onnx"
    with pytest.raises(CompressError) as caught:
        quantize_with_nncf(float_model, out, calibration)

    message = str(caught.value)
    assert message.startswith("NNCF could not quantize float.onnx (")
    assert message.endswith("); try --backend onnxruntime")
    assert says in message and "\n" not in message
    assert capfd.readouterr() == ("", "")
    assert not out.exists()


def test_unknown_preset_is_refused(float_model, tmp_path):
    with pytest.raises(CompressError, match="unknown NNCF preset 'fast'; choose one of performance, mixed"):
        quantize_with_nncf(float_model, tmp_path / "int8.onnx", batches(), preset="fast")


def test_without_nncf_the_error_says_how_to_install_it(float_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(CompressError, match=r"pip install 'compress\[nncf\]'"):
        quantize_with_nncf(float_model, tmp_path / "int8.onnx", batches())


def test_the_fallback_list_of_quantized_types_is_nncfs(float_model, tmp_path):
    quantize_with_nncf(float_model, tmp_path / "int8.onnx", batches(count=1))  # imports nncf
    assert quantized_types(sys.modules["nncf"]) == NNCF_QUANTIZED_TYPES


def test_nncf_is_imported_with_telemetry_off_and_nothing_in_home(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    for name in ("CI", "NNCF_CI", "NNCF_DEV"):
        env.pop(name, None)
    code = (
        "import os; from compress.nncf_backend import _import_nncf; _import_nncf(); "
        "from openvino_telemetry import Telemetry; "
        "print(Telemetry().consent, 'CI' in os.environ, 'NNCF_CI' in os.environ)"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "False"]
    assert list(tmp_path.iterdir()) == []
