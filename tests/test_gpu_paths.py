"""``compress bench`` on the GPU. What a machine without one can check runs everywhere: GPU providers it lacks
refused in one line, cuda-graph never timed with copies, the CUDA versions of torch and onnxruntime compared, GPU
facts and node placement in the report, a CUDA graph's binding exercised on CPU buffers. With onnxruntime's CUDA
provider, models are benched on cuda and cuda-graph for real."""

import copy
import logging
import os
import stat
import sys

import numpy as np
import onnxruntime as ort
import pytest
from factories.onnx_graphs import const, save, value
from onnx import TensorProto, helper

from compress import hardware
from compress.cli import main
from compress.errors import CompressError
from compress.measure import runner
from compress.measure.report import load_report, markdown, table_rows, terminal_table, write_report
from compress.measure.report_model import validate_report
from compress.onnx_io import OnnxModel
from compress.stages import bench as bench_stage
from compress.stages.bench import BenchConfig, bench
from compress.stages.export import ExportConfig, export
from compress.stages.train import TrainConfig, train

AVAILABLE = ort.get_available_providers()
HAS_CUDA = "CUDAExecutionProvider" in AVAILABLE
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA,
    reason="needs onnxruntime's CUDA execution provider (onnxruntime-gpu) and an NVIDIA GPU; "
    "CUDAExecutionProvider is not in onnxruntime.get_available_providers() here",
)
QUICK = dict(batch_sizes=[1, 8], threads=[1], warmup=2, min_runs=7, min_time=0.05)
MISMATCH = "torch is built for CUDA 12.4 but onnxruntime for CUDA 13.0"


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A two-layer MLP by hand (16 features, 10 classes, any batch size), without a manifest."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("gpu") / "mlp.onnx"
    return save(
        path,
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
        ],
        [value("x", TensorProto.FLOAT, ["N", 16])],
        [value("logits", TensorProto.FLOAT, ["N", 10])],
        [
            const("w1", rng.normal(size=(16, 32)).astype(np.float32)),
            const("b1", rng.normal(size=32).astype(np.float32)),
            const("w2", rng.normal(size=(32, 10)).astype(np.float32)),
            const("b2", rng.normal(size=10).astype(np.float32)),
        ],
    )


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


# -- refused before anything runs -----------------------------------------------------------------


@pytest.mark.parametrize("key", ["cuda", "cuda-graph", "tensorrt"])
def test_a_gpu_provider_this_onnxruntime_lacks_is_one_line_exit_2(mlp, tmp_path, capsys, key):
    if runner.PROVIDERS[key] in AVAILABLE:
        pytest.skip(f"this onnxruntime build has {runner.PROVIDERS[key]}")
    report = tmp_path / "report"
    code, err = run_cli(["bench", str(mlp), "--providers", f"cpu,{key}", "--report", str(report)], capsys)
    line = one_error_line(err)
    assert code == 2
    assert f"provider {key} ({runner.PROVIDERS[key]}) is not available in this onnxruntime build" in line
    assert "install onnxruntime-gpu" in line and not report.exists()


def test_cuda_graph_with_include_copies_is_refused_in_one_line(mlp, tmp_path, capsys):
    args = ["bench", str(mlp), "--providers", "cuda-graph", "--include-copies", "--report", str(tmp_path / "r")]
    code, err = run_cli(args, capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith("error: --include-copies cannot time cuda-graph")
    assert "device buffers bound once" in line and not (tmp_path / "r").exists()


def test_a_model_onnxruntime_will_not_capture_is_one_line_naming_the_provider_to_use(mlp, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError(
            "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : This session cannot use the graph capture feature as "
            "requested by the user as the model has control flow nodes which can't be supported by "
            "CUDAExecutionProvider\nmore detail"
        )

    monkeypatch.setattr(ort, "InferenceSession", refuse)
    with pytest.raises(CompressError) as refused:
        runner.load(mlp, "cuda-graph", 1, "all")
    message = str(refused.value)
    assert "\n" not in message and "cannot run as one CUDA graph" in message
    assert "control flow nodes" in message and message.endswith("(--providers cuda)")


def test_any_other_session_failure_on_cuda_graph_is_the_usual_load_error(mlp, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Load model failed")

    monkeypatch.setattr(ort, "InferenceSession", fail)
    with pytest.raises(CompressError, match=r"onnxruntime cannot load model .*mlp.onnx \(.*Load model failed\); re-"):
        runner.load(mlp, "cuda-graph", 1, "all")


# -- CUDA versions: torch against onnxruntime -------------------------------------------------------


@pytest.mark.parametrize(
    "torch_cuda, ort_cuda",
    [("12.4", "12.8"), ("12.1", "12.1"), ("13.0", "13.2"), (None, "12.2"), ("12.4", None), (None, None), ("", "12.2")],
)
def test_cuda_builds_of_one_major_version_or_none_to_compare_pass(torch_cuda, ort_cuda):
    assert hardware.cuda_mismatch(torch_cuda, ort_cuda) is None


@pytest.mark.parametrize("torch_cuda, ort_cuda", [("12.4", "13.0"), ("11.8", "12.2")])
def test_cuda_builds_of_different_major_versions_are_named_with_what_to_do(torch_cuda, ort_cuda):
    message = hardware.cuda_mismatch(torch_cuda, ort_cuda)
    assert f"torch is built for CUDA {torch_cuda} but onnxruntime for CUDA {ort_cuda}" in message
    torch_major, ort_major = torch_cuda.split(".")[0], ort_cuda.split(".")[0]
    assert f"onnxruntime-gpu for CUDA {torch_major}, or torch for CUDA {ort_major}" in message
    assert "\n" not in message


def test_without_torch_or_with_its_cpu_build_there_is_no_torch_cuda(monkeypatch):
    import torch

    assert hardware.torch_cuda_version() == torch.version.cuda
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU build
    assert hardware.torch_cuda_version() is None
    monkeypatch.setitem(sys.modules, "torch", None)  # not installed: import torch raises ImportError
    assert hardware.torch_cuda_version() is None


def test_onnxruntime_names_its_cuda_build_only_when_it_has_one():
    assert (hardware.onnxruntime_cuda_version() is None) == (ort.get_device() == "CPU")


def test_the_preflight_warns_once_naming_both_versions_when_the_majors_differ(monkeypatch, caplog):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(runner, "torch_cuda_version", lambda: "12.4")
    monkeypatch.setattr(runner, "onnxruntime_cuda_version", lambda: "13.0")
    with caplog.at_level(logging.WARNING, logger="compress"):
        bench_stage.STAGE.preflight(BenchConfig(models=["m.onnx"], providers=["cpu", "cuda-graph"]))
        bench_stage.STAGE.preflight(BenchConfig(models=["m.onnx"], providers=["cpu"]))  # no GPU: no comparison
    warned = [r.getMessage() for r in caplog.records if r.name.startswith("compress")]
    assert warned == [hardware.cuda_mismatch("12.4", "13.0")] and warned[0].startswith(MISMATCH)


def test_a_gpu_provider_that_does_not_start_names_the_cuda_mismatch(mlp, monkeypatch):
    """onnxruntime falls back to the CPU for a whole model when its CUDA provider cannot load: an error, which
    names the version mismatch when there is one."""
    monkeypatch.setattr(runner, "torch_cuda_version", lambda: "12.4")
    monkeypatch.setattr(runner, "onnxruntime_cuda_version", lambda: "13.0")
    monkeypatch.setattr(runner, "provider_chain", lambda provider: ["CPUExecutionProvider"])  # the fallback
    with pytest.raises(CompressError) as failed:
        runner.load(mlp, "cuda", 1, "all")
    assert "could not start CUDAExecutionProvider (it fell back to CPU for the whole model); " + MISMATCH in str(
        failed.value
    )


# -- the machine section ----------------------------------------------------------------------------


def test_the_machine_section_records_the_cuda_builds(monkeypatch):
    monkeypatch.setattr(hardware, "torch_cuda_version", lambda: "12.4")
    monkeypatch.setattr(hardware, "onnxruntime_cuda_version", lambda: "12.8")
    software = hardware.machine_info(with_gpus=False)["software"]
    assert software["torch_cuda"] == "12.4" and software["onnxruntime_cuda"] == "12.8"
    monkeypatch.setattr(hardware, "torch_cuda_version", lambda: None)
    monkeypatch.setattr(hardware, "onnxruntime_cuda_version", lambda: None)
    assert not {"torch_cuda", "onnxruntime_cuda"} & set(hardware.machine_info(with_gpus=False)["software"])


def fake_nvidia_smi(folder, monkeypatch, knows_compute_cap: bool):
    """An nvidia-smi on PATH answering --query-gpu for two H100s; an old one refuses the compute_cap field."""
    script = folder / "nvidia-smi"
    fields = "NVIDIA H100 80GB HBM3, 550.54.15, 81559 MiB"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        + (
            f'  *compute_cap*) printf "{fields}, 9.0\\n{fields}, 9.0\\n";;\n'
            if knows_compute_cap
            else "  *compute_cap*) echo 'Field \"compute_cap\" is not a valid field to query.'; exit 2;;\n"
        )
        + f'  *) printf "{fields}\\n{fields}\\n";;\n'
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("knows_compute_cap", [True, False])
def test_each_gpu_is_listed_with_its_compute_capability_where_nvidia_smi_gives_it(
    tmp_path, monkeypatch, knows_compute_cap
):
    fake_nvidia_smi(tmp_path, monkeypatch, knows_compute_cap)
    found = hardware.gpus()
    gpu = {"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory": "81559 MiB"}
    assert found == [{**gpu, "compute_capability": "9.0"}] * 2 if knows_compute_cap else [gpu] * 2


# -- GPU rows in the report ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu_report(mlp, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cpu-report") / "report"
    return bench(BenchConfig(models=[str(mlp)], report=str(folder), memory=False, **QUICK))


def as_if_on_a_gpu(report: dict) -> dict:
    """The CPU report with a cuda-graph provider beside it (its figures copied), as a GPU machine writes it."""
    report = copy.deepcopy(report)
    report["config"]["providers"] = ["cpu", "cuda-graph"]
    report["machine"]["gpus"] = [
        {"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory": "81559 MiB", "compute_capability": "9.0"}
    ]
    report["machine"]["software"].update(torch_cuda="12.4", onnxruntime_cuda="12.8")
    for m in report["models"]:
        m["providers"]["cuda-graph"] = {
            **m["providers"]["cpu"],
            "placement": {"CUDAExecutionProvider": 5, "CPUExecutionProvider": 2},
        }
    report["rows"] += [{**r, "provider": "cuda-graph"} for r in report["rows"]]
    report["session"]["io_binding"] = True
    return report


def test_gpu_rows_show_the_nodes_each_ran_on_the_gpu_and_the_machine_its_cuda(cpu_report, tmp_path):
    report = as_if_on_a_gpu(cpu_report)
    validate_report(report)
    rows = table_rows(report)
    assert [r[1:3] for r in rows] == [["cpu", "–"]] * 2 + [["cuda-graph", "5 of 7 (2 on CPU)"]] * 2
    text = markdown(report)
    assert "| model | provider | nodes on GPU | batch |" in text
    assert "| cuda-graph | 5 of 7 (2 on CPU) | 1 |" in text
    assert "placement: 5 nodes on CUDAExecutionProvider, 2 nodes on CPUExecutionProvider" in text
    assert "- GPU: NVIDIA H100 80GB HBM3, compute capability 9.0, driver 550.54.15, 81559 MiB" in text
    assert f"torch {report['machine']['software']['torch']} (CUDA 12.4)" in text
    assert f"onnxruntime {ort.__version__} (CUDA 12.8)" in text and "torch_cuda" not in text
    assert "cuda-graph: one CUDA graph per session and batch size, captured on its first run" in text
    assert "nodes on GPU" in terminal_table(report)
    write_report(report, tmp_path / "gpu")
    assert load_report(tmp_path / "gpu")["config"]["providers"] == ["cpu", "cuda-graph"]


def test_a_cpu_only_report_has_no_gpu_column(cpu_report):
    assert "nodes on GPU" not in markdown(cpu_report) and len(table_rows(cpu_report)[0]) == 15


@pytest.mark.parametrize(
    "provider, said",
    [
        ("cuda", "m.onnx on cuda: 2 of 7 nodes ran on the CPU, where the GPU providers left them: its figures"),
        ("cuda-graph", "m.onnx on cuda-graph: 2 of 7 nodes ran on the CPU, outside the graph: shape computations"),
    ],
)
def test_nodes_a_gpu_provider_left_to_the_cpu_are_said_in_one_warning(caplog, provider, said):
    with caplog.at_level(logging.WARNING, logger="compress"):
        bench_stage._say_cpu_nodes("m.onnx", provider, {"CUDAExecutionProvider": 5, "CPUExecutionProvider": 2})
        bench_stage._say_cpu_nodes("m.onnx", provider, {"CUDAExecutionProvider": 7})
    assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(said)


# -- the CUDA graph's binding, on CPU buffers ------------------------------------------------------------


def test_a_graph_binding_predicts_what_the_session_does_padded_to_its_batch(mlp, monkeypatch):
    """GraphModel's binding, copies into the bound inputs and padding, run on a CPU session with its buffers on
    the CPU (onnxruntime's CPU provider ignores gpu_graph_id): what a CUDA graph runs, without the graph."""
    from compress.feeds import Samples

    monkeypatch.setattr(runner, "DEVICE", "cpu")
    x = Samples({"x": np.random.default_rng(1).normal(size=(37, 16)).astype(np.float32)})
    plain = OnnxModel(ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"]), "model mlp")
    graph = runner.GraphModel(ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"]), "model mlp")
    loaded = runner.Loaded(graph, "cuda-graph", 0.0)
    assert runner.first_run_s(loaded, x.batch(8), include_copies=False) > 0
    assert graph.fixed_batch == 8
    np.testing.assert_allclose(graph.predict(x)[0], plain.predict(x)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="bound once"):
        runner.make_call(loaded, x.batch(8), include_copies=False)

    timed = runner.GraphModel(ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"]), "model mlp")
    batch = x.batch(8)
    expected = plain.run(batch)[0]
    call = runner.make_call(runner.Loaded(timed, "cuda-graph", 0.0), batch, include_copies=False)
    call()
    np.testing.assert_allclose(timed.binding.get_outputs()[0].numpy(), expected, rtol=1e-5, atol=1e-6)


# -- on a GPU ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory):
    """A digits MLP as fp32 ONNX with its manifest (data and labels), twice: baseline and a second model."""
    folder = tmp_path_factory.mktemp("gpu-digits")
    train(TrainConfig(model="mlp", model_args={"hidden": [64]}, data="digits", out=str(folder / "m.pt"), epochs=5))
    export(ExportConfig(checkpoint=str(folder / "m.pt"), out=str(folder / "m.onnx")))
    train(TrainConfig(model="mlp", model_args={"hidden": [32]}, data="digits", out=str(folder / "s.pt"), epochs=5))
    export(ExportConfig(checkpoint=str(folder / "s.pt"), out=str(folder / "s.onnx")))
    return folder / "m.onnx", folder / "s.onnx"


@needs_cuda
@pytest.mark.slow
def test_cuda_and_cuda_graph_are_benched_with_their_nodes_on_the_gpu(digits_models, tmp_path):
    report = bench(
        BenchConfig(
            models=[str(m) for m in digits_models],
            report=str(tmp_path / "r"),
            providers=["cpu", "cuda", "cuda-graph"],
            **QUICK,
        )
    )
    validate_report(report)
    for m in report["models"]:
        cpu = m["providers"]["cpu"]
        for provider in ("cuda", "cuda-graph"):
            measured = m["providers"][provider]
            assert measured["placement"].get("CUDAExecutionProvider", 0) > 0, (m["name"], provider, measured)
            assert measured["peak_memory_mb"] >= measured["process_memory_mb"] > 0
            # the graph's replays predict what the CPU does (one sample of slack for float differences)
            assert abs(measured["top1"] - cpu["top1"]) <= 1 / cpu["test_samples"] + 1e-9
    rows = {(r["model"], r["provider"], r["batch_size"]) for r in report["rows"]}
    assert rows == {
        (m["name"], p, b) for m in report["models"] for p in ("cpu", "cuda", "cuda-graph") for b in QUICK["batch_sizes"]
    }
    assert report["machine"]["gpus"] and report["machine"]["software"]["onnxruntime_cuda"]
    text = (tmp_path / "r" / "report.md").read_text()
    assert "nodes on GPU" in text and "| cuda-graph |" in text


@needs_cuda
@pytest.mark.slow
def test_cuda_graph_replays_give_what_regular_cuda_runs_give(digits_models):
    from compress.artifacts import read_manifest
    from compress.data.model_data import load_model_data

    path = digits_models[0]
    plain = runner.load(path, "cuda", 1, "all")
    graph = runner.load(path, "cuda-graph", 1, "all")
    data = load_model_data(path, plain.runner, read_manifest(path), None, None, {}, {}, 1000)
    x = data.test
    assert runner.first_run_s(graph, x.batch(16), include_copies=False) > 0
    expected = plain.runner.predict(x, batch_size=16)[0]  # regular runs, batches of the size the graph has
    np.testing.assert_allclose(graph.runner.predict(x)[0], expected, rtol=1e-3, atol=1e-3)
    call = runner.make_call(runner.load(path, "cuda-graph", 1, "all"), x.batch(16), include_copies=False)
    for _ in range(3):
        call()  # replays


@needs_cuda
def test_a_model_with_control_flow_is_refused_on_cuda_graph_naming_cuda_instead(tmp_path, capsys):
    """onnxruntime cannot capture an If: one line, exit 2, and the provider to bench it on instead."""
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y_then"])], "then", [], [value("y_then", TensorProto.FLOAT, ["N", 4])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y_else"])], "else", [], [value("y_else", TensorProto.FLOAT, ["N", 4])]
    )
    path = save(
        tmp_path / "branchy.onnx",
        [
            helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
            helper.make_node("Greater", ["total", "zero"], ["positive"]),
            helper.make_node("If", ["positive"], ["y"], then_branch=then_branch, else_branch=else_branch),
        ],
        [value("x", TensorProto.FLOAT, ["N", 4])],
        [value("y", TensorProto.FLOAT, ["N", 4])],
        [const("zero", np.float32(0))],
    )
    code, err = run_cli(["bench", str(path), "--providers", "cpu,cuda-graph", "--report", str(tmp_path / "r")], capsys)
    line = one_error_line(err)
    assert code == 2 and "cannot run as one CUDA graph" in line and line.endswith("(--providers cuda)")
    assert not (tmp_path / "r").exists()
