"""int8 from compress against its peers, on the same fp32 models, the same calibration samples and one harness.

    python benchmarks/quantize_peers.py --data ../shared/data/mnist [--with-olive]

Models (fp32 ONNX):

* the MNIST ResNet-8 teacher and distilled 256-256 MLP student of `recipes/mnist.toml` (made here with
  `compress run` into runs/bench/quantize_peers/mnist, or reused when up to date), fed the 10,000 test
  images through their manifests' preprocessing;
* PaddleOCR's text-orientation classifier from the `rapidocr-onnxruntime` 1.4.4 wheel, fed MNIST digit
  strips exactly as benchmarks/quantize_foreign.py makes them (its own functions);
* Google's Magika file-type classifier from the `magika` 1.0.3 wheel, fed real files of this machine (the
  Python installation, /usr/share, /usr/lib), turned into the model's 2,048 byte features by the wheel's
  own Python code; no labels, so its fidelity is top-1 agreement with fp32 alone.

Methods, each from the same fp32 file and the same calibration samples (the 512 that `compress quantize`
calibrates on by default, in batches of 32): onnxruntime's `quantize_static` with every default;
`compress quantize` with its defaults and with `--search`; NNCF's `nncf.quantize` with the PERFORMANCE and
MIXED presets (compress's thin wrapper, no exclusions: NNCF as a user calling it directly gets it); and
Olive's `OnnxStaticQuantization` pass at its defaults (with --with-olive, or when /tmp/olive-venv exists).

Then, in this one process, after every int8 model exists: top-1 agreement with fp32 (and accuracy where
there are labels) on held-out samples no quantizer saw, and p50 latency at batch 1 and 64 on one thread,
every variant of a model timed in the same interleaved rounds with fp32. Every step skips what it already
wrote (--fresh redoes them). Writes a section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import REPO, RESULTS, commands_block, machine, write_section

from compress.data import load_dataset_for
from compress.data.dataset import split_indices
from compress.errors import CompressError, first_line
from compress.feeds import Samples
from compress.measure.fidelity import classifier_accuracy, top1_agreement
from compress.measure.latency import compare
from compress.onnx_io import OnnxModel, model_info, open_session, quiet
from compress.stages.quantize import DEFAULT_BUDGET_POINTS

SECTION = "quantize_peers"
WORK = Path("runs/bench/quantize_peers")
CALIBRATION = 512  # compress quantize's default --calibration-samples; every method gets these samples
BATCH = 32  # calibration batch (compress's, for a model without a fixed batch size)
MAGIKA_WHEEL = "magika==1.0.3"
MAGIKA_MODEL = "magika/models/standard_v3_3/model.onnx"
MAGIKA_ROOTS = [Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"]
MAGIKA_ROOTS += [Path("/usr/share"), Path("/usr/lib")]
MAGIKA_PER_EXTENSION = 12  # files drawn per file-name extension, so that no one kind floods the sample
MAGIKA_HELD_OUT = 1000
OLIVE_VENV = Path("/tmp/olive-venv")
OLIVE = "olive-ai==0.13.0"
BATCH_SIZES = (1, 64)
MAGIKA_BATCH_SIZES = (1, 16)  # Magika at batch 64: 0.3-1 s a call on one thread
METHODS = ["ort-default", "compress", "compress --search", "nncf-performance", "nncf-mixed", "olive"]
PEERS = ("ort-default", "nncf-performance", "nncf-mixed", "olive")
OVER_BUDGET = "compress, --allow-over-budget"  # a row only where compress refused


@dataclass
class Bench:
    """One fp32 model, its data and what came of each method."""

    key: str
    title: str
    fp32: Path
    compress_data: list[str]  # the --data (and --preprocessing) arguments of compress quantize
    input_name: str
    calibration: np.ndarray
    x: np.ndarray  # held-out samples
    y: np.ndarray | None  # their labels, if any
    about: str
    batch_sizes: tuple = BATCH_SIZES
    outcomes: dict = field(default_factory=dict)

    def out(self, method: str) -> Path:
        slug = method.replace("compress --search", "compress-search").replace(OVER_BUDGET, "compress-over-budget")
        return WORK / self.key / f"{self.fp32.stem}.{slug}.onnx"

    def batches(self) -> list[dict[str, np.ndarray]]:
        return [
            {self.input_name: self.calibration[i : i + BATCH]}
            for i in range(0, len(self.calibration) - BATCH + 1, BATCH)
        ]


def compress_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compress.cli", *args], capture_output=True, text=True)


def input_name(path: Path) -> str:
    return open_session(path).get_inputs()[0].name


# --- the models and their data ------------------------------------------------------------------------


def mnist_benches(mnist: Path, commands: list[str]) -> list[Bench]:
    """The recipe's teacher and student, fed as their manifests say; compress's calibration samples."""
    folder = WORK / "mnist"
    spec = f"mnist:{mnist.resolve()}"
    command = ["compress", "run", "recipes/mnist.toml", "--data", spec, "--out", str(folder)]
    commands.append(shlex.join(command))
    print(f"$ {shlex.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", "compress.cli", *command[1:]], check=True)  # skips what is up to date
    benches = []
    for role in ("teacher", "student"):
        fp32 = folder / f"{role}.onnx"
        manifest = json.loads(fp32.with_name(fp32.name + ".json").read_text())
        dataset = load_dataset_for(str(fp32), manifest, spec)
        benches.append(
            Bench(
                key=role,
                title=f"MNIST {role} (`recipes/mnist.toml`)",
                fp32=fp32,
                compress_data=["--data", spec],
                input_name=input_name(fp32),
                calibration=compress_calibration(dataset.x_train),
                x=dataset.x_test,
                y=dataset.y_test,
                about=(
                    f"The {role} of `compress run recipes/mnist.toml` "
                    f"({'ResNet-8' if role == 'teacher' else '256-256 MLP, distilled'}), "
                    "exported fp32; held out: the 10,000 MNIST test images through its manifest's preprocessing"
                ),
            )
        )
    return benches


def compress_calibration(x_train: np.ndarray) -> np.ndarray:
    """The samples `compress quantize` calibrates on by default (--seed 0): 512 of its training split,
    drawn as compress/stages/quantize.py's _calibration_samples draws them."""
    n = min(CALIBRATION, len(x_train))
    return np.ascontiguousarray(x_train[np.sort(np.random.default_rng(0).choice(len(x_train), n, replace=False))])


def strips_bench(mnist: Path, commands: list[str]) -> Bench:
    """PaddleOCR's orientation classifier and MNIST strips, made by quantize_foreign.py's own functions."""
    import quantize_foreign

    folder = WORK / "ppocr-cls"
    folder.mkdir(parents=True, exist_ok=True)
    quantize_foreign.WORK = folder
    fp32 = quantize_foreign.fetch_model()
    commands.append(f"pip download --no-deps {quantize_foreign.WHEEL}  # then {quantize_foreign.MODEL} out of it")
    strips = folder / "strips.npz"
    if not strips.exists():
        quantize_foreign.make_strips(mnist)
    spec = f"npz:{strips}"
    dataset = load_dataset_for(str(fp32), None, spec, "raw")
    return Bench(
        key="ppocr-cls",
        title="PaddleOCR text-orientation classifier (`rapidocr-onnxruntime` 1.4.4)",
        fp32=fp32,
        compress_data=["--data", spec, "--preprocessing", "raw"],
        input_name=input_name(fp32),
        calibration=compress_calibration(dataset.x_train),
        x=dataset.x_test,
        y=dataset.y_test,
        about=(
            f"`{quantize_foreign.MODEL}` from the `{quantize_foreign.WHEEL}` wheel (a MobileNet, softmax over "
            "0/180 degrees); data: benchmarks/quantize_foreign.py's strips of four MNIST test digits, 48x192, half "
            f"turned by 180 degrees (the label), normalised as PaddleOCR does; {quantize_foreign.STRIPS} strips, of "
            f"which the first {quantize_foreign.TRAIN} go to `compress quantize` (its split: 90% to calibrate from, "
            f"10% to judge) and the other {quantize_foreign.STRIPS - quantize_foreign.TRAIN} are held out"
        ),
    )


def magika_bench(commands: list[str]) -> Bench:
    """Magika's model, and real files of this machine as its features, by the wheel's own code."""
    folder = WORK / "magika"
    folder.mkdir(parents=True, exist_ok=True)
    wheel_dir = folder / "wheel"
    fp32 = folder / "magika.onnx"
    commands.append(f"pip download --no-deps {MAGIKA_WHEEL}  # unzipped; {MAGIKA_MODEL} out of it")
    if not fp32.exists():
        if not list(folder.glob("magika-*.whl")):
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", MAGIKA_WHEEL, "-d", str(folder)], check=True
            )
        with zipfile.ZipFile(next(folder.glob("magika-*.whl"))) as archive:
            archive.extractall(wheel_dir)
        shutil.copy(wheel_dir / MAGIKA_MODEL, fp32)
    quantize_npz, held_out_npz, info = folder / "quantize.npz", folder / "held_out.npz", folder / "files.json"
    if not (quantize_npz.exists() and held_out_npz.exists() and info.exists()):
        make_magika_data(wheel_dir, quantize_npz, held_out_npz, info)
    files = json.loads(info.read_text())
    arrays = np.load(quantize_npz)["bytes"]
    train, _ = split_indices(len(arrays), 0.2, 0)  # compress's calibration split of named arrays
    return Bench(
        key="magika",
        title="Magika file-type classifier (`magika` 1.0.3)",
        fp32=fp32,
        compress_data=["--data", f"npz:{quantize_npz}"],
        input_name="bytes",
        calibration=compress_calibration(arrays[train]),
        x=np.load(held_out_npz)["bytes"],
        y=None,
        batch_sizes=MAGIKA_BATCH_SIZES,
        about=(
            f"`{MAGIKA_MODEL}` from the `{MAGIKA_WHEEL}` wheel (input `bytes` int32 [N, 2048], softmax over 214 "
            f"content types); data: {files['total']} distinct real files of this machine ({files['roots']}; "
            f"{files['extensions']} file-name extensions, at most {MAGIKA_PER_EXTENSION} files drawn per extension), "
            "made into features by the wheel's own Python code (`Magika._get_result_or_features_from_path`: the "
            "first and last 4,096 bytes, stripped of whitespace, 1,024 of each kept, padded with token 256; files "
            "Magika would not run its model on, under 8 meaningful bytes, left out) and concatenated as "
            "`Magika._get_raw_predictions` does. "
            f"{files['quantize']} go to `compress quantize` (its split: 512 calibrate, 128 judge), "
            f"{files['held_out']} are held out; no labels (accuracy n/a)"
        ),
    )


def make_magika_data(wheel_dir: Path, quantize_npz: Path, held_out_npz: Path, info: Path) -> None:
    sys.path.insert(0, str(wheel_dir.resolve()))
    from magika.magika import Magika

    magika = Magika()
    config = magika._model_config
    by_extension = collections.defaultdict(list)
    for root in MAGIKA_ROOTS:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder) / name
                if path.is_symlink() or not path.is_file():
                    continue
                by_extension[path.suffix.lower() or "(none)"].append(path)
    rng = np.random.default_rng(0)
    pool = []
    for extension in sorted(by_extension):
        paths = sorted(by_extension[extension])
        pool += [paths[i] for i in rng.permutation(len(paths))[:MAGIKA_PER_EXTENSION]]
    wanted = 640 + MAGIKA_HELD_OUT  # 640: compress's split of named arrays gives 512 to calibrate, 128 to judge
    rows, seen, used = [], set(), []
    for index in rng.permutation(len(pool)):
        path = pool[index]
        try:
            _, features = magika._get_result_or_features_from_path(path)
        except OSError:
            continue
        if features is None:  # Magika answers without its model (empty, tiny, whitespace)
            continue
        row = np.asarray(features.beg[: config.beg_size] + features.end[-config.end_size :], np.int32)
        if row.tobytes() in seen:
            continue
        seen.add(row.tobytes())
        rows.append(row)
        used.append(path)
        if len(rows) == wanted:
            break
    if len(rows) < wanted:
        sys.exit(f"error: only {len(rows)} usable files under {MAGIKA_ROOTS}; {wanted} wanted")
    x = np.stack(rows)
    np.savez(quantize_npz, bytes=x[:640])
    np.savez(held_out_npz, bytes=x[640:])
    info.write_text(
        json.dumps(
            {
                "total": len(rows),
                "quantize": 640,
                "held_out": len(rows) - 640,
                "roots": ", ".join(map(str, MAGIKA_ROOTS)),
                "extensions": len({p.suffix.lower() for p in used}),
                "paths": [str(p) for p in used],
            },
            indent=1,
        )
    )


# --- the methods -----------------------------------------------------------------------------------------


def ort_defaults() -> str:
    from onnxruntime.quantization import quantize_static

    p = inspect.signature(quantize_static).parameters
    return (
        f"{p['quant_format'].default.name}, activations {p['activation_type'].default.name}, weights "
        f"{p['weight_type'].default.name}, per_channel={p['per_channel'].default}, "
        f"{p['calibrate_method'].default.name}, every op type, no quant_pre_process"
    )


def run_ort_default(bench: Bench, out: Path) -> str:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, batches):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    with quiet():  # its warnings (no pre-processing, biases not initializers) off the terminal
        quantize_static(str(bench.fp32), str(out), Reader(bench.batches()))
    return "written"


def run_compress(bench: Bench, out: Path, extra: list[str]) -> str:
    result = compress_cli(["quantize", str(bench.fp32), "--out", str(out), *bench.compress_data, *extra])
    # the staging folder of a failed run is gone: name its candidate files by their own name
    stderr = re.sub(r"\S*/\.[^/\s]+\.tmp/", "<staging>/", result.stderr)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if result.returncode == 0:
        return "written"
    if result.returncode == 2 and errors and "misses the fidelity budget" in errors[-1]:
        return "refused: over budget (" + errors[-1].removeprefix("error: ") + ")"
    return f"failed (exit {result.returncode}): " + (errors[-1] if errors else stderr.strip()[-300:])


def run_nncf(bench: Bench, out: Path, preset: str) -> str:
    from compress.nncf_backend import quantize_with_nncf

    try:  # a model onnxruntime cannot load is refused by quantize_with_nncf itself
        quantize_with_nncf(bench.fp32, out, bench.batches(), preset)
    except CompressError as exc:
        return f"failed: {exc}"
    return "written"


OLIVE_USER_SCRIPT = """
import numpy as np
from olive.data.registry import Registry


@Registry.register_dataset()
def calibration_samples(**kwargs):
    x = np.load({npz!r})["x"]
    return [({{{name!r}: x[i]}}, 0) for i in range(len(x))]
"""

OLIVE_RUN = """
import json, shutil, sys
from pathlib import Path

import onnx
import olive
from olive.hardware.accelerator import AcceleratorSpec
from olive.passes.onnx.quantization import OnnxStaticQuantization
from olive.workflows import run

work = Path({work!r})
config = {{
    "input_model": {{"type": "ONNXModel", "model_path": {fp32!r}}},
    "systems": {{
        "local_system": {{
            "type": "LocalSystem",
            "accelerators": [{{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}}],
        }}
    }},
    "data_configs": [
        {{
            "name": "calibration",
            "type": "DataContainer",
            "user_script": str(work / "user_script.py"),
            "load_dataset_config": {{"type": "calibration_samples"}},
            "dataloader_config": {{"batch_size": {batch}}},
        }}
    ],
    "passes": {{"quantize": {{"type": "OnnxStaticQuantization", "data_config": "calibration"}}}},
    "host": "local_system",
    "target": "local_system",
    "output_dir": str(work / "out"),
    "cache_dir": str(work / "cache"),
    "log_severity_level": 3,
}}
run(config)
found = sorted((work / "out").rglob("*.onnx"))
if not found:
    sys.exit("Olive wrote no ONNX model")
onnx.save(onnx.load(str(found[0])), {out!r}, save_as_external_data=False)
spec = AcceleratorSpec("cpu", "CPUExecutionProvider")
defaults = {{
    name: str(getattr(param.default_value, "value", param.default_value))
    for name, param in OnnxStaticQuantization._default_config(spec).items()
    if name in ("quant_format", "activation_type", "precision", "per_channel", "reduce_range", "calibrate_method",
                "quant_preprocess", "prepare_qdq_config", "activation_symmetric", "weight_symmetric")
}}
print("OLIVE", json.dumps({{"version": olive.__version__, "defaults": defaults}}))
"""


def olive_python() -> Path:
    return OLIVE_VENV / "bin" / "python"


def make_olive_venv() -> None:
    """A throwaway venv that sees this one's packages (torch, onnx, onnxruntime) and adds Olive's own."""
    if olive_python().exists():
        return
    import site

    subprocess.run([sys.executable, "-m", "venv", str(OLIVE_VENV)], check=True)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (OLIVE_VENV / "lib" / version / "site-packages" / "compress-main.pth").write_text(site.getsitepackages()[0] + "\n")
    subprocess.run([str(olive_python()), "-m", "pip", "install", OLIVE], check=True)


def run_olive(bench: Bench, out: Path, notes: dict) -> str:
    if not olive_python().exists():
        return f"Olive not run: no {OLIVE_VENV} (pass --with-olive to pip install {OLIVE} into it)"
    with tempfile.TemporaryDirectory(prefix="olive-") as tmp:
        work = Path(tmp)
        np.savez(work / "calibration.npz", x=bench.calibration)
        (work / "user_script.py").write_text(
            OLIVE_USER_SCRIPT.format(npz=str(work / "calibration.npz"), name=bench.input_name)
        )
        (work / "run.py").write_text(
            OLIVE_RUN.format(work=str(work), fp32=str(bench.fp32.resolve()), out=str(out.resolve()), batch=BATCH)
        )
        (work / "home").mkdir()
        env = {**os.environ, "HOME": str(work / "home"), "OLIVE_DISABLE_TELEMETRY": "1"}
        result = subprocess.run(
            [str(olive_python()), str(work / "run.py")], capture_output=True, text=True, env=env, cwd=tmp
        )
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        return f"failed (exit {result.returncode}): {lines[-1] if lines else '?'}"
    for line in result.stdout.splitlines():
        if line.startswith("OLIVE "):
            notes["olive"] = json.loads(line.removeprefix("OLIVE "))
    return "written"


def quantize_all(bench: Bench, store: dict, notes: dict, fresh: bool) -> None:
    """Every method on ``bench`` (skipping those done before); outcomes kept in ``store``."""
    done = store.setdefault(bench.key, {})
    methods = list(METHODS)
    for method in methods:
        out = bench.out(method)
        previous = done.get(method)
        if (
            previous
            and not fresh
            and (previous["outcome"] != "written" or out.exists())
            and not previous["outcome"].startswith("Olive not run")
        ):
            if method == "compress" and previous["outcome"].startswith("refused"):
                methods.append(OVER_BUDGET)
            continue
        print(f"{bench.key}: {method}", flush=True)
        started = time.perf_counter()
        try:
            if method == "ort-default":
                outcome = run_ort_default(bench, out)
            elif method == "compress":
                outcome = run_compress(bench, out, [])
                if outcome.startswith("refused"):
                    methods.append(OVER_BUDGET)
            elif method == "compress --search":
                outcome = run_compress(bench, out, ["--search"])
            elif method == OVER_BUDGET:
                outcome = run_compress(bench, out, ["--allow-over-budget"])
            elif method.startswith("nncf-"):
                outcome = run_nncf(bench, out, method.removeprefix("nncf-"))
            else:
                outcome = run_olive(bench, out, notes)
        except Exception as exc:  # a peer's own exception: the outcome, not the end of the benchmark
            outcome = f"failed: {type(exc).__name__}: {first_line(exc)}"
        done[method] = {"outcome": outcome, "seconds": round(time.perf_counter() - started, 1)}
        print(f"  {outcome} ({done[method]['seconds']} s)", flush=True)
        (WORK / "outcomes.json").write_text(json.dumps(store, indent=1))


def method_commands(bench: Bench) -> list[str]:
    lines = []
    for method in [*METHODS, OVER_BUDGET]:
        out = bench.out(method)
        if method.startswith("compress"):
            extra = {"compress": [], "compress --search": ["--search"], OVER_BUDGET: ["--allow-over-budget"]}[method]
            if method == OVER_BUDGET and method not in bench.outcomes:
                continue
            lines.append(
                shlex.join(["compress", "quantize", str(bench.fp32), "--out", str(out), *bench.compress_data, *extra])
            )
        elif method == "ort-default":
            lines.append(
                f"onnxruntime.quantization.quantize_static({bench.fp32}, {out}, reader)  # every default; "
                f"the {len(bench.calibration)} calibration samples in batches of {BATCH}"
            )
        elif method.startswith("nncf-"):
            lines.append(
                f"compress.nncf_backend.quantize_with_nncf({bench.fp32}, {out}, batches, preset={method[5:]!r})  "
                f"# nncf.quantize(model, nncf.Dataset(batches), preset=QuantizationPreset.{method[5:].upper()}, "
                "subset_size=len(batches)), telemetry off"
            )
        else:
            lines.append(
                f"{olive_python()} run.py  # olive.workflows.run: ONNXModel {bench.fp32} -> OnnxStaticQuantization "
                f"(defaults), DataContainer of the same samples, batch_size {BATCH}; "
                "HOME=<temp>, OLIVE_DISABLE_TELEMETRY=1"
            )
    return lines


# --- measurement -----------------------------------------------------------------------------------------


def measure(bench: Bench, rounds: int, seconds: float) -> dict:
    """Fidelity and size of every written variant, and latency of all of them in shared interleaved rounds."""
    paths = {"fp32": bench.fp32}
    for method, found in bench.outcomes.items():
        if found["outcome"] == "written":
            paths[method] = bench.out(method)
    figures = {name: {"size": model_info(path)["size_bytes"]} for name, path in paths.items()}
    held_out = Samples({bench.input_name: bench.x})
    reference = None
    for name, path in paths.items():
        output = OnnxModel(open_session(path, threads=2), name).predict(held_out)[0]
        reference = output if reference is None else reference
        figures[name]["agreement"] = top1_agreement(reference, output)
        figures[name]["accuracy"] = classifier_accuracy(output, bench.y)
        figures[name]["classes"] = len(np.unique(output.argmax(1)))
    for b in bench.batch_sizes:
        feed = Samples({bench.input_name: np.ascontiguousarray(bench.x[:b])})
        calls = {name: OnnxModel(open_session(path, threads=1), name).call(feed) for name, path in paths.items()}
        result = compare(calls, baseline="fp32", batch_size=b, rounds=rounds, seconds_per_round=seconds)
        for name in paths:
            figures[name][f"p50 b{b}"] = result.stats[name].p50_ms
            figures[name][f"speedup b{b}"] = result.speedup(name) if name != "fp32" else (1.0, 1.0, 1.0)
        print(f"  {bench.key}: timed batch {b}", flush=True)
    return figures


def table(bench: Bench, figures: dict) -> list[str]:
    speed = " | ".join(f"speed-up b{b} (range)" for b in bench.batch_sizes)
    p50 = " | ".join(f"p50 ms b{b}" for b in bench.batch_sizes)
    lines = [
        f"| variant | outcome | top-1 agreement % | accuracy % | size KiB | {speed} | {p50} | quantize s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ["fp32", *bench.outcomes]:
        found = bench.outcomes.get(name, {"outcome": "reference", "seconds": None})
        outcome = found["outcome"] if name == "fp32" or found["outcome"] != "written" else describe(bench, name)
        f = figures.get(name)
        cells = [name, outcome]
        if f is None:
            cells += ["–"] * 7
        else:
            accuracy = "n/a" if f["accuracy"] is None else f"{100 * f['accuracy']:.2f}"
            cells += [f"{100 * f['agreement']:.2f}", accuracy, f"{f['size'] / 1024:.0f}"]
            for b in bench.batch_sizes:
                ratio, low, high = f[f"speedup b{b}"]
                cells.append("baseline" if name == "fp32" else f"**{ratio:.2f}x** ({low:.2f}–{high:.2f})")
            cells += [f"{f[f'p50 b{b}']:.3f}" for b in bench.batch_sizes]
        cells.append("–" if found["seconds"] is None else f"{found['seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def compress_steps(bench: Bench) -> list[str]:
    """What compress did, from the manifests it wrote: each setting it judged, and what --search tried."""
    lines = []
    for method in ("compress", "compress --search", OVER_BUDGET):
        path = bench.out(method)
        if bench.outcomes.get(method, {}).get("outcome") != "written":
            continue
        q = json.loads(path.with_name(path.name + ".json").read_text())["quantization"]
        steps = "; ".join(f"{j['settings']}, {j['float_nodes']} in float: {j['loss_points']:.2f}" for j in q["judged"])
        c = q["coverage"]
        line = (
            f"- `{method}` judged (points lost on its own validation split): {steps}; the model written has "
            f"{c['int8_compute']} int8 and {c['float_compute']} float compute nodes, "
            f"{c['conversions']} Q/DQ conversions."
        )
        if q.get("search"):
            tried = ", ".join(f"{t['settings']} {t['loss_points']:.2f} pts {t['speedup']:.2f}x" for t in q["search"])
            line += f" Its search (own timing, batch 64, onnxruntime's default threads): {tried}."
        lines.append(line)
    return lines


def describe(bench: Bench, method: str) -> str:
    """What a written model is: compress's chosen settings from its manifest, the others' defaults."""
    if method.startswith("compress"):
        manifest = json.loads(bench.out(method).with_name(bench.out(method).name + ".json").read_text())
        q = manifest["quantization"]
        settings = f"{q['mode']} {q['format']} {q['activation_type']}{q['weight_type']}"
        settings += " per-channel" if q["per_channel"] else ""
        kept = len(q["excluded_nodes"])
        settings += f", {kept} node{'s' if kept > 1 else ''} kept in float" if kept else ""
        settings += f", only {'/'.join(q['op_types'])}" if q["op_types"] else ""
        if q["over_budget"]:
            settings += f", over budget ({q['judged'][-1]['loss_points']:.2f} points on its split)"
        return f"written: {settings}"
    return "written"


def verdict(bench: Bench, figures: dict) -> list[str]:
    """Is each model compress wrote at least as faithful and as fast as every peer's? Where not, by how much,
    and where compress is the more faithful one."""
    lines = []
    peers = [name for name in PEERS if name in figures]
    n = len(bench.x)
    for mine in ("compress", "compress --search", OVER_BUDGET):
        if mine not in bench.outcomes:
            continue
        if mine not in figures:
            lines.append(f"- {bench.key}, `{mine}`: {bench.outcomes[mine]['outcome']} — no model to compare.")
            continue
        m = figures[mine]
        worse, noise, better, accuracy, unfaithful = [], [], [], [], []
        for peer in peers:
            p = figures[peer]
            gap = round((m["agreement"] - p["agreement"]) * n)
            shown = f"{100 * m['agreement']:.2f}% vs {peer}'s {100 * p['agreement']:.2f}%"
            if gap < 0:
                worse.append(f"less faithful than {peer} ({shown} agreement, {-gap} of {n:,} samples)")
            elif gap > 0:
                better.append(f"{peer} ({shown}, {gap} of {n:,} samples)")
            if m["accuracy"] is not None and p["accuracy"] > m["accuracy"]:  # labels: a note, not fidelity
                gap = round((p["accuracy"] - m["accuracy"]) * n)
                accuracy.append(f"{100 * m['accuracy']:.2f}% vs {peer}'s {100 * p['accuracy']:.2f}% ({gap} of {n:,})")
            # a peer more than compress's fidelity budget less faithful does not make a faster alternative
            comparable = p["agreement"] >= m["agreement"] - DEFAULT_BUDGET_POINTS / 100
            for b in bench.batch_sizes:
                ratio, low, high = m[f"speedup b{b}"]
                other, other_low, _ = p[f"speedup b{b}"]
                if ratio >= other:
                    continue
                if not comparable:
                    unfaithful.append(
                        f"{peer} at b{b} ({other:.2f}x vs {ratio:.2f}x, but "
                        f"{100 * (m['agreement'] - p['agreement']):.1f} points less faithful)"
                    )
                elif high >= other_low:
                    noise.append(f"b{b} {ratio:.2f}x vs {peer}'s {other:.2f}x")
                else:
                    worse.append(
                        f"**slower** than {peer} at b{b} ({ratio:.2f}x, at most {high:.2f}x, vs {other:.2f}x, at "
                        f"least {other_low:.2f}x)"
                    )
        sizes = " and ".join(f"b{b}" for b in bench.batch_sizes)
        if not peers:
            head = "no peer wrote a model to compare with"
        elif worse:
            head = "**no** — " + "; ".join(worse)
        elif noise:
            head = f"yes within noise — never less faithful; at {sizes} never slower beyond the rounds' ranges"
        elif unfaithful:
            head = (
                f"yes — at least as faithful as every peer, and no peer within {DEFAULT_BUDGET_POINTS:g} point of its "
                f"fidelity is faster at {sizes}"
            )
        else:
            head = f"yes — at least as faithful and at least as fast as every peer ({', '.join(peers)}) at {sizes}"
        parts = [head]
        if noise:
            parts.append("Slower by the median round but inside the ranges: " + ", ".join(noise))
        if better:
            parts.append("More faithful than " + ", ".join(better))
        if unfaithful:
            parts.append(
                f"Faster, but more than the {DEFAULT_BUDGET_POINTS:g}-point fidelity budget less faithful (not counted "
                "as a faster alternative): " + ", ".join(unfaithful)
            )
        if accuracy:
            parts.append("Less accurate on the labels than a peer: " + ", ".join(accuracy))
        below = [f"b{b} {m[f'speedup b{b}'][0]:.2f}x" for b in bench.batch_sizes if m[f"speedup b{b}"][2] < 1.0]
        if below:
            parts.append(f"Slower than fp32 in every round at {', '.join(below)}")
        lines.append(f"- {bench.key}, `{mine}`: " + ". ".join(parts) + ".")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of the MNIST IDX files")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--seconds", type=float, default=0.3, help="seconds per variant per round")
    parser.add_argument("--with-olive", action="store_true", help=f"pip install {OLIVE} into {OLIVE_VENV} first")
    parser.add_argument("--fresh", action="store_true", help="quantize again even where a model exists")
    parser.add_argument(
        "--only", nargs="*", help="only these models (of teacher, student, ppocr-cls, magika); for trials"
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"error: MNIST folder {args.data} not found; pass --data DIR")
    started = time.time()
    args.data = args.data.resolve()
    os.chdir(REPO)  # the work folder and the commands shown are relative to the repository
    WORK.mkdir(parents=True, exist_ok=True)
    if args.with_olive:
        make_olive_venv()
    commands: list[str] = []
    wanted = set(args.only or ["teacher", "student", "ppocr-cls", "magika"])
    benches = mnist_benches(args.data, commands) if wanted & {"teacher", "student"} else []
    benches += [strips_bench(args.data, commands)] if "ppocr-cls" in wanted else []
    benches += [magika_bench(commands)] if "magika" in wanted else []
    benches = [b for b in benches if b.key in wanted]
    store_path = WORK / "outcomes.json"
    store = json.loads(store_path.read_text()) if store_path.exists() else {}
    notes = store.setdefault("notes", {})
    for bench in benches:
        (WORK / bench.key).mkdir(parents=True, exist_ok=True)
        quantize_all(bench, store, notes, args.fresh)
        bench.outcomes = store[bench.key]
    prepared = time.time()
    sections = []
    for bench in benches:
        print(f"measuring {bench.key}", flush=True)
        figures = measure(bench, args.rounds, args.seconds)
        rows, verdicts = table(bench, figures), verdict(bench, figures)
        print("\n".join([bench.title, *rows, *verdicts, ""]), flush=True)
        classes = figures["fp32"]["classes"]
        sections += [
            f"### {bench.title}",
            "",
            f"{bench.about}. Calibration: the same {len(bench.calibration)} samples for every method. "
            f"fp32 predicts {classes} distinct classes on the {len(bench.x):,} held-out samples.",
            "",
            *rows,
            "",
            "Verdict, computed from the table: is the model compress wrote at least as faithful to fp32 (top-1 "
            "agreement, sample for sample; accuracy on labels is noted, not judged) and at least as fast (median "
            'round; "inside the ranges" where the two min–max ranges overlap) as every peer\'s model that '
            f"onnxruntime runs? A peer more than compress's fidelity budget ({DEFAULT_BUDGET_POINTS:g} point) less "
            "faithful is no faster alternative: its speed is listed, not counted.",
            "",
            *verdicts,
            "",
            *compress_steps(bench),
            "",
        ]
        for line in method_commands(bench):
            commands.append(line)
    write(args, benches, sections, commands, notes, started, prepared)


def write(args, benches, sections, commands, notes, started, prepared) -> None:
    import nncf
    import onnxruntime

    olive = notes.get("olive")
    olive_line = (
        f"Olive {olive['version']} ({OLIVE}, in a throwaway venv over this one's packages), `OnnxStaticQuantization` "
        f"at its defaults: {', '.join(f'{k}={v}' for k, v in olive['defaults'].items())} (with prepare_qdq_config "
        "it calls onnxruntime's `get_qdq_config`, every op type, then `quantize_static`)"
        if olive
        else f"Olive not run: no {OLIVE_VENV} (pass --with-olive)"
    )
    body = [
        "## int8 from compress against its peers (`benchmarks/quantize_peers.py`)",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/quantize_peers.py', *sys.argv[1:]])}` "
        f"({time.strftime('%Y-%m-%d')}; {(time.time() - started) / 60:.1f} min, of which measuring "
        f"{(time.time() - prepared) / 60:.1f} min; "
        + (
            "every int8 model made in this run; "
            if args.fresh
            else "int8 models (and outcomes) found from an earlier run reused; "
        )
        + "the recipe's models, the wheels and the data sets reused where an earlier run made them).",
        f"Machine: {machine()}; onnxruntime {onnxruntime.__version__}, NNCF {nncf.__version__}.",
        "",
        "Every method quantizes the same fp32 file with the same calibration samples (the ones `compress quantize` "
        f"draws by default: {CALIBRATION} of its training split, batches of {BATCH}):",
        "",
        "- `ort-default`: `onnxruntime.quantization.quantize_static(fp32, out, reader)`, nothing else "
        f"({ort_defaults()}).",
        "- `compress`: `compress quantize` defaults (static; activation/weight types for this CPU; fidelity budget 1 "
        "point on its own validation split, narrowing or refusing over it); `compress --search`: the same with "
        "`--search` (every mode/format/type/per-channel setting, each timed at batch 64 on onnxruntime's default "
        "threads, fastest within budget kept, or among those as fast within its spread the most faithful).",
        "- `nncf-performance`, `nncf-mixed`: `nncf.quantize` with that preset, no ignored scope, every calibration "
        "batch (compress.nncf_backend.quantize_with_nncf: telemetry off, nothing else changed).",
        f"- `olive`: {olive_line}.",
        "",
        "Fidelity: top-1 agreement with fp32 on held-out samples no method calibrated or judged on (ties of fp32 "
        "kept, `compress.measure.fidelity.top1_agreement`); accuracy where there are labels. Latency: p50 of "
        "`session.run` on 1 intra-op thread (sequential execution, all graph optimisations), batch 1 and 64 "
        "(Magika: 1 and 16, to keep its rounds short: fp32 takes 0.3-1 s a batch of 64); for "
        f"each model and batch size every variant is timed with fp32 in the same {args.rounds} interleaved rounds "
        f"of {args.seconds} s (`compress.measure.latency.compare`); speed-up = fp32 p50 / variant p50 per round, "
        "median with the lowest and highest round in brackets. The machine is shared, so rounds vary.",
        "",
        *sections,
        *commands_block(commands),
    ]
    write_section(RESULTS, SECTION, body)


if __name__ == "__main__":
    main()
