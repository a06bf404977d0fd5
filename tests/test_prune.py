"""``compress prune`` on digits: channels really removed, exports that pass parity, recovery that helps."""

import json
from pathlib import Path

import pytest
import torch

from compress.artifacts import load_checkpoint, manifest_path
from compress.cli import main
from compress.errors import CompressError
from compress.modelspec import build_model, model_from_checkpoint, resize_to
from compress.stages.export import ExportConfig, export
from compress.stages.prune import PruneConfig, prune
from compress.stages.train import TrainConfig, train

pytestmark = pytest.mark.slow  # trains, exports, quantizes or times real models


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prune")
    found = {}
    for spec, args in (("mlp", {"hidden": [64, 64]}), ("cnn", {}), ("resnet8", {})):
        out = folder / f"{spec}.pt"
        train(TrainConfig(model=spec, model_args=args, data="digits", out=str(out), epochs=4, device="cpu"))
        found[spec] = out
    return found


def pruned(checkpoint, tmp_path, **settings):
    settings = {"epochs": 1, "device": "cpu", **settings}
    out = tmp_path / "pruned.pt"
    return out, prune(PruneConfig(checkpoint=str(checkpoint), out=str(out), **settings))


@pytest.mark.parametrize("spec", ["mlp", "cnn", "resnet8"])
def test_structured_pruning_removes_channels_and_exports_with_parity(checkpoints, tmp_path, spec):
    out, manifest = pruned(checkpoints[spec], tmp_path, amount=0.5)
    p = manifest["pruning"]
    assert p["after"]["macs"] < 0.6 * p["before"]["macs"] and p["after"]["params"] < p["before"]["params"]
    assert manifest["stage"] == "prune" and manifest["artifact"] == "pruned.pt"
    assert manifest["inputs"][0]["role"] == "checkpoint" and manifest["config"]["out"] == str(out)
    model = model_from_checkpoint(load_checkpoint(out), out).eval()
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    narrower = [name for name, width in p["widths_after"].items() if width < p["widths_before"][name]]
    assert narrower and all(p["widths_after"][name] % 8 == 0 for name in narrower)
    exported = export(ExportConfig(checkpoint=str(out), out=str(tmp_path / "pruned.onnx")))
    assert exported["parity"]["top1_agreement"] == 1.0 and exported["metrics"]["params"] == p["after"]["params"]


def test_recovery_raises_accuracy_over_the_pruned_model(checkpoints, tmp_path):
    _, manifest = pruned(checkpoints["resnet8"], tmp_path, amount=0.5, epochs=2)
    step = manifest["pruning"]["steps"][0]
    assert step["test_accuracy_recovered"] > step["test_accuracy_pruned"] + 0.1
    assert manifest["pruning"]["after"]["test_accuracy"] == step["test_accuracy_recovered"]


def test_target_macs_is_reached_in_steps_with_a_data_driven_importance(checkpoints, tmp_path):
    _, manifest = pruned(checkpoints["cnn"], tmp_path, target_macs=0.5, importance="taylor")
    p = manifest["pruning"]
    assert p["after"]["macs"] <= 0.5 * p["before"]["macs"]
    assert len(p["steps"]) >= 2 and p["method"] == "structured, taylor importance"


def test_unstructured_pruning_reports_sparsity_not_speed(checkpoints, tmp_path):
    out, manifest = pruned(checkpoints["mlp"], tmp_path, amount=0.6, unstructured=True)
    p = manifest["pruning"]
    assert p["steps"][0]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert p["after"]["params"] == p["before"]["params"] and "no faster" in p["note"]
    weights = [v for k, v in load_checkpoint(out)["state_dict"].items() if k.endswith("weight") and v.dim() == 2]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.59  # recovery kept the pruned weights at zero


def test_a_narrower_state_dict_loads_into_the_factory_model():
    narrow = build_model("mlp", (1, 8, 8), 10, {"hidden": [16]})
    wide = build_model("mlp", (1, 8, 8), 10, {"hidden": [64]})
    resize_to(wide, narrow.state_dict())
    wide.load_state_dict(narrow.state_dict())
    assert wide.fc1.linear.out_features == 16 and wide(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_cli_prints_before_after_and_paths(checkpoints, tmp_path, capsys):
    out = tmp_path / "cli.pt"
    main(["prune", str(checkpoints["mlp"]), "--amount", "0.5", "--epochs", "1", "--device", "cpu", "--out", str(out)])
    text = capsys.readouterr().out
    assert "params 8" in text and "after recovery" in text and f"wrote {manifest_path(out)}" in text
    assert json.loads(manifest_path(out).read_text())["pruning"]["before"]["params"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--amount", "1.0"], "--amount must be less than 1, got 1.0"),
        (["--amount", "0.5", "--target-macs", "0.5"], "exactly one of"),
        ([], "exactly one of"),
        (["--target-params", "1.5"], "--target-params must be less than 1"),
        (["--amount", "0.5", "--round-to", "0"], "--round-to must be at least 1"),
        (["--target-params", "0.1", "--unstructured"], "--unstructured takes --amount"),
        (["--target-params", "0.001", "--round-to", "8"], "cannot be reached"),
    ],
)
def test_impossible_requests_are_refused_and_nothing_written(checkpoints, tmp_path, capsys, args, message):
    out = tmp_path / "out.pt"
    with pytest.raises(SystemExit) as exit_info:
        main(["prune", str(checkpoints["mlp"]), "--epochs", "1", "--device", "cpu", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert [line for line in err.splitlines() if line.startswith("error: ")][0].find(message) > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_model_the_dependency_graph_cannot_follow_is_named(tmp_path):
    checkpoint = tmp_path / "fixed.pt"
    factories = Path(__file__).parent / "factories" / "custom_models.py"
    train(
        TrainConfig(model=f"{factories}:fixed_channel_view", data="digits", out=str(checkpoint), epochs=1, device="cpu")
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CompressError, match="fails at layer 'fc'.*nothing was written"):
        prune(
            PruneConfig(
                checkpoint=str(checkpoint),
                model=f"{factories}:fixed_channel_view",
                out=str(tmp_path / "o.pt"),
                amount=0.5,
                epochs=1,
                device="cpu",
            )
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CompressError, match="does not exist"):
        prune(PruneConfig(checkpoint=str(tmp_path / "nope.pt"), out=str(tmp_path / "o.pt"), amount=0.5))
