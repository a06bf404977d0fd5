"""The ``compress`` command line: one command per stage, generated from the stage's config.

Each field of a stage's config is a flag (``min_time`` -> ``--min-time``) with the field's type,
default and help, so flags and configs cannot drift apart. Only the flags a user gives are
passed on; the rest take the config's defaults. Errors a user can cause are a ``CompressError``
(or a Click usage error): one line on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import click
from click.core import ParameterSource

from .errors import CompressError
from .stages import STAGES, Stage
from .stages.base import build_or_raise, cli_of, settable

if typing.TYPE_CHECKING:
    from .recipe import Recipe


def flag_of(config: type, name: str) -> str:
    """The flag a field is known by on the command line (``min_time`` -> ``--min-time``)."""
    spec = cli_of(config, name)
    if spec.argument:
        return name.upper()
    return spec.flags[0] if spec.flags else "--" + name.replace("_", "-")


def _option(config: type, name: str) -> click.Parameter:
    field, spec = config.model_fields[name], cli_of(config, name)
    annotation = _without_none(field.annotation)
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    if spec.argument:
        many = typing.get_origin(annotation) is list
        return click.Argument([name], nargs=-1 if many else 1, required=False, metavar=name.upper())
    flags = list(spec.flags) or [flag_of(config, name)]
    common = {"help": field.description, "metavar": spec.metavar}
    if annotation is bool:
        flag = flags[0]
        if default:
            return click.Option([f"{flag}/--no-{flag[2:]}", name], default=True, show_default=True, **common)
        return click.Option([*flags, name], is_flag=True, default=False, **common)
    if spec.repeat:
        return click.Option([*flags, name], multiple=True, **common)
    if typing.get_origin(annotation) is list:  # comma-separated; the field's parser makes the list
        shown = ",".join(str(v) for v in default) if default else None
        return click.Option([*flags, name], type=str, default=shown, show_default=shown is not None, **common)
    if typing.get_origin(annotation) is Literal:
        kind: Any = click.Choice([str(v) for v in typing.get_args(annotation)])
    else:
        kind = annotation if annotation in (int, float, str) else str
    return click.Option([*flags, name], type=kind, default=default, show_default=default is not None, **common)


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def stage_command(stage: Stage) -> click.Command:
    """The Click command of a stage: its config's fields as flags, its shortcuts, its summary."""
    config = stage.config
    fields = settable(config)
    params = [_option(config, name) for name in fields]
    params += [
        click.Option([s.flag, s.flag[2:].replace("-", "_")], nargs=s.nargs, metavar=s.metavar, help=s.help)
        for s in stage.shortcuts
    ]

    def callback(**given: Any) -> None:
        context = click.get_current_context()
        chosen = {
            name: value
            for name, value in given.items()
            if context.get_parameter_source(name) is not ParameterSource.DEFAULT and value not in ((), None)
        }
        values = {name: _parsed(config, name, value) for name, value in chosen.items() if name in fields}
        for shortcut in stage.shortcuts:
            key = shortcut.flag[2:].replace("-", "_")
            if key in chosen:
                for line in shortcut.action(chosen[key], values):
                    click.echo(line)
                return
        run_stage(stage, build_or_raise(config, values, lambda field: flag_of(config, field), "option"))

    return click.Command(
        stage.name, params=params, callback=callback, help=stage.help, short_help=stage.help.splitlines()[0]
    )


def _parsed(config: type, name: str, value: Any) -> Any:
    spec = cli_of(config, name)
    if spec.parse is not None:
        try:
            return spec.parse(value)
        except ValueError as exc:
            raise CompressError(f"{flag_of(config, name)} must be {exc}") from None
    if isinstance(value, tuple):
        return list(value)
    return value


def run_stage(stage: Stage, config: Any) -> None:
    """Run a stage and say what came of it: its summary, then every file written."""
    from .artifacts import manifest_path
    from .launch import reports

    result = stage.execute(config)
    if not reports():  # under torchrun the first process speaks for all
        return
    for line in stage.summary(result):
        click.echo(line)
    for name in stage.files(config)[1]:
        path = Path(getattr(config, name))
        written = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path, manifest_path(path)]
        for file in written:
            click.echo(f"wrote {file}")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="compress")
def cli():
    """Distil a small student from a teacher, export it to ONNX, and measure it."""


for _stage in STAGES.values():
    cli.add_command(stage_command(_stage))


@cli.command(name="run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--data", help="Dataset instead of the recipe's data (a --data source of compress train).")
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
    from .recipe import load_recipe

    loaded = load_recipe(recipe, data=data, out=out)
    try:
        _run_recipe(loaded, recipe, set(force), dry_run)
    except CompressError as exc:
        raise CompressError(loaded.mask(str(exc))) from None


def _run_recipe(loaded: Recipe, recipe: str, force: set[str], dry_run: bool) -> None:
    from .pipeline import build_plan, check_force, describe_stage, summary_table
    from .pipeline import dry_run as plan_only
    from .pipeline import run as run_plan

    plan = build_plan(loaded)
    check_force(plan, force)
    if dry_run:
        click.echo(f"plan of {recipe} (run folder {plan.recipe.out}):")
        for number, decision in enumerate(plan_only(plan, force), start=1):
            verdict = f"runs: {decision.reason}" if decision.run else f"skipped: {decision.reason}"
            click.echo(f"{number:>2}. {decision.step.name:<15} {verdict}")
            click.echo(f"    {describe_stage(decision.step)}")
        return
    try:
        run_log = run_plan(plan, force)
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


class _LevelPrefix(logging.Formatter):
    """Progress lines as they are; ``warning: …`` before a warning."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


@contextlib.contextmanager
def _progress_on_stderr() -> Iterator[None]:
    """Progress and warnings of the ``compress`` loggers as plain lines on stderr, written above a live
    progress bar rather than through it (tqdm's logging redirect)."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger("compress")
    saved = logger.handlers, logger.level, logger.propagate
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LevelPrefix())
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            yield
    finally:
        logger.handlers, logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (sent by timeout, docker stop, Slurm) stops a command as Ctrl-C does: temporary files
    removed, earlier results kept, the same message."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit status 2."""
    try:
        with _sigterm_as_interrupt(), _progress_on_stderr():
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
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo(
            "interrupted: no half-written output was kept (train/distill keep finished "
            "epochs: run the same command with --resume to continue)",
            err=True,
        )
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:  # the machine, not compress: a disk that filled up, a file that went away
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}; check the path, its permissions and free space", err=True)
        sys.exit(2)
    except MemoryError:
        click.echo("error: out of memory; use smaller --batch-size or data, or a machine with more memory", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
