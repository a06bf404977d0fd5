"""Artifacts on disk: checkpoints, their JSON manifests, and atomic writes.

Every artifact ``X.pt`` / ``X.onnx`` has a manifest ``X.pt.json`` / ``X.onnx.json`` beside it
(so a checkpoint and its export can share a stem) that says what made it,
from what, how to feed it (input spec, preprocessing, labels) and what has been measured of it.
Stages talk to each other only through these files; their schema is
:class:`compress.manifest.Manifest`, checked on every write (``write_manifest``) and read
(``read_manifest``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError

from .errors import CompressError, foreign_errors
from .manifest import MANIFEST_FORMAT, TaskRecord, future_format, to_dict, validate
from .typed_files import problem_line

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

CHECKPOINT_FORMAT = "compress-checkpoint/1"


def manifest_path(artifact: str | Path) -> Path:
    """``runs/student.pt`` -> ``runs/student.pt.json``; ``student.onnx`` -> ``student.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def resume_path(out: str | Path) -> Path:
    """Where the state of an unfinished run of ``out`` is kept: ``runs/student.pt`` -> ``runs/student.resume.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".resume.pt")


def check_outputs(outputs: dict[str, Path], inputs: dict[str, Path], folders: tuple[str, ...] = ()) -> None:
    """Before a stage starts: every output can be written, and none is another output or one of its inputs.

    ``outputs`` / ``inputs`` map a setting (``out``, ``checkpoint``) to its path; an output named in
    ``folders`` is a folder (bench's report), the others are files with a manifest beside them. The
    checks are the ones that would otherwise fail only after all the work, or overwrite what the
    stage reads: a folder where a file goes, a file where a folder goes, a folder that cannot be written.
    """
    sources = {path.resolve(): name for name, path in inputs.items()}
    sources.update({manifest_path(path).resolve(): name for name, path in inputs.items()})
    written: dict[Path, str] = {}
    for name, path in outputs.items():
        flag = "--" + name.replace("_", "-")
        other = written.setdefault(path.resolve(), flag)
        if other != flag:
            raise CompressError(f"{flag} {path} is also {other}; give each output a file of its own")
        if path.resolve() in sources:
            raise CompressError(
                f"{flag} {path} is the --{sources[path.resolve()].replace('_', '-')} it reads; "
                "write to another file, so that the input is kept"
            )
        if name in folders:
            if path.exists() and not path.is_dir():
                raise CompressError(f"{flag} {path} is a file, not a folder; give a folder to write into")
            files = [path / "report.json"]
        else:
            files = [path, manifest_path(path)]
        for file in files:
            if file.is_dir():
                raise CompressError(f"cannot write {file}: a folder is in the way; remove it or choose another {flag}")
        _check_folder_writable(path if name in folders else path.parent, flag)


def _check_folder_writable(folder: Path, flag: str) -> None:
    """The nearest existing folder on the way to ``folder`` takes new files (a probe file, removed)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CompressError(f"cannot write into {folder}: {existing} is a file, not a folder; choose another {flag}")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".compress-probe-"):
            pass
    except OSError as exc:
        raise CompressError(
            f"cannot write into {existing} ({exc.strerror or exc}); choose another {flag} or fix its permissions"
        ) from None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds.

    A crash, Ctrl-C or SIGTERM inside the block leaves no file under the final name and removes the
    temporary one, so an earlier good artifact is never replaced by a half-written one. One left by
    a process that was killed outright (SIGKILL) is removed by the next write of ``final``.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    tmp_path = Path(tmp)
    try:
        _hold(fd)
        os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; artifacts get the usual mode
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        os.close(fd)
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staging_dir(final: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``final`` (same file system, so renames from it are atomic),
    removed on exit whatever happens: work in progress never shows under a final name. One left by
    a process that was killed outright is removed by the next stage that writes ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    fd = os.open(staging, os.O_RDONLY)
    try:
        _hold(fd)
        yield staging
    finally:
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)


# Work in progress (``.NAME.XXXX.tmp`` beside NAME) is locked by the process writing it for as long as
# it lives: the operating system releases the lock however the process ends, so a lock that can be
# taken marks work left behind by a dead process (a process id would not: in a container the next
# run may get the same one).
def _hold(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):  # a file system without locks: the work is then never taken for stale
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def remove_stale_work(final: Path) -> None:
    """Remove the temporary files and folders of ``final`` that no living process holds."""
    if fcntl is None:  # Windows: files in use cannot be removed anyway
        return
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*.tmp"):
        try:
            fd = os.open(leftover, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a running process is writing it
            continue
        finally:
            os.close(fd)
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_manifest(artifact: str | Path, required: bool = False) -> dict[str, Any] | None:
    """The manifest beside ``artifact``, checked against :class:`compress.manifest.Manifest`, as a
    plain dict; None when there is none (an error if ``required``).

    A manifest that is not JSON, not an object, from a newer compress, or that lacks a key or
    has a wrong value (a damaged or hand-edited file) is a CompressError naming the file and the
    field, so a stage never trips over it halfway through.
    """
    path = manifest_path(artifact)
    if not path.exists():
        if required:
            raise CompressError(f"{artifact} has no manifest ({path.name}); it must be an artifact written by compress")
        return None
    try:
        data = json.loads(path.read_text(), parse_constant=_not_json)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise CompressError(
            f"manifest {path} is not valid JSON ({' '.join(str(exc).split())}); "
            "re-create the artifact or restore its manifest"
        ) from None
    except OSError as exc:
        raise CompressError(f"manifest {path} cannot be read ({exc.strerror or exc}); check its permissions") from None
    if not isinstance(data, dict):
        raise CompressError(
            f"manifest {path} is not a compress manifest (a JSON {_json_kind(data)}, "
            f"not an object of format {MANIFEST_FORMAT}); "
            "re-create the artifact or restore its manifest"
        )
    newer = future_format(data)
    if newer:
        raise CompressError(
            f"manifest {path} was written by a newer compress (format {newer}; this "
            f"one reads {MANIFEST_FORMAT}); upgrade compress to use this artifact"
        )
    try:
        manifest = to_dict(validate(data))
    except ValidationError as exc:
        raise CompressError(
            f"manifest {path}: {problem_line(exc)}; re-create the artifact or restore its manifest"
        ) from None
    artifact = Path(artifact)
    if manifest.get("sha256") and artifact.is_file() and cached_sha256(artifact) != manifest["sha256"]:
        raise CompressError(
            f"{artifact} is not the file its manifest {path.name} describes (their sha256 differ: a run was "
            "stopped between writing the two, or one was replaced); re-create it with the stage that made it"
        )
    return manifest


_SHA256_SEEN: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: Path) -> str:
    """sha256 of ``path``, hashed again only when its size or modification time changed."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_SEEN:
        _SHA256_SEEN[key] = sha256_file(path)
    return _SHA256_SEEN[key]


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON value")


def _json_kind(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def write_manifest(artifact: str | Path, manifest: dict[str, Any]) -> Path:
    """Check ``manifest`` against :class:`compress.manifest.Manifest`, then write it beside
    ``artifact`` atomically; returns its path.

    What is checked is what a reader will parse (the JSON text, round-tripped), so every
    manifest on disk reads back. A manifest that fails is a bug in compress, not the user's
    doing: a plain RuntimeError, and nothing is written.
    """
    text = _manifest_text(artifact, manifest)
    path = manifest_path(artifact)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _manifest_text(artifact: str | Path, manifest: dict[str, Any]) -> str:
    """``manifest`` as the JSON text to write, once it is known to validate (RuntimeError if not)."""
    try:
        # strict JSON: NaN and Infinity are not JSON, and other tools refuse them
        text = json.dumps(manifest, indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n"
        validate(json.loads(text))
    except ValueError as exc:  # pydantic's ValidationError is one
        raise RuntimeError(
            f"compress made an invalid manifest for {artifact} "
            f"({problem_line(exc) if isinstance(exc, ValidationError) else exc}); this is a bug in compress"
        ) from exc
    return text


def versions() -> dict[str, str]:
    """Versions of the software that shape an artifact, recorded in every manifest."""
    import numpy
    import torch

    from . import __version__

    found = {
        "compress": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }
    for name in ("onnx", "onnxruntime"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            pass
    return found


def new_manifest(artifact: str | Path, stage: str, config: dict[str, Any]) -> dict[str, Any]:
    """The common head of every manifest; stages fill in the rest."""
    return {
        "format": MANIFEST_FORMAT,
        "artifact": Path(artifact).name,
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "config": config,
        "inputs": [],
    }


def input_record(role: str, path: str | Path) -> dict[str, Any]:
    """An input of a stage: where it was and what it was (by hash)."""
    return {"role": role, "path": str(Path(path).resolve()), "sha256": cached_sha256(Path(path))}


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Write ``checkpoint`` (plain data and tensors only) and its manifest, each atomically.

    The checkpoint goes first; the manifest records its hash, so a manifest that names a
    different hash than the file beside it shows a torn pair.
    """
    import torch

    checkpoint = {"format": CHECKPOINT_FORMAT, **checkpoint}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            # through a file object, not the (random) temporary name, which torch.save would record
            # in the archive: the same weights then give the same bytes, and the same sha256
            torch.save(checkpoint, f)
        manifest["sha256"] = sha256_file(tmp)
        manifest["size_bytes"] = tmp.stat().st_size
        # checked before the checkpoint goes into place: an invalid manifest keeps the old pair
        text = _manifest_text(path, manifest)
    with atomic_path(manifest_path(path)) as tmp:
        tmp.write_text(text)


# Model files that are not compress checkpoints: what each is, and what to do with it instead.
_OTHER_MODELS = {
    "onnx": ("an ONNX model (protobuf)", "quantize or bench it directly"),
    "torchscript": (
        "a TorchScript model (a zip with code/)",
        "export it to ONNX with torch.onnx.export yourself (then quantize or bench it), "
        "or distil a compress student from it (compress distill --teacher {path})",
    ),
    "torch.export": (
        "a torch.export program (.pt2)",
        "export it to ONNX with torch.onnx.export yourself (then quantize or bench it), "
        "or distil a compress student from it (compress distill --teacher FILE.pt2 --trust-model-code)",
    ),
}
# ModelProto's first field is ir_version (field 1, a varint: tag 0x08); the next is one of fields 2-8 or 14
_ONNX_SECOND_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72}


def model_file_kind(path: Path) -> str | None:
    """``onnx``, ``torchscript`` or ``torch.export`` for a model file of that kind, by its content
    (not its name); None for anything else, compress checkpoints included."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            if any("/code/" in name or name.endswith("/constants.pkl") for name in names):
                return "torchscript"
            markers = ("/archive_format", "/models/model.json", "serialized_exported_program.json")
            return "torch.export" if any(name.endswith(markers) for name in names) else None
        with open(path, "rb") as file:
            head = file.read(3)
    except (OSError, zipfile.BadZipFile):
        return None  # torch.load says what is wrong with it
    onnx = len(head) == 3 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in _ONNX_SECOND_TAGS
    return "onnx" if onnx else None


def load_checkpoint(path: str | Path, command: str | None = None) -> dict[str, Any]:
    """Load a compress checkpoint safely (``weights_only=True``: nothing is unpickled as code) and check
    its shape (:class:`CheckpointHead`): a damaged or hostile file is one line naming the field.

    ``command`` (export, prune) names what takes the checkpoint when the file is a model of another kind."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CompressError(f"checkpoint {path} does not exist; check the path")
    kind = model_file_kind(path)
    if kind is not None:
        what, instead = _OTHER_MODELS[kind]
        wanted = "a compress checkpoint (.pt) written by train, distill or prune"
        said = f"{command} takes {wanted}; {path} is {what}" if command else f"{path} is {what}, not {wanted}"
        raise CompressError(f"{said} — {instead.format(path=path)}")
    # torch.load fails in many ways on damaged or foreign files
    with foreign_errors(
        f"{path} is not a readable compress checkpoint", "re-create it with `compress train` or `compress distill`"
    ):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CompressError(
            f"{path} is a torch file but not a compress checkpoint; "
            "for a TorchScript model save it with torch.jit.save and name it .pt/.ts"
        )
    try:
        CheckpointHead.model_validate(checkpoint)
    except ValidationError as exc:
        raise CompressError(
            f"checkpoint {path}: {problem_line(exc)}; re-create it with `compress train` or `compress distill`"
        ) from None
    return checkpoint


def _tensors(state: dict[str, Any]) -> dict[str, Any]:
    import torch

    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} is a {type(value).__name__}, not a tensor")
    return state


def _bounded_shape(shape: list[int]) -> list[int]:
    if math.prod(shape) > MAX_SAMPLE_ELEMENTS:
        raise ValueError(f"a sample of shape {shape} has more than {MAX_SAMPLE_ELEMENTS:,} values")
    return shape


# A checkpoint's per-sample shape decides what is allocated before its weights are checked.
MAX_SAMPLE_ELEMENTS = 1 << 28


class CheckpointHead(BaseModel):
    """What compress reads from a checkpoint besides tensors: checked before anything is built from it."""

    model_config = ConfigDict(extra="allow", strict=True)

    model_spec: str = Field(min_length=1, max_length=4096)
    model_args: dict[str, JsonValue]
    in_shape: Annotated[
        list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=8), AfterValidator(_bounded_shape)
    ]
    num_classes: int = Field(ge=1, le=1_000_000)
    task: Annotated[TaskRecord, Field(strict=False)] | None = None  # None: a classifier
    state_dict: Annotated[dict[str, Any], AfterValidator(_tensors)]
