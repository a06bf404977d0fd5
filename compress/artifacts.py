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
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import CompressError, foreign_errors
from .manifest import MANIFEST_FORMAT, future_format, to_dict, validate
from .typed_files import problem_line

CHECKPOINT_FORMAT = "compress-checkpoint/1"


def manifest_path(artifact: str | Path) -> Path:
    """``runs/student.pt`` -> ``runs/student.pt.json``; ``student.onnx`` -> ``student.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds.

    A crash or Ctrl-C inside the block leaves no file under the final name and removes the
    temporary one, so an earlier good artifact is never replaced by a half-written one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~current_umask())  # mkstemp makes 0600; artifacts get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staging_dir(final: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``final`` (same file system, so renames from it are atomic),
    removed on exit whatever happens: work in progress never shows under a final name."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


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
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
        return to_dict(validate(data))
    except ValidationError as exc:
        raise CompressError(
            f"manifest {path}: {problem_line(exc)}; re-create the artifact or restore its manifest"
        ) from None


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
    text = json.dumps(manifest, indent=2, sort_keys=False, default=_json_default) + "\n"
    try:
        validate(json.loads(text))
    except ValidationError as exc:
        raise RuntimeError(
            f"compress made an invalid manifest for {artifact} ({problem_line(exc)}); this is a bug in compress"
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
    return {"role": role, "path": str(Path(path).resolve()), "sha256": sha256_file(path)}


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a compress checkpoint safely (``weights_only=True``: nothing is unpickled as code)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CompressError(f"checkpoint {path} does not exist; check the path")
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
    return checkpoint
