"""The ``compress`` command line: one short command per stage, each a thin layer over a function.

Errors a user can cause are a ``CompressError`` (or a Click usage error): one line on stderr,
exit status 2, no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import CompressError

DATA_HELP = (
    "digits (built in), mnist:DIR, fashion-mnist:DIR, npz:FILE (x_train, y_train, x_test, "
    "y_test) or folder:DIR (train/ and test/ with one sub-folder per class)"
)
MODEL_HELP = (
    "a zoo name (mlp, mlp-1200, cnn, resnet, resnet8, resnet14, resnet20), path/to/file.py:factory or "
    "package.module:factory"
)


def training_options(command):
    """Options shared by ``train`` and ``distill`` (the fields of TrainConfig)."""
    options = [
        click.option(
            "--model-arg",
            "model_args",
            multiple=True,
            metavar="KEY=VALUE",
            help="Keyword argument for the model factory (repeatable), e.g. hidden=1200,1200.",
        ),
        click.option("--data", default="digits", show_default=True, help=f"Dataset: {DATA_HELP}."),
        click.option(
            "--out",
            type=click.Path(dir_okay=False),
            help="Checkpoint to write (.pt); its manifest goes beside it (.pt.json).",
        ),
        click.option("--epochs", default=10, show_default=True, type=int),
        click.option("--batch-size", default=128, show_default=True, type=int),
        click.option("--lr", default=3e-3, show_default=True, type=float, help="Peak learning rate."),
        click.option("--optimizer", default="adamw", show_default=True, type=click.Choice(["adamw", "sgd"])),
        click.option("--momentum", default=0.9, show_default=True, type=float, help="SGD momentum."),
        click.option("--weight-decay", default=5e-4, show_default=True, type=float),
        click.option(
            "--schedule", default="onecycle", show_default=True, type=click.Choice(["onecycle", "cosine", "constant"])
        ),
        click.option("--label-smoothing", default=0.0, show_default=True, type=float),
        click.option(
            "--augment",
            default="none",
            show_default=True,
            type=click.Choice(["none", "shift"]),
            help="shift: random shifts of up to 2 px (1 px on images under 21 px).",
        ),
        click.option(
            "--val-fraction",
            default=0.1,
            show_default=True,
            type=float,
            help="Part of the training split held out for validation.",
        ),
        click.option(
            "--split-seed", default=0, show_default=True, type=int, help="Seed of the train/validation split."
        ),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed of initialisation and shuffling."),
        click.option(
            "--device",
            default="auto",
            show_default=True,
            type=click.Choice(["auto", "cpu", "cuda"]),
            help="cuda trains with bf16 autocast.",
        ),
        click.option("--resume", is_flag=True, help="Continue an interrupted run of the same --out."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _config_fields(kwargs: dict) -> dict:
    from .modelspec import parse_model_args

    if not kwargs.get("out"):
        raise CompressError("no output given; pass --out PATH.pt")
    kwargs["model_args"] = parse_model_args(kwargs["model_args"])
    return kwargs


def _print_result(manifest: dict, out: str, role: str) -> None:
    from .artifacts import manifest_path

    metrics = manifest["metrics"]
    n_test = manifest["data"]["sizes"]["test"]
    click.echo(
        f"{role}: test accuracy {100 * metrics['test_accuracy']:.2f}% "
        f"({metrics['test_errors']} errors of {n_test}), {metrics['params']:,} params, "
        f"{manifest['size_bytes'] / 1024:.1f} KiB, trained in {metrics['train_time_s']:.1f}s"
    )
    if metrics.get("teacher_test_accuracy") is not None:
        click.echo(f"teacher: test accuracy {100 * metrics['teacher_test_accuracy']:.2f}%")
    click.echo(f"wrote {out}")
    click.echo(f"wrote {manifest_path(out)}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="compress")
def cli():
    """Distil a small student from a teacher, export it to ONNX, and measure it."""


@cli.command()
@click.option("--model", default="resnet8", show_default=True, help=f"Model: {MODEL_HELP}.")
@training_options
def train(**kwargs):
    """Train a model (a teacher) on labelled data.

    Keeps the weights that did best on the validation split and writes them with a manifest.

    \b
    Example:
      compress train --model resnet8 --data mnist:data/mnist --epochs 10 --out runs/mnist/teacher.pt
    """
    from .train import TrainConfig
    from .train import train as run_training

    config = TrainConfig(**_config_fields(kwargs))
    _print_result(run_training(config), config.out, "model")


@cli.command()
@click.option(
    "--teacher",
    help="Teacher: a compress checkpoint (.pt), a TorchScript file, a "
    "torch.export program (.pt2) or an ONNX model (.onnx, logits only).",
)
@click.option("--student", "model", default="mlp", show_default=True, help=f"Student model: {MODEL_HELP}.")
@click.option(
    "--temperature",
    "-T",
    default=4.0,
    show_default=True,
    type=float,
    help="Softmax temperature of the soft targets (lower for very small students).",
)
@click.option(
    "--alpha",
    default=0.9,
    show_default=True,
    type=float,
    help="Weight of the teacher term; 1 - alpha goes to the hard labels.",
)
@click.option(
    "--loss",
    default="kl",
    show_default=True,
    type=click.Choice(["kl", "mse"]),
    help="kl: soft-target KL scaled by T²; mse: MSE between logits.",
)
@click.option(
    "--hint",
    "hints",
    multiple=True,
    metavar="TEACHER_LAYER:STUDENT_LAYER",
    help="FitNets hint: match an intermediate student layer to a teacher layer through a "
    "learned projection (repeatable).",
)
@click.option("--beta", default=1.0, show_default=True, type=float, help="Weight of each hint loss.")
@click.option(
    "--teacher-cache",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "memory", "disk", "off"]),
    help="Compute teacher outputs once and reuse them every epoch (not with --augment); "
    "auto: in memory, or memory-mapped on disk when over 1 GiB.",
)
@click.option(
    "--list-layers",
    "list_layers_of",
    metavar="MODEL",
    help="Print the layer names and output shapes of MODEL (a checkpoint or a model spec) "
    "for choosing --hint, and exit.",
)
@training_options
def distill(list_layers_of, hints, **kwargs):
    """Distil a teacher into a smaller student.

    \b
    Examples:
      compress distill --teacher runs/mnist/teacher.pt --student mlp --data mnist:data/mnist \\
                       --temperature 4 --alpha 0.9 --epochs 10 --out runs/mnist/student.pt
      compress distill --teacher teacher.onnx --student my_models.py:tiny_cnn --data digits \\
                       --out runs/digits/student.pt
      compress distill --list-layers runs/mnist/teacher.pt
    """
    from .distill.trainer import DistillConfig
    from .distill.trainer import distill as run_distillation

    if list_layers_of:
        _list_layers(list_layers_of, kwargs["data"], kwargs["model_args"])
        return
    config = DistillConfig(hints=list(hints), **_config_fields(kwargs))
    _print_result(run_distillation(config), config.out, "student")


def _list_layers(model: str, data: str, model_args: tuple[str, ...]) -> None:
    from .artifacts import load_checkpoint
    from .data import load_dataset
    from .modelspec import build_model, list_layers, model_from_checkpoint, parse_model_args

    if model.endswith(".onnx"):
        raise CompressError(
            "an ONNX model is a black box to distillation (logits only); "
            "list the layers of its PyTorch checkpoint instead"
        )
    if Path(model).suffix == ".pt" and Path(model).is_file():
        checkpoint = load_checkpoint(model)
        in_shape = tuple(checkpoint["in_shape"])
        module = model_from_checkpoint(checkpoint)
    else:
        dataset = load_dataset(data)
        in_shape = dataset.in_shape
        module = build_model(model, in_shape, dataset.num_classes, parse_model_args(model_args))
    click.echo(f"{'layer':<32} {'type':<20} {'output shape':<20} params")
    for layer in list_layers(module, in_shape):
        shape = "-" if layer["output_shape"] is None else "x".join(map(str, layer["output_shape"]))
        click.echo(f"{layer['name']:<32} {layer['type']:<20} {shape:<20} {layer['params']:,}")


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="ONNX model to write (.onnx); its manifest goes beside it (.onnx.json).",
)
@click.option("--data", help=f"Samples for the parity check (default: the checkpoint's data): {DATA_HELP}.")
@click.option(
    "--preprocessing",
    type=click.Choice(["fit", "scale", "raw"]),
    help="For a checkpoint without a manifest: how its inputs were normalised (see `compress quantize --help`).",
)
@click.option(
    "--opset", type=int, help="ONNX opset (default: the newest the exporter writes and the installed onnxruntime runs)."
)
@click.option("--static-batch", type=int, metavar="N", help="Fix the batch axis to N (default: dynamic).")
@click.option(
    "--exporter",
    default="dynamo",
    show_default=True,
    type=click.Choice(["dynamo", "torchscript"]),
    help="torch.onnx.export with torch.export (dynamo) or the TorchScript tracer.",
)
@click.option(
    "--parity/--no-parity",
    default=True,
    show_default=True,
    help="Compare ONNX Runtime with PyTorch on real samples at batch 1 and 7.",
)
@click.option("--atol", default=1e-4, show_default=True, type=float, help="Parity: absolute tolerance.")
@click.option("--rtol", default=1e-3, show_default=True, type=float, help="Parity: relative tolerance.")
@click.option(
    "--optimize",
    type=click.Choice(["basic", "extended", "all"]),
    help="Save ONNX Runtime's optimised graph as the artifact (all: also hardware-specific "
    "layouts, so run it on the same kind of CPU).",
)
@click.option(
    "--transformer",
    type=click.Choice(["bert", "bart", "gpt2", "t5", "vit", "clip", "unet", "vae", "phi"]),
    help="Run onnxruntime.transformers' optimizer (attention/LayerNorm/GELU fusions) for this model type.",
)
@click.option(
    "--num-heads", default=0, show_default=True, type=int, help="Attention heads, for --transformer (0: detect)."
)
@click.option(
    "--hidden-size", default=0, show_default=True, type=int, help="Hidden size, for --transformer (0: detect)."
)
def export(**kwargs):
    """Export a checkpoint to ONNX and check that ONNX Runtime computes what PyTorch does.

    \b
    Examples:
      compress export runs/mnist/student.pt --out runs/mnist/student.onnx
      compress export runs/mnist/teacher.pt --out runs/mnist/teacher.onnx --optimize extended
    """
    from .artifacts import manifest_path
    from .export import ExportConfig
    from .export import export as run_export

    manifest = run_export(ExportConfig(**kwargs))
    parity = manifest["parity"]
    if parity:
        batches = ", ".join(str(b["batch_size"]) for b in parity["batches"])
        click.echo(
            f"parity: max |diff| {parity['max_abs_diff']:.2g}, top-1 agreement "
            f"{100 * parity['top1_agreement']:.1f}% on {parity['samples']} samples at batch {batches}"
        )
    else:
        click.echo("parity: not checked (--no-parity)")
    onnx_info = manifest["onnx"]
    click.echo(
        f"onnx: opset {onnx_info['opset']}, {onnx_info['nodes']} nodes, "
        f"{manifest['size_bytes'] / 1024:.1f} KiB, batch axis "
        f"{'dynamic' if manifest['input_spec']['dynamic_axes'] else 'fixed'}"
    )
    click.echo(f"wrote {kwargs['out']}")
    click.echo(f"wrote {manifest_path(kwargs['out'])}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="int8 ONNX model to write (.onnx); its manifest goes beside it (.onnx.json).",
)
@click.option(
    "--data", help=f"Calibration and validation data (default: the data in the model's manifest): {DATA_HELP}."
)
@click.option(
    "--preprocessing",
    type=click.Choice(["fit", "scale", "raw"]),
    help="For a model without a manifest: how its inputs were normalised (fit: mean/std of "
    "the training split, as compress train does; scale: pixels to [0, 1]; raw).",
)
@click.option(
    "--mode",
    default="static",
    show_default=True,
    type=click.Choice(["static", "dynamic"]),
    help="static: activation ranges calibrated on --data; dynamic: computed at run time.",
)
@click.option(
    "--format",
    "format",
    default="qdq",
    show_default=True,
    type=click.Choice(["qdq", "qoperator"]),
    help="Static format: QuantizeLinear/DequantizeLinear pairs, or integer operators.",
)
@click.option(
    "--activation-type",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "u8", "s8"]),
    help="auto: what runs fast on this CPU (printed with the reason).",
)
@click.option("--weight-type", default="auto", show_default=True, type=click.Choice(["auto", "u8", "s8"]))
@click.option("--per-channel", is_flag=True, help="One scale per output channel of each weight.")
@click.option(
    "--calibration",
    default="minmax",
    show_default=True,
    type=click.Choice(["minmax", "entropy", "percentile"]),
    help="How activation ranges are set.",
)
@click.option(
    "--calibration-samples",
    default=512,
    show_default=True,
    type=int,
    help="Training samples that calibrate (static mode).",
)
@click.option(
    "--preprocess/--no-preprocess",
    default=True,
    show_default=True,
    help="Run onnxruntime's quant_pre_process (shape inference, optimisation) first.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    metavar="POINTS",
    help="Accuracy budget against fp32 on the validation split: keep the most sensitive "
    "nodes in float until it is met.",
)
@click.option(
    "--allow-over-budget",
    is_flag=True,
    help="Write the model even when the budget cannot be met (else: exit 2, nothing written).",
)
@click.option(
    "--search",
    is_flag=True,
    help="Try every sensible mode/format/type/per-channel setting, "
    "time each, keep the fastest within the budget (1 point unless --max-accuracy-drop).",
)
@click.option("--batch-size", default=64, show_default=True, type=int, help="Batch size of the timing.")
@click.option("--threads", type=int, help="Intra-op threads of the timing (default: onnxruntime's).")
@click.option("--seed", default=0, show_default=True, type=int, help="Which training samples calibrate.")
def quantize(**kwargs):
    """Quantize an ONNX model to int8 with onnxruntime.quantization, then check accuracy and speed.

    \b
    Examples:
      compress quantize runs/mnist/student.onnx --out runs/mnist/student.int8.onnx
      compress quantize runs/mnist/teacher.onnx --out runs/mnist/teacher.int8.onnx \\
                        --search --max-accuracy-drop 0.3
      compress quantize model.onnx --data mnist:DIR --preprocessing fit --mode dynamic --out model.int8.onnx
    """
    from .quantize import QuantizeConfig
    from .quantize import quantize as run_quantize

    def echo_progress(line: str) -> None:
        click.echo(line, err=True)

    config = QuantizeConfig(**kwargs)
    _print_quantized(run_quantize(config, log=echo_progress), config.out)


def _print_quantized(manifest: dict, out: str) -> None:
    from .artifacts import manifest_path

    q, m = manifest["quantization"], manifest["metrics"]
    click.echo(
        f"settings: {q['mode']}, {q['format']}, activations {q['activation_type']}, weights "
        f"{q['weight_type']}{', per-channel' if q['per_channel'] else ''}"
        f"{', reduce_range' if q['reduce_range'] else ''}"
        + (f", {q['calibration']} calibration on {q['calibration_samples']} samples" if q["mode"] == "static" else "")
    )
    for reason in q["reasons"]:
        click.echo(f"  why: {reason}")
    if q["search"]:
        click.echo(f"{'candidate':<42} {'accuracy':>9} {'p50 ms':>8} {'speed-up':>8}")
        for c in q["search"]:
            acc = "n/a" if c["accuracy"] is None else f"{100 * c['accuracy']:.2f}%"
            click.echo(f"{c['settings']:<42} {acc:>9} {c['p50_ms']:>8.3f} {c['speedup']:>7.2f}x")
    if q["excluded_nodes"]:
        click.echo(f"kept in float: {', '.join(q['excluded_nodes'])}")
    if m["float_accuracy"] is not None:
        click.echo(
            f"accuracy ({m['accuracy_split']}): fp32 {100 * m['float_accuracy']:.2f}% -> int8 "
            f"{100 * m['accuracy']:.2f}% (drop {m['accuracy_drop_points']:.2f} points)"
        )
    lat = m["latency"]
    click.echo(
        f"latency (batch {lat['batch_size']}, p50): fp32 {lat['float']['p50_ms']:.3f} ms -> int8 "
        f"{lat['int8']['p50_ms']:.3f} ms, {lat['speedup']:.2f}x "
        f"({lat['speedup_range'][0]:.2f}-{lat['speedup_range'][1]:.2f}x over {lat['rounds']} rounds)"
    )
    click.echo(f"size: {m['float_size_bytes'] / 1024:.1f} KiB -> {m['size_bytes'] / 1024:.1f} KiB")
    for warning in m["warnings"]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {out}")
    click.echo(f"wrote {manifest_path(out)}")


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Pruned checkpoint to write (.pt).")
@click.option("--amount", type=float, help="Fraction of each prunable layer's channels to remove (0-1).")
@click.option(
    "--target-macs",
    type=float,
    help="Prune in steps, recovering after each, until the MACs are at most this fraction of the original.",
)
@click.option("--target-params", type=float, help="As --target-macs, for the parameter count.")
@click.option(
    "--importance",
    default="l2",
    show_default=True,
    type=click.Choice(["l1", "l2", "taylor"]),
    help="Which channels go: smallest weight norm (l1/l2) or smallest weight x gradient (taylor).",
)
@click.option(
    "--round-to",
    default=8,
    show_default=True,
    type=int,
    help="Keep channel counts a multiple of this (odd widths can be slower than unpruned ones).",
)
@click.option(
    "--unstructured",
    is_flag=True,
    help="Zero the smallest weights instead of removing channels "
    "(sparsity only: no faster on ONNX Runtime's CPU provider).",
)
@click.option("--teacher", default="", help="Teacher for the recovery (default: the unpruned model itself).")
@click.option("--data", help=f"Data for the recovery (default: the checkpoint's): {DATA_HELP}.")
@click.option("--epochs", default=3, show_default=True, type=int, help="Recovery epochs after each pruning step.")
@click.option("--temperature", "-T", default=4.0, show_default=True, type=float)
@click.option("--alpha", default=0.9, show_default=True, type=float)
@click.option("--batch-size", default=128, show_default=True, type=int)
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Peak learning rate of the recovery.")
@click.option("--augment", default="none", show_default=True, type=click.Choice(["none", "shift"]))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
def prune(**kwargs):
    """Remove channels for real (Torch-Pruning), then recover accuracy by distillation.

    \b
    Examples:
      compress prune runs/mnist/student.pt --amount 0.5 --teacher runs/mnist/teacher.pt \\
                     --epochs 3 --out runs/mnist/student.pruned.pt
      compress prune runs/mnist/teacher.pt --target-macs 0.3 --importance taylor --out runs/mnist/teacher.pruned.pt
    """
    from .artifacts import manifest_path
    from .prune import PruneConfig
    from .prune import prune as run_prune

    manifest = run_prune(PruneConfig(**kwargs), log=lambda line: click.echo(line, err=True))
    p = manifest["pruning"]
    before, after = p["before"], p["after"]
    click.echo(f"pruning: {p['method']}, {len(p['steps'])} step(s)")
    click.echo(f"params {before['params']:,} -> {after['params']:,}, MACs {before['macs']:,} -> {after['macs']:,}")
    click.echo(
        f"test accuracy {100 * before['test_accuracy']:.2f}% -> {100 * p['steps'][-1]['test_accuracy_pruned']:.2f}% "
        f"pruned -> {100 * after['test_accuracy']:.2f}% after recovery"
    )
    if p["note"]:
        click.echo(f"note: {p['note']}")
    click.echo(f"wrote {kwargs['out']}")
    click.echo(f"wrote {manifest_path(kwargs['out'])}")


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CompressError(f"{option} takes comma-separated whole numbers, e.g. 1,64; got {text!r}") from None
    if not values:
        raise CompressError(f"{option} is empty; give e.g. 1,64")
    return values


@cli.command()
@click.argument("models", nargs=-1, type=click.Path(dir_okay=False))
@click.option(
    "--baseline", type=click.Path(dir_okay=False), help="The model the others are compared with (default: the first)."
)
@click.option("--data", help=f"Test data (default: each model's manifest data): {DATA_HELP}.")
@click.option(
    "--preprocessing",
    type=click.Choice(["fit", "scale", "raw"]),
    help="For models without a manifest: how their inputs were normalised.",
)
@click.option(
    "--providers", default="cpu", show_default=True, help="Execution providers, comma-separated: cpu, cuda, tensorrt."
)
@click.option("--batch-sizes", default="1,64", show_default=True)
@click.option("--threads", default="1", show_default=True, help="Intra-op thread counts, comma-separated.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False),
    help="Folder for report.json, report.md, report.html and plot.png.",
)
@click.option("--warmup", default=10, show_default=True, type=int, help="Untimed runs first.")
@click.option(
    "--min-runs", default=50, show_default=True, type=int, help="Timed runs per model and configuration, at least."
)
@click.option(
    "--min-time",
    "min_seconds",
    default=1.0,
    show_default=True,
    type=float,
    help="Seconds of timed runs per model and configuration, at least.",
)
@click.option(
    "--optimization",
    default="all",
    show_default=True,
    type=click.Choice(["disable", "basic", "extended", "all"]),
    help="ONNX Runtime graph optimisation.",
)
@click.option(
    "--include-copies",
    is_flag=True,
    help="GPU: time host-to-device and back copies too (default: IOBinding keeps data on the device).",
)
@click.option("--accuracy-samples", type=int, help="Test samples for accuracy (default: all).")
@click.option(
    "--memory/--no-memory",
    default=True,
    show_default=True,
    help="Measure each model's peak resident memory in a fresh process.",
)
@click.option(
    "--compare",
    "compare_paths",
    nargs=2,
    type=click.Path(),
    metavar="OLD NEW",
    help="Compare two report.json files instead: what got faster or slower beyond noise.",
)
def bench(models, baseline, providers, batch_sizes, threads, report_dir, compare_paths, **kwargs):
    """Latency and accuracy of ONNX models against a baseline, written up as a report.

    \b
    Examples:
      compress bench runs/mnist/teacher.onnx runs/mnist/student.onnx runs/mnist/student.int8.onnx \\
          --baseline runs/mnist/teacher.onnx --providers cpu,cuda --batch-sizes 1,64 --threads 1,2 \\
          --report reports/mnist
      compress bench --compare reports/old/report.json reports/new/report.json
    """
    from .bench.report import compare_reports, load_report, terminal_table, write_report
    from .bench.run import BenchConfig
    from .bench.run import bench as run_bench

    if compare_paths:
        if models:
            raise CompressError("--compare takes two reports and no models; run them separately")
        for change in compare_reports(load_report(compare_paths[0]), load_report(compare_paths[1])):
            click.echo(
                f"{change['model']:<28} {change['provider']:<5} batch {change['batch_size']:<4} "
                f"threads {change['threads']:<2} p50 {change['old_p50_ms']:.3f} -> "
                f"{change['new_p50_ms']:.3f} ms ({change['ratio']:.2f}x): {change['verdict']}"
            )
        return
    if not report_dir:
        raise CompressError("no report folder given; pass --report DIR")
    config = BenchConfig(
        models=list(models),
        baseline=baseline,
        report=report_dir,
        providers=providers.split(","),
        batch_sizes=_int_list(batch_sizes, "--batch-sizes"),
        threads=_int_list(threads, "--threads"),
        **kwargs,
    )
    report = run_bench(config, log=lambda line: click.echo(line, err=True))
    click.echo(terminal_table(report))
    for path in write_report(report, report_dir):
        click.echo(f"wrote {path}")


@cli.command(name="run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--data", help=f"Dataset instead of the recipe's data: {DATA_HELP}.")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder instead of the recipe's (runs/NAME).")
@click.option(
    "--force",
    multiple=True,
    metavar="STAGE",
    help="Run STAGE even if it is up to date (repeatable; 'all' for every stage).",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (each stage, its files, whether it runs) and exit.")
def run(recipe, data, out, force, dry_run):
    """Run a recipe: train or take a teacher, distil, prune, export, quantize and bench, in one folder.

    Stages whose settings and input files are unchanged since they last finished are skipped;
    an interrupted run continues where it stopped when the same command is run again.

    \b
    Examples:
      compress run recipes/demo.toml
      compress run recipes/mnist.toml --data mnist:data/mnist --dry-run
      compress run recipes/mnist.toml --force quantize
    """
    from .pipeline import build_plan, check_force, describe_stage, summary_table
    from .pipeline import dry_run as plan_only
    from .pipeline import run as run_plan
    from .recipe import load_recipe

    plan = build_plan(load_recipe(recipe, data=data, out=out))
    force = set(force)
    check_force(plan, force)
    if dry_run:
        click.echo(f"plan of {recipe} (run folder {plan.recipe.out}):")
        for number, decision in enumerate(plan_only(plan, force), start=1):
            verdict = f"runs: {decision.reason}" if decision.run else f"skipped: {decision.reason}"
            click.echo(f"{number:>2}. {decision.stage.name:<15} {verdict}")
            click.echo(f"    {describe_stage(decision.stage)}")
        return
    try:
        run_log = run_plan(plan, force, log=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        click.echo(
            f"interrupted: finished stages are kept in {plan.recipe.out}; run the same command "
            "again to continue (training and distillation resume from their last finished epoch)",
            err=True,
        )
        sys.exit(130)
    click.echo(summary_table(run_log["variants"]))
    click.echo(f"run log: {plan.log_path}")
    click.echo(f"report: {plan.report_dir / 'report.html'} (also report.md, report.json)")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit status 2."""
    try:
        cli.main(args=argv, prog_name="compress", standalone_mode=False)
    except CompressError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo(
            "interrupted: no half-written output was kept (train/distill keep finished "
            "epochs: run the same command with --resume to continue)",
            err=True,
        )
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
