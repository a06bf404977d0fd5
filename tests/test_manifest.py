"""The manifest schema: every manifest compress writes validates, and a damaged or hand-edited one
is refused on reading with one line naming the file and the field, before a stage does anything."""

import json

import pytest

from compress.artifacts import manifest_path, read_manifest, write_manifest
from compress.cli import main
from compress.errors import CompressError
from compress.manifest import MANIFEST_FORMAT, Manifest
from compress.stages.train import TrainConfig, train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A one-epoch checkpoint on digits: a real manifest, made in about a second."""
    out = tmp_path_factory.mktemp("manifest") / "t.pt"
    train(TrainConfig(out=str(out), model="mlp", model_args={"hidden": [8]}, epochs=1, device="cpu"))
    return out


@pytest.fixture
def copy(checkpoint, tmp_path):
    """A fresh copy of the checkpoint and its manifest, to damage."""
    path = tmp_path / "t.pt"
    path.write_bytes(checkpoint.read_bytes())
    manifest_path(path).write_bytes(manifest_path(checkpoint).read_bytes())
    return path


def test_a_written_manifest_validates(checkpoint):
    data = json.loads(manifest_path(checkpoint).read_text())
    manifest = Manifest.model_validate(data)
    assert manifest.format == MANIFEST_FORMAT == "compress-manifest/1"
    assert manifest.stage == "train" and manifest.artifact == "t.pt"
    assert manifest.model.spec == "mlp" and manifest.model.params > 0
    assert manifest.input_spec.shape[0] is None and manifest.input_spec.dynamic_axes == {"0": "batch"}
    assert 0 <= manifest.metrics.test_accuracy <= 1
    assert manifest.data.sizes.test > 0 and len(manifest.labels) == manifest.data.num_classes


def test_read_manifest_returns_the_plain_dict_as_written(checkpoint):
    data = json.loads(manifest_path(checkpoint).read_text())
    read = read_manifest(checkpoint)
    assert read == data and list(read) == list(data)
    assert (read.get("data") or {}).get("spec") == "digits"
    assert read["metrics"]["history"] == data["metrics"]["history"]  # stage-specific extras kept
    assert read_manifest(checkpoint.with_name("absent.pt")) is None
    with pytest.raises(CompressError, match="has no manifest"):
        read_manifest(checkpoint.with_name("absent.pt"), required=True)


def test_write_manifest_refuses_an_invalid_manifest_as_a_bug(checkpoint, tmp_path):
    data = json.loads(manifest_path(checkpoint).read_text())
    target = tmp_path / "w.pt"
    assert write_manifest(target, data) == manifest_path(target)
    assert read_manifest(target) == data
    data["metrics"]["test_accuracy"] = 2.0
    with pytest.raises(RuntimeError, match=r"metrics\.test_accuracy.*bug in compress") as info:
        write_manifest(tmp_path / "bad.pt", data)
    assert not isinstance(info.value, CompressError)
    assert not manifest_path(tmp_path / "bad.pt").exists()


def _edit(path, change):
    data = json.loads(manifest_path(path).read_text())
    change(data)
    manifest_path(path).write_text(json.dumps(data))


def _set(*keys_value):
    *keys, value = keys_value

    def change(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


DAMAGE = {
    "wrong type": (_set("model", "params", "many"), ["model.params", "valid integer"]),
    "accuracy out of bounds": (
        _set("metrics", "test_accuracy", 1.5),
        ["metrics.test_accuracy", "less than or equal to 1"],
    ),
    "missing key": (lambda d: d.pop("input_spec"), ["input_spec", "Field required"]),
    "missing nested key": (lambda d: d["data"].pop("fingerprint"), ["data.fingerprint", "Field required"]),
    "bad list item": (_set("preprocessing", "std", [0.0]), ["preprocessing.std[0]", "greater than 0"]),
    "bad hash": (_set("sha256", "abc"), ["sha256", "should match pattern"]),
    "unknown stage": (_set("stage", "bake"), ["stage", "'train'"]),
    "unknown key": (_set("colour", "blue"), ["colour", "Extra inputs are not permitted"]),
    "future format": (_set("format", "compress-manifest/2"), ["newer compress", "compress-manifest/2", "upgrade"]),
    "foreign format": (_set("format", "something-else/1"), ["format", "compress-manifest/1"]),
}


def _export_error(path, capsys):
    out = path.with_name("t.onnx")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert not out.exists() and not manifest_path(out).exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", DAMAGE)
def test_a_hand_edited_manifest_is_one_line_naming_file_and_field(copy, capsys, case):
    change, expected = DAMAGE[case]
    _edit(copy, change)
    line = _export_error(copy, capsys)
    assert f"manifest {manifest_path(copy)}" in line
    for text in expected:
        assert text in line


@pytest.mark.parametrize(
    "text, expected", [("{not json", "not valid JSON"), ("[1, 2, 3]", "a JSON list"), ('"a string"', "a JSON string")]
)
def test_a_manifest_that_is_not_a_json_object_is_refused(copy, capsys, text, expected):
    manifest_path(copy).write_text(text)
    line = _export_error(copy, capsys)
    assert f"manifest {manifest_path(copy)}" in line and expected in line


def test_the_error_line_has_the_documented_shape(copy, capsys):
    _edit(copy, _set("metrics", "test_accuracy", 1.5))
    line = _export_error(copy, capsys)
    assert line == (
        f"error: manifest {manifest_path(copy)}: metrics.test_accuracy: Input should be "
        "less than or equal to 1; re-create the artifact or restore its manifest"
    )


def test_several_problems_name_the_first_and_count_the_rest(copy, capsys):
    _edit(copy, lambda d: d.update(sha256="x", size_bytes=-1, stage="bake"))
    line = _export_error(copy, capsys)
    assert "(and 2 more problems)" in line


def test_an_intact_copy_still_exports(copy, capsys):
    main(["export", str(copy), "--out", str(copy.with_name("t.onnx"))])
    written = read_manifest(copy.with_name("t.onnx"))
    assert written["stage"] == "export" and written["source"]["artifact"] == "t.pt"
    Manifest.model_validate(json.loads(manifest_path(copy.with_name("t.onnx")).read_text()))
