"""What the latency harness of `compress bench` adds to a figure, against a bare session.run loop.

    python benchmarks/bench_overhead.py

For a trivial model (one Add on 4 floats: almost all of its latency is session.run's own
overhead) and a small one (a 64-256-256-10 MLP), in alternating rounds within one process:
  bare     N calls of session.run in a plain loop, timed as one block: mean per call;
  harness  the same session through compress.bench's timed call (latency.time_calls around the
           closure bench times), per-call clock reads included: mean and p50 per call.
The two sides alternate which goes first in each round.
The harness's overhead is harness - bare, in microseconds, per round; the median and range over
rounds go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
from common import RESULTS, machine, write_section
from onnx import TensorProto, helper, numpy_helper

from compress.measure.latency import time_calls
from compress.measure.runner import Loaded, make_call
from compress.onnx_io import OnnxClassifier, open_session

SECTION = "bench_overhead"


def trivial_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "one"], ["logits"])],
        "trivial",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "one")],
    )
    return _serialise(graph)


def small_model() -> bytes:
    rng = np.random.default_rng(0)
    widths = [64, 256, 256, 10]
    nodes, inits, x = [], [], "input"
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        inits += [
            numpy_helper.from_array(rng.normal(0, a**-0.5, (a, b)).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"),
        ]
        last = i == len(widths) - 2
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], ["logits" if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _serialise(graph)


def _serialise(graph) -> bytes:
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def measure(model: bytes, width: int, rounds: int, calls: int) -> dict:
    runner = OnnxClassifier(open_session(model, threads=1))
    batch = np.random.default_rng(0).normal(size=(1, width)).astype(np.float32)
    harness_call = make_call(Loaded(runner, "cpu", 0.0), batch, include_copies=False)
    session, outputs, feeds = runner.session, [runner.output_name], {runner.input_name: batch}
    for _ in range(200):
        session.run(outputs, feeds)
    bare_mean, harness_mean, harness_p50 = [], [], []

    def bare() -> None:
        start = time.perf_counter_ns()
        for _ in range(calls):
            session.run(outputs, feeds)
        bare_mean.append((time.perf_counter_ns() - start) / calls / 1e3)

    def harness() -> None:
        times = time_calls(harness_call, warmup=0, min_runs=calls, min_seconds=0, max_runs=calls) * 1e6
        harness_mean.append(float(times.mean()))
        harness_p50.append(float(np.median(times)))

    for r in range(rounds):  # which side goes first alternates, so neither always runs warmer
        for side in (bare, harness) if r % 2 == 0 else (harness, bare):
            side()
    bare, mean, p50 = map(np.asarray, (bare_mean, harness_mean, harness_p50))
    return {
        "bare_us": float(np.median(bare)),
        "harness_mean_us": float(np.median(mean)),
        "harness_p50_us": float(np.median(p50)),
        "overhead_mean_us": _spread(mean - bare),
        "overhead_p50_us": _spread(p50 - bare),
    }


def _spread(values: np.ndarray) -> tuple[float, float, float]:
    return float(np.median(values)), float(values.min()), float(values.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--calls", type=int, default=2000, help="session.run calls per round and side")
    parser.add_argument("--results", default=str(RESULTS))
    options = parser.parse_args()
    lines = [
        "| model | bare loop, µs/call | harness mean, µs | harness p50, µs | overhead of the mean, µs "
        "| overhead of the p50, µs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, model, width in (
        ("trivial (one Add, 4 floats)", trivial_model(), 4),
        ("small (MLP 64-256-256-10)", small_model(), 64),
    ):
        r = measure(model, width, options.rounds, options.calls)
        mean, p50 = r["overhead_mean_us"], r["overhead_p50_us"]
        lines.append(
            f"| {name} | {r['bare_us']:.2f} | {r['harness_mean_us']:.2f} | {r['harness_p50_us']:.2f} "
            f"| {mean[0]:+.2f} ({mean[1]:+.2f} to {mean[2]:+.2f}) "
            f"| {p50[0]:+.2f} ({p50[1]:+.2f} to {p50[2]:+.2f}) |"
        )
        print(lines[-1], flush=True)
    body = [
        "## Latency harness overhead (`benchmarks/bench_overhead.py`)",
        "",
        f"Command: `python benchmarks/bench_overhead.py` ({time.strftime('%Y-%m-%d')}; "
        f"{options.rounds} alternating rounds of {options.calls} calls per side, batch 1, 1 thread).",
        f"Machine: {machine()}.",
        "",
        "Bare: `session.run` in a plain loop timed as one block (mean per call). Harness: the call "
        "`compress bench` times, through `latency.time_calls` (a clock read around every call). "
        "Overhead = harness − bare per round: median (lowest to highest round).",
        "",
        *lines,
    ]
    write_section(Path(options.results), SECTION, body)


if __name__ == "__main__":
    main()
