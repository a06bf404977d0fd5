"""int8 of a real third-party ONNX model: does compress quantize ship a destroyed model?

    python benchmarks/quantize_foreign.py --data ../shared/data/mnist

The model is PaddleOCR's text-orientation classifier (a MobileNet exported from PaddlePaddle, softmax
head, dynamic height and width), as shipped in the `rapidocr-onnxruntime` wheel, downloaded here with
`pip download` (never committed). Its data is made from MNIST: strips of four test digits, dark on
white, 48x192 like the text lines it reads, half of them turned by 180 degrees (label 0 or 180),
normalised as PaddleOCR does ((x/255 - 0.5) / 0.5), written as an npz next to the model.

Three int8 models from the same fp32 model and calibration data: onnxruntime.quantization's
`quantize_static` with its defaults; `compress quantize` with every op type quantized (what compress
did before fidelity was checked: the first candidate its manifest records as judged); and compress's
default now. Each is compared with fp32 on the held-out strips (top-1 agreement, accuracy) and timed
in rounds interleaved with fp32 at batch 1 and 64. Writes a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from common import RESULTS, commands_block, machine, write_section

from compress.artifacts import manifest_path
from compress.measure.fidelity import top1_agreement
from compress.measure.latency import compare
from compress.onnx_io import OnnxClassifier, open_session

SECTION = "quantize_foreign"
WORK = Path("runs/bench/quantize_foreign")
WHEEL = "rapidocr-onnxruntime==1.4.4"
MODEL = "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"
STRIPS, TRAIN = 1600, 1000  # strips made, of which calibrate (the rest: compress's val split and the test)


def fetch_model() -> Path:
    target = WORK / "cls.onnx"
    if not target.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(WORK)], check=True)
        wheel = next(WORK.glob("rapidocr_onnxruntime-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            target.write_bytes(archive.read(MODEL))
    return target


def make_strips(mnist: Path) -> Path:
    from PIL import Image

    with gzip.open(mnist / "t10k-images-idx3-ubyte.gz") as f:
        digits = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    rng = np.random.default_rng(0)
    strips = np.stack(
        [
            np.concatenate([np.asarray(Image.fromarray(255 - digits[i]).resize((48, 48))) for i in picks], axis=1)
            for picks in rng.choice(len(digits), (STRIPS, 4))
        ]
    ).astype(np.float32)
    labels = np.arange(STRIPS) % 2
    strips[labels == 1] = strips[labels == 1][:, ::-1, ::-1]
    x = np.repeat(((strips / 255 - 0.5) / 0.5)[:, None], 3, axis=1)
    path = WORK / "strips.npz"
    np.savez(path, x_train=x[:TRAIN], y_train=labels[:TRAIN], x_test=x[TRAIN:], y_test=labels[TRAIN:])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the MNIST IDX files")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.time()
    fp32, strips = fetch_model(), make_strips(args.data)
    commands = []

    def run(name: str, extra: list[str]) -> Path:
        out = WORK / f"cls.{name}.onnx"
        command = ["compress", "quantize", str(fp32), "--data", f"npz:{strips}", "--preprocessing", "raw"]
        command += ["--out", str(out), *extra]
        commands.append(shlex.join(command))
        subprocess.run([sys.executable, "-m", "compress.cli", *command[1:]], check=True)
        return out

    compress_default = run("compress", [])
    judged = json.loads(manifest_path(compress_default).read_text())["quantization"]["judged"]
    every_op = run("every-op", ["--allow-over-budget", "--max-accuracy-drop", "99"])
    ort_default = WORK / "cls.ort-default.onnx"
    calibration = np.load(strips)["x_train"][:512]
    quantize_with_onnxruntime_defaults(fp32, ort_default, calibration)
    commands.append(f"onnxruntime.quantization.quantize_static({fp32}, {ort_default}, 512 strips)  # defaults")

    test = np.load(strips)
    x, y = test["x_test"], test["y_test"]
    reference = OnnxClassifier(open_session(fp32), "fp32").predict(x)
    rows = [f"| fp32 | {100 * float((reference.argmax(1) == y).mean()):.2f} | 100.00 | – | – |"]
    for name, path in [
        ("onnxruntime quantize_static defaults", ort_default),
        ("compress, every op quantized (before)", every_op),
        ("compress default (now)", compress_default),
    ]:
        runner = OnnxClassifier(open_session(path), name)
        outputs = runner.predict(x)
        speed = {b: speedup(fp32, path, x[:b], args.rounds) for b in (1, 64)}
        rows.append(
            f"| {name} | {100 * float((outputs.argmax(1) == y).mean()):.2f} | "
            f"{100 * top1_agreement(reference, outputs):.2f} | {speed[1]} | {speed[64]} |"
        )
    steps = "; ".join(f"{j['settings']}, {j['float_nodes']} in float: {j['loss_points']:.2f}" for j in judged)
    body = [
        "## int8 of a third-party ONNX model (`benchmarks/quantize_foreign.py`)",
        "",
        f"Command: `python benchmarks/quantize_foreign.py --data ../shared/data/mnist` "
        f"({time.strftime('%Y-%m-%d')}, {(time.time() - started) / 60:.1f} min). Machine: {machine()}.",
        "",
        f"PaddleOCR's text-orientation classifier from the `{WHEEL}` wheel, on {STRIPS - TRAIN} held-out "
        "MNIST strips (half turned by 180 degrees); its fp32 accuracy on them is low because it reads "
        "Chinese text lines, not digits — agreement with fp32 is the figure that matters. Speed-up: "
        f"median of {args.rounds} rounds interleaved with fp32 (range in brackets), onnxruntime's default threads "
        "per session.",
        "",
        "| model | accuracy % | top-1 agreement with fp32 % | speed-up b1 | speed-up b64 |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"compress's steps (accuracy points lost on its validation split): {steps}.",
        "",
        *commands_block(commands),
    ]
    write_section(RESULTS, SECTION, body)


def quantize_with_onnxruntime_defaults(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import quantize_static

    class Reader:
        def __init__(self):
            self.batches = iter({"x": calibration[i : i + 32]} for i in range(0, len(calibration), 32))

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(fp32), str(out), Reader())  # as its docs' first example: no quant_pre_process


def speedup(fp32: Path, int8: Path, x: np.ndarray, rounds: int) -> str:
    sessions = {"fp32": open_session(fp32), "int8": open_session(int8)}
    calls = {name: (lambda s=s: s.run(None, {"x": x})) for name, s in sessions.items()}
    result = compare(calls, baseline="fp32", batch_size=len(x), rounds=rounds, seconds_per_round=0.5)
    median, low, high = result.speedup("int8")
    return f"{median:.2f}x ({low:.2f}–{high:.2f})"


if __name__ == "__main__":
    main()
