"""``compress bench``: statistics, the report files, noise labelling, comparisons, errors."""

import base64
import html.parser
import io
import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from compress.cli import main
from compress.errors import CompressError
from compress.measure.latency import LatencyStats
from compress.measure.report import (
    compare_reports,
    load_report,
    markdown,
    pareto_front,
    table_rows,
    terminal_table,
    write_report,
)
from compress.measure.report_model import REGENERATE, SCHEMA_PATH, schema_text, validate_report
from compress.measure.stats import median_ci, median_rank, speedup_ci, verdict
from compress.stages.bench import BenchConfig, bench
from compress.stages.export import ExportConfig, export
from compress.stages.quantize import QuantizeConfig, quantize
from compress.stages.train import TrainConfig, train

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
QUICK = dict(batch_sizes=[1, 8], threads=[1], warmup=1, min_runs=7, min_time=0.07)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An MLP on digits as fp32 ONNX and its dynamic int8 version."""
    folder = tmp_path_factory.mktemp("bench")
    train(
        TrainConfig(
            model="mlp", model_args={"hidden": [64]}, data="digits", out=str(folder / "m.pt"), epochs=5, device="cpu"
        )
    )
    export(ExportConfig(checkpoint=str(folder / "m.pt"), out=str(folder / "m.onnx")))
    quantize(QuantizeConfig(model=str(folder / "m.onnx"), out=str(folder / "m.int8.onnx"), mode="dynamic"))
    return folder / "m.onnx", folder / "m.int8.onnx"


@pytest.fixture(scope="module")
def report_dir(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("report") / "report"
    main_args = [
        "bench",
        str(models[0]),
        str(models[1]),
        "--report",
        str(folder),
        "--batch-sizes",
        "1,8",
        "--threads",
        "1",
        "--warmup",
        "1",
        "--min-runs",
        "7",
        "--min-time",
        "0.07",
    ]
    main(main_args)
    return folder


def test_median_interval_matches_the_binomial_order_statistics():
    assert median_ci(np.arange(1, 101)) == (40.0, 61.0)  # Le Boudec, table A.1: n = 100 -> 40, 61
    assert median_ci(np.arange(1, 8)) == (1.0, 7.0)  # 7 samples: only the range has 95%
    assert median_ci(np.arange(1, 2001)) == (956.0, 1045.0)
    assert median_ci([3.0]) == (3.0, 3.0)
    assert median_ci(np.arange(1, 6)) == (1.0, 5.0)  # 5 samples: the range holds 93.75% only


def test_median_interval_at_any_confidence_and_many_samples():
    samples = np.random.default_rng(0).permutation(5000).astype(float)
    low, high = median_ci(samples, 0.97)  # once a KeyError: no z-value for 0.97 above 1000 samples
    k = median_rank(5000, 0.97)
    assert (low, high) == (k - 1, 5000 - k) and low < 2499.5 < high
    assert median_ci(samples, 0.99)[0] < low and median_ci(samples, 0.90)[0] > low
    assert median_ci(np.arange(1, 101), 0.95) == (40.0, 61.0)
    million = median_ci(np.random.default_rng(1).random(1_000_000), 0.999)
    assert million[0] < 0.5 < million[1] and million[1] - million[0] < 0.01
    for bad in (0.5, 1.0, 0.3, 95, float("nan")):
        with pytest.raises(ValueError, match="0.5 < confidence < 1"):
            median_ci(samples, bad)


def _brute_force_rank(n: int, confidence: float) -> int:
    """The largest k with 2·P(Bin(n, 1/2) <= k-1) <= 1 - confidence, at least 1, in exact arithmetic."""
    from fractions import Fraction

    alpha, best, below = Fraction(1 - confidence), 1, 0
    for k in range(1, (n + 1) // 2 + 1):
        below += math.comb(n, k - 1)  # 2^n · P(Bin(n, 1/2) <= k-1)
        if Fraction(2 * below, 2**n) > alpha:
            break
        best = k
    return best


@pytest.mark.parametrize("confidence", [0.6, 0.9, 0.9375, 0.95, 0.97, 0.99, 0.995])
def test_median_rank_is_the_exact_binomial_one(confidence):
    for n in [*range(1, 80), 100, 257, 1000, 1001, 2500]:
        assert median_rank(n, confidence) == _brute_force_rank(n, confidence), n


def test_speedup_is_the_median_round_ratio_with_its_interval():
    assert speedup_ci([1.9, 2.1, 2.0, 1.8, 2.2, 2.05, 1.95]) == (2.0, 1.8, 2.2)
    assert verdict(1.2, 1.5) == "faster" and verdict(0.5, 0.9) == "slower"
    assert verdict(0.95, 1.3) == "within noise"


def test_latency_statistics_by_hand():
    stats = LatencyStats.from_times(np.array([1.0, 2.0, 3.0, 4.0]) / 1e3, batch_size=10)
    assert (stats.mean_ms, stats.p50_ms, stats.min_ms, stats.max_ms) == (2.5, 2.5, 1.0, 4.0)
    assert stats.std_ms == pytest.approx(1.2909944, rel=1e-6)
    assert stats.cv == pytest.approx(1.2909944 / 2.5, rel=1e-6)
    assert stats.throughput == pytest.approx(4000.0)  # 10 samples per 2.5 ms
    assert stats.p90_ms == pytest.approx(3.7) and stats.p99_ms == pytest.approx(3.97)


def test_pareto_front_keeps_the_undominated_points():
    points = [(1.0, 90.0), (2.0, 95.0), (3.0, 94.0), (0.5, 80.0), (2.0, 90.0)]
    assert pareto_front(points) == [3, 0, 1]


def test_report_files_are_complete_and_valid(report_dir, models):
    report = json.loads((report_dir / "report.json").read_text())
    validate_report(report)
    assert {p.name for p in report_dir.iterdir()} == {"report.json", "report.md", "report.html", "plot.png"}
    assert len(report["rows"]) == 2 * 2  # models x batch sizes
    base, int8 = report["models"]
    assert base["baseline"] and not int8["baseline"] and report["baseline"] == "m.onnx"
    cpu = int8["providers"]["cpu"]
    assert cpu["test_samples"] == 359 and cpu["top5"] >= cpu["top1"] > 0.8
    assert cpu["agreement_with_baseline"] > 0.9 and abs(cpu["accuracy_delta_points"]) < 3
    assert cpu["peak_memory_mb"] >= cpu["process_memory_mb"] > 10
    assert int8["size_bytes"] < base["size_bytes"]
    for row in report["rows"]:
        assert row["p50_ci_ms"][0] <= row["p50_ms"] <= row["p50_ci_ms"][1]
        assert row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] <= row["max_ms"]
        if row["model"] == "m.int8.onnx":
            low, high = row["speedup_ci"]
            assert low <= row["speedup"] <= high and row["verdict"] == verdict(low, high)
    assert report["machine"]["cpu"]["logical_cores"] >= 1 and report["machine"]["software"]["onnxruntime"]


def test_markdown_and_html_show_the_table_and_the_plot(report_dir):
    markdown = (report_dir / "report.md").read_text()
    assert "| model | provider | batch | threads |" in markdown and "m.int8.onnx" in markdown

    class Images(html.parser.HTMLParser):
        sources = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.sources.append(dict(attrs)["src"])

    page = (report_dir / "report.html").read_text()
    parser = Images()
    parser.feed(page)
    assert "http://" not in page and "https://" not in page  # opens without a network
    assert len(parser.sources) == 1 and parser.sources[0].startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(parser.sources[0].split(",", 1)[1])))
    assert image.format == "PNG" and image.size[0] > 300
    assert (report_dir / "plot.png").read_bytes() == base64.b64decode(parser.sources[0].split(",", 1)[1])


def test_a_speedup_inside_the_noise_is_labelled_so(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    row = next(r for r in report["rows"] if r["speedup"] is not None)
    row.update(speedup=1.02, speedup_ci=[0.97, 1.08], verdict=verdict(0.97, 1.08))
    cells = next(c for c in table_rows(report) if c[0] == row["model"] and c[2] == str(row["batch_size"]))
    assert cells[-1] == "1.02x (0.97–1.08) within noise"


def test_compare_reports_names_what_moved_beyond_noise(report_dir, capsys):
    old = load_report(report_dir)
    new = json.loads(json.dumps(old))
    first, second = new["rows"][0], new["rows"][1]
    first["p50_ms"], first["p50_ci_ms"] = first["p50_ms"] / 3, [c / 3 for c in first["p50_ci_ms"]]
    second["p50_ci_ms"] = [second["p50_ci_ms"][0] * 0.99, second["p50_ci_ms"][1] * 1.01]
    verdicts = [c["verdict"] for c in compare_reports(old, new)]
    assert verdicts[0] == "faster" and verdicts[1] == "within noise"
    new_path = report_dir.parent / "new.json"
    new_path.write_text(json.dumps(new))
    main(["bench", "--compare", str(report_dir / "report.json"), str(new_path)])
    assert "faster" in capsys.readouterr().out


def test_the_committed_schema_is_the_one_the_report_model_generates():
    assert SCHEMA_PATH.read_text() == schema_text(), (
        f"{SCHEMA_PATH.name} is out of date with compress/measure/report_model.py; regenerate it with "
        f"`.venv/bin/{REGENERATE}`"
    )


@pytest.mark.parametrize("confidence, label", [(0.97, "97%"), (0.995, "99.5%"), (0.9, "90%")])
def test_the_report_names_its_confidence_level(report_dir, tmp_path, confidence, label):
    report = json.loads((report_dir / "report.json").read_text())
    report["timing"]["confidence"] = report["config"]["confidence"] = confidence
    assert f"speed-up ({label} CI)" in terminal_table(report).splitlines()[0]
    folder = tmp_path / "r"
    write_report(report, folder)
    for name in ("report.md", "report.html"):
        page = (folder / name).read_text()
        assert f"speed-up ({label} CI)" in page and f"; {label} intervals." in page
        assert "95%" not in page


def test_an_invalid_report_is_a_bug_and_nothing_is_written(report_dir, tmp_path):
    report = json.loads((report_dir / "report.json").read_text())
    report["rows"][0]["p50_ms"] = 0.0
    with pytest.raises(ValueError, match=r"rows\[0\]\.p50_ms: Input should be greater than 0") as info:
        write_report(report, tmp_path / "r")
    assert not isinstance(info.value, CompressError) and "bug in compress" in str(info.value)
    assert not list(tmp_path.iterdir())
    report = json.loads((report_dir / "report.json").read_text())
    report["rows"][0]["p50_ci_ms"] = np.array(report["rows"][0]["p50_ci_ms"])  # not JSON
    with pytest.raises(TypeError):
        write_report(report, tmp_path / "r")
    assert not list(tmp_path.iterdir())
    assert "speed-up (95% CI)" in markdown(json.loads((report_dir / "report.json").read_text()))


def _edit(field_path, value):
    """Set (or, with ..., delete) one field of a report: ``_edit(("rows", 0, "p50_ms"), 0)``."""

    def change(report):
        *parents, last = field_path
        for key in parents:
            report = report[key]
        if value is ...:
            del report[last]
        else:
            report[last] = value

    return change


@pytest.mark.parametrize(
    "edit, message",
    [
        ("{not json", "is not valid JSON"),
        ([1, 2], "is not a compress bench report"),
        (_edit(("format",), ...), "is not a compress bench report"),
        (
            _edit(("format",), "compress-bench-report/2"),
            "format: compress-bench-report/2 is not compress-bench-report/1",
        ),
        (_edit(("format",), "something-else/1"), "format: 'something-else/1' is not a compress bench report"),
        (_edit(("rows", 0, "p50_ms"), 0), "rows[0].p50_ms: Input should be greater than 0"),
        (_edit(("rows", 1, "runs"), "many"), "rows[1].runs: Input should be a valid integer"),
        (_edit(("rows", 0, "p50_ci_ms"), [1.0]), "rows[0].p50_ci_ms[1]: Field required"),
        (_edit(("rows", 0, "verdict"), "quicker"), "rows[0].verdict: Input should be 'baseline', 'faster'"),
        (_edit(("rows", 0, "model"), "other.onnx"), "rows[0].model: 'other.onnx' is not one of the models"),
        (_edit(("models", 1, "sha256"), ...), "models[1].sha256: Field required"),
        (
            _edit(("models", 0, "providers", "cpu", "top1"), 98.6),
            "models[0].providers.cpu.top1: Input should be less than or equal to 1",
        ),
        (_edit(("machine",), "a laptop"), "machine: Input should be a JSON object"),
        (_edit(("timing", "surprise"), 1), "timing.surprise: Extra inputs are not permitted"),
        (_edit(("rows",), []), "rows: List should have at least 1 item"),
    ],
)
def test_a_broken_report_to_compare_is_one_line_naming_the_field(report_dir, tmp_path, capsys, edit, message):
    broken = tmp_path / "report.json"
    if callable(edit):
        report = json.loads((report_dir / "report.json").read_text())
        edit(report)
        broken.write_text(json.dumps(report))
    else:
        broken.write_text(edit if isinstance(edit, str) else json.dumps(edit))
    code, err = run_cli(["bench", "--compare", str(report_dir / "report.json"), str(broken)], capsys)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert str(broken) in err and message in err


def test_a_failed_run_keeps_the_earlier_report(report_dir, models, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in report_dir.iterdir()}
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    code, err = run_cli(["bench", str(models[0]), str(junk), "--report", str(report_dir)], capsys)
    assert code == 2 and "is not a readable ONNX model" in err
    assert {p.name: p.read_bytes() for p in report_dir.iterdir()} == before
    assert not [p for p in report_dir.parent.iterdir() if p.name.startswith(".")]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("unknown_provider", "--providers[1] must be 'cpu', 'cuda', 'cuda-graph' or 'tensorrt', got 'tpu'"),
        ("unavailable_provider", "is not available in this onnxruntime build"),
        ("wrong_shape", "but npz:"),
        ("bad_batch", "--batch-sizes[0] must be at least 1, got 0"),
        ("no_models", "MODELS is required"),
        ("zero_samples", "--accuracy-samples must be at least 1"),
        ("report_is_a_file", "exists and is not a folder; choose another --report"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_report(models, tmp_path, wide_npz, capsys, case, message):
    if case == "unavailable_provider" and HAS_CUDA:
        pytest.skip("this machine has the CUDA provider")
    report = tmp_path / "report"
    args = ["bench", str(models[0]), "--report", str(report), "--min-time", "0.01", "--no-memory"]
    if case == "missing":
        args[1] = str(tmp_path / "nope.onnx")
    elif case == "unknown_provider":
        args += ["--providers", "cpu,tpu"]
    elif case == "unavailable_provider":
        args += ["--providers", "cuda"]
    elif case == "wrong_shape":
        args += ["--data", f"npz:{wide_npz}"]
    elif case == "bad_batch":
        args += ["--batch-sizes", "0"]
    elif case == "no_models":
        args = ["bench", "--report", str(report)]
    elif case == "zero_samples":
        args += ["--accuracy-samples", "0"]
    elif case == "report_is_a_file":
        report.write_text("a file")
        args[args.index("--report") + 1] = str(report)
    code, err = run_cli(args, capsys)
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert report.is_file() if case == "report_is_a_file" else not report.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_the_baseline_is_measured_even_when_not_listed(models, tmp_path):
    report = bench(
        BenchConfig(models=[str(models[1])], baseline=str(models[0]), report=str(tmp_path / "r"), memory=False, **QUICK)
    )
    assert report["baseline"] == "m.onnx" and [m["name"] for m in report["models"]] == ["m.onnx", "m.int8.onnx"]


def test_a_single_model_is_timed_alone(models, tmp_path):
    report = bench(BenchConfig(models=[str(models[0])], report=str(tmp_path / "r"), memory=False, **QUICK))
    assert [r["verdict"] for r in report["rows"]] == ["baseline", "baseline"]
    assert all(r["runs"] >= 7 for r in report["rows"])


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime's CUDA execution provider and an NVIDIA GPU")
@pytest.mark.parametrize("include_copies", [False, True])
def test_cuda_provider_with_iobinding(models, tmp_path, include_copies):
    report = bench(
        BenchConfig(
            models=[str(m) for m in models],
            report=str(tmp_path / "r"),
            providers=["cpu", "cuda"],
            include_copies=include_copies,
            memory=False,
            **QUICK,
        )
    )
    cuda = report["models"][0]["providers"]["cuda"]
    assert cuda["placement"] and "CUDAExecutionProvider" in cuda["placement"]
    assert report["session"]["io_binding"] is (not include_copies)
    assert report["machine"]["gpus"]
    assert {r["provider"] for r in report["rows"]} == {"cpu", "cuda"}
