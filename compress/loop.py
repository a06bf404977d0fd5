"""The epoch loop shared by ``compress train`` and ``compress distill``.

What it owns: optimiser and schedule, deterministic shuffling and augmentation, validation every
epoch, the best-on-validation weights, a resume state written after every epoch (so Ctrl-C or a
crash loses at most the current epoch), the non-finite-loss check, and the final checkpoint with
its manifest. What is trained *towards* is the objective's business (plain labels or a teacher).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import DistributedSampler

from .artifacts import atomic_path, input_record, new_manifest, resume_path, save_checkpoint
from .data import Dataset
from .distributed import SINGLE, World, average_gradients, join, wrap
from .errors import CompressError, foreign_errors
from .modelspec import canonical_spec, count_macs, count_params
from .progress import step_bar
from .tasks import Task

RESUME_FORMAT = "compress-resume/1"
# Config fields that may differ between an interrupted run and its resumption.
RESUME_FREE_FIELDS = {"resume", "device"}

log = logging.getLogger(__name__).info


class Objective(Protocol):
    """What a model is trained towards."""

    def prepare(self, x_train: torch.Tensor) -> None: ...
    def loss(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor, augmented: bool
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def parameters(self) -> list[torch.nn.Parameter]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    # after each epoch's validation, before the best weights are chosen: may add figures to the epoch's record
    def end_epoch(self, record: dict[str, Any], x_val: torch.Tensor, y_val: torch.Tensor) -> None: ...
    def inputs(self) -> list[tuple[str, Path]]: ...  # (role, path) of files it read, for the manifest
    def metrics(self) -> dict[str, Any]: ...  # extra figures for the manifest (every rank calls it)
    def finish(self) -> None: ...  # training is over: write what else it made, remove what it kept


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CompressError(
            "--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu (or auto)"
        )
    return torch.device(name)


def place(device: str) -> World:
    """The device named by ``--device`` and, under torchrun, this process's place among the others."""
    return join(resolve_device(device))


@torch.no_grad()
def accuracy(
    predict, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, world: World = SINGLE, device=None
) -> float:
    """Top-1 accuracy (fraction) of ``predict`` (a module, run in eval mode, or any callable).

    Across several processes each counts its block of the samples and the counts are summed, so
    every sample counts once. Batches are moved to ``device`` first (data may wait in host memory)."""
    if len(x) == 0:
        return float("nan")
    module = predict if isinstance(predict, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    block = world.block(len(x))
    correct = 0
    for start in range(block.start, block.stop, batch_size):
        end = min(start + batch_size, block.stop)
        logits = predict(x[start:end].to(device or x.device, non_blocking=True))
        correct += (logits.argmax(1) == y[start:end].to(logits.device)).sum().item()
    if module is not None:
        module.train(was_training)
    (correct,) = world.sum([correct])
    return correct / len(x)


@torch.no_grad()
def predictions(predict, x: torch.Tensor, batch_size: int = 1024, world: World = SINGLE, device=None) -> torch.Tensor:
    """The outputs of ``predict`` (a module, run in eval mode, or any callable) for every sample of ``x``, float32
    on the CPU. Across several processes each computes its block and every process gets the whole."""
    module = predict if isinstance(predict, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    block = world.block(len(x))
    # a rank with no samples of its own still needs the output's shape: it runs one sample and keeps none
    spans = [(start, min(start + batch_size, block.stop)) for start in range(block.start, block.stop, batch_size)]
    outputs = [predict(x[a:b].to(device or x.device, non_blocking=True)).float() for a, b in spans or [(0, 1)]]
    if module is not None:
        module.train(was_training)
    mine = torch.cat(outputs) if spans else outputs[0][:0]
    return world.gather_rows(mine.to(world.device), len(x)).cpu()


def evaluate(predict, x: torch.Tensor, y, dataset: Dataset, world: World = SINGLE, device=None) -> dict[str, Any]:
    """Every metric of ``dataset``'s task for ``predict`` on ``x`` against the targets ``y`` (as the dataset holds
    them), in the targets' units; None for each when there are no samples (e.g. no validation split)."""
    task = dataset.task
    if len(x) == 0:
        return dict.fromkeys(task.metrics)
    outputs = predictions(predict, x, world=world, device=device).numpy()
    y = y.cpu().numpy() if isinstance(y, torch.Tensor) else y
    found = task.measure(dataset.in_units(outputs), dataset.in_units(y))
    return {name: None if value is None or math.isnan(value) else value for name, value in found.items()}


def random_shift(x: torch.Tensor, max_shift: int, fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``max_shift`` pixels in x and y, filling with ``fill`` (per channel)."""
    n, c, h, w = x.shape
    padded = fill.view(1, c, 1, 1).expand(n, c, h + 2 * max_shift, w + 2 * max_shift).clone()
    padded[:, :, max_shift : max_shift + h, max_shift : max_shift + w] = x
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def make_optimizer(config, parameters) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.momentum > 0,
    )


def make_schedule(config, optimizer, total_steps: int):
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)  # constant


class LabelObjective:
    """The task's loss with the true targets: cross-entropy (optionally smoothed), binary cross-entropy or MSE."""

    def __init__(self, label_smoothing: float, task: Task):
        self.label_smoothing, self.task = label_smoothing, task

    def prepare(self, x_train: torch.Tensor) -> None:
        pass

    def loss(self, model, x, y, indices, augmented):
        outputs = model(x)
        return self.task.hard_loss(outputs, y, self.label_smoothing), outputs

    def parameters(self):
        return []

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def end_epoch(self, record, x_val, y_val) -> None:
        pass

    def inputs(self) -> list[tuple[str, Path]]:
        return []

    def metrics(self) -> dict[str, Any]:
        return {}

    def finish(self) -> None:
        pass


class Fit:
    """One training run: construct, then ``run()``; the best weights end up at ``config.out``.

    Under torchrun every process builds the same Fit; ``world`` says which one this is. Each trains
    on its slice of every global batch of ``config.batch_size`` samples and rank 0 writes the files.
    """

    def __init__(
        self, config, stage: str, dataset: Dataset, model: torch.nn.Module, objective: Objective, world: World
    ):
        self.config, self.stage, self.dataset, self.objective, self.world = config, stage, dataset, objective, world
        if config.batch_size % world.size:
            raise CompressError(
                f"--batch-size {config.batch_size} is the global batch, shared by {world.size} processes, and must "
                f"divide evenly among them; use a multiple of {world.size}"
            )
        self.device = device = world.device
        self.module = model.to(device)  # the network itself: its names, its weights, the checkpoint
        self.model = wrap(self.module, world)  # what trains: in DistributedDataParallel across processes
        self.autocast = device.type == "cuda"  # bf16 autocast on GPUs; CPU stays fp32 (deterministic)
        self.x_train, self.y_train = self._placed(dataset.x_train), self._placed(dataset.y_train)
        self.x_val, self.y_val = self._placed(dataset.x_val), self._placed(dataset.y_val)
        self.batch_per_process = config.batch_size // world.size
        # The same seed on every rank: the same permutation each epoch, of which each rank takes its share.
        self.sampler = DistributedSampler(
            range(len(self.x_train)), num_replicas=world.size, rank=world.rank, seed=config.seed * 100_003
        )
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.batch_per_process)
        self.optimizer = make_optimizer(config, list(self.module.parameters()) + objective.parameters())
        self.schedule = make_schedule(config, self.optimizer, config.epochs * self.steps_per_epoch)
        self.max_shift = 0
        if config.augment == "shift":
            if len(dataset.in_shape) != 3:
                raise CompressError("--augment shift needs image data (C,H,W); use --augment none for feature vectors")
            self.max_shift = max(1, round(min(dataset.in_shape[1:]) / 14))  # ±2 px on 28x28, ±1 on 8x8
            prep = dataset.preprocessing
            # background = a raw 0 pixel after normalisation
            self.fill = torch.tensor([-m / s for m, s in zip(prep.mean, prep.std)], dtype=torch.float32, device=device)
        self.epoch = 0
        self.best_val = -math.inf  # the best validation score (``Task.score``: larger is better)
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []

    def _placed(self, array) -> torch.Tensor:
        """A split where training reads it: on the GPU when it takes at most a quarter of the free memory,
        else in pinned host memory, copied batch by batch without blocking; on the CPU as it is."""
        tensor = torch.from_numpy(array)
        if self.device.type != "cuda":
            return tensor
        free, _total = torch.cuda.mem_get_info(self.device)
        return tensor.to(self.device) if tensor.nbytes <= free / 4 else tensor.pin_memory()

    # -- resume ----------------------------------------------------------------------------
    def _config_dict(self) -> dict:
        return self.config.model_dump(mode="json")

    def save_resume_state(self) -> None:
        """Rank 0 writes what continues the run; every rank's random state goes with it."""
        rank_rng = self.world.from_all(_rng_state(self.device))
        state = {
            "format": RESUME_FORMAT,
            "config": self._config_dict(),
            "epoch": self.epoch,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "objective": self.objective.state_dict(),
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "world_size": self.world.size,
            "rank_rng": rank_rng,
        }

        def write() -> None:
            with atomic_path(resume_path(self.config.out)) as tmp:
                torch.save(state, tmp)

        self.world.main_does(write)

    def load_resume_state(self) -> None:
        # rank 0 reads the file (the only one sure to see it, as it wrote it) and hands it to the others
        state = self.world.main_does(self._read_resume_state)
        path = resume_path(self.config.out)
        with foreign_errors(
            f"resume state {path} does not fit this run", "delete it and run without --resume", typed=True
        ):
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.schedule.load_state_dict(state["schedule"])
            self.objective.load_state_dict(state["objective"])
            self.epoch, self.best_val, self.best_epoch = state["epoch"], state["best_val"], state["best_epoch"]
            self.best_state, self.history = state["best_state"], state["history"]
            if self.best_state is not None:
                self.best_state = {k: v.to(self.device) for k, v in self.best_state.items()}
            if not (isinstance(self.epoch, int) and 0 <= self.epoch <= self.config.epochs):
                raise ValueError(f"epoch {self.epoch!r} is not one of this run's {self.config.epochs}")
            rank_rng = state.get("rank_rng") or []
            if state.get("world_size", 1) == self.world.size and len(rank_rng) == self.world.size:
                _set_rng_state(rank_rng[self.world.rank], self.device)
            else:
                torch.set_rng_state(state["torch_rng"].cpu())
                log(
                    f"the interrupted run had {state.get('world_size', 1)} process(es), this one {self.world.size}: "
                    "the global batches are the same, random draws inside the model (dropout) are not"
                )
        log(f"resuming {self.config.out} after epoch {self.epoch}/{self.config.epochs}")

    def _read_resume_state(self) -> dict:
        path = resume_path(self.config.out)
        if not path.exists():
            raise CompressError(f"nothing to resume: {path} does not exist; run without --resume")
        # torch raises several types for a damaged file
        with foreign_errors(f"resume state {path} is unreadable", "delete it and run without --resume"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
            raise CompressError(f"{path} is not a compress resume state; delete it and run without --resume")
        saved, now = state.get("config"), self._config_dict()
        if not isinstance(saved, dict):
            raise CompressError(f"{path} is not a compress resume state; delete it and run without --resume")
        changed = sorted(k for k in set(saved) | set(now) if k not in RESUME_FREE_FIELDS and saved.get(k) != now.get(k))
        if changed:
            raise CompressError(
                f"cannot resume: settings differ from the interrupted run ({', '.join(changed)}); "
                f"use the same settings, or delete {path} to start afresh"
            )
        return state

    def _check_nothing_pending(self) -> None:
        pending = resume_path(self.config.out)
        if pending.exists():
            raise CompressError(
                f"an interrupted run of {self.config.out} exists ({pending}); "
                "pass --resume to continue it, or delete that file to start afresh"
            )

    # -- training --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train, keep the best-on-validation weights, write the checkpoint; returns its manifest."""
        torch.manual_seed(self.config.seed)
        if self.config.resume:
            self.load_resume_state()
        else:
            self.world.main_does(self._check_nothing_pending)
        started = time.perf_counter()
        self.objective.prepare(self.x_train)
        preparation = time.perf_counter() - started
        while self.epoch < self.config.epochs:
            self._train_one_epoch()
            self.save_resume_state()
        # Epochs run before an interruption count too: their times are in the history.
        train_time = preparation + sum(record["seconds"] for record in self.history)
        return self._write_artifact(train_time)

    def _train_one_epoch(self) -> None:
        config, world, epoch_started = self.config, self.world, time.perf_counter()
        # Shuffling and augmentation depend only on (seed, epoch, rank): a resumed run sees the same batches.
        self.sampler.set_epoch(self.epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        # The sampler repeats a few samples so that every rank gets as many: each is counted once in the metrics.
        counted = (world.rank + torch.arange(len(order)) * world.size) < len(self.x_train)
        generator = torch.Generator().manual_seed((config.seed * 100_003 + self.epoch) * world.size + world.rank)
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        classifying = self.dataset.task.name == "classification"  # a running accuracy is shown and recorded
        bar = step_bar(self.steps_per_epoch, f"epoch {self.epoch + 1}/{config.epochs}", shown=world.main)
        for step in range(self.steps_per_epoch):
            batch = slice(step * self.batch_per_process, (step + 1) * self.batch_per_process)
            indices = order[batch]
            x, y = self._batch(indices)
            if self.max_shift:
                x = random_shift(x, self.max_shift, self.fill, generator)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                loss, logits = self.objective.loss(self.model, x, y, indices, self.max_shift > 0)
            if not torch.isfinite(loss):
                lr = self.schedule.get_last_lr()[0]
                where = f"loss became {loss.item()} at epoch {self.epoch + 1}, step {step + 1} (learning rate {lr:.3g})"
                if not torch.isfinite(x).all():
                    raise CompressError(f"{where}: this batch of inputs holds NaN or infinite values; check --data")
                raise CompressError(
                    f"{where}; if the learning rate is high, try a lower one (e.g. --lr {config.lr / 10:g}), "
                    "else check the data and the other settings for extreme values"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(self.objective.parameters(), world)
            self.optimizer.step()
            self.schedule.step()
            real = counted[batch].to(self.device)
            loss_sum += loss.item() * int(real.sum())
            if classifying:
                correct += ((logits.argmax(1) == y) & real).sum().item()
            seen += int(real.sum())
            bar.update()
            shown = {"acc": f"{100 * correct / seen:.2f}%"} if classifying else {}
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", **shown, refresh=False)
        bar.close()
        loss_sum, correct, seen = world.sum([loss_sum, correct, seen])
        task = self.dataset.task
        val_metrics = evaluate(self.module, self.x_val, self.y_val, self.dataset, world, self.device)
        val = task.score(val_metrics)  # larger is better; NaN without a validation split
        self.epoch += 1
        record = {
            "epoch": self.epoch,
            "loss": loss_sum / seen,
            "train_accuracy": correct / seen if classifying else None,
            "val_accuracy": val_metrics.get("accuracy"),
            "val_metrics": val_metrics,
            "lr": self.schedule.get_last_lr()[0],
            "seconds": time.perf_counter() - epoch_started,
        }
        self.objective.end_epoch(record, self.x_val, self.y_val)
        self.history.append(record)
        # Without a validation split the last epoch counts as the best.
        if math.isnan(val) or val > self.best_val:
            self.best_val, self.best_epoch = val, self.epoch
            self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        train_text = f"train {100 * record['train_accuracy']:.2f}%  " if classifying else ""
        val_text = task.describe(val_metrics) if not math.isnan(val) else "n/a"
        log(
            f"epoch {self.epoch}/{config.epochs}  loss {record['loss']:.4f}  {train_text}val {val_text}  "
            f"{record['seconds']:.1f}s"
        )

    def _batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._take(self.x_train, indices), self._take(self.y_train, indices)

    def _take(self, split: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if split.device == self.device:
            return split[indices.to(self.device)]
        # in pinned host memory: gathered into a pinned batch, copied while the GPU works
        return split[indices].pin_memory().to(self.device, non_blocking=True)

    def _write_artifact(self, train_time: float) -> dict[str, Any]:
        """Every rank measures its share of the test split; rank 0 writes the checkpoint and manifest
        and every rank returns them. The objective writes what else it made first: the checkpoint at
        ``config.out`` ends the run (its resume state goes), so nothing is left unwritten after it."""
        dataset = self.dataset
        self.module.load_state_dict(self.best_state)
        x_test, y_test = self._placed(dataset.x_test), self._placed(dataset.y_test)
        test_metrics = evaluate(self.module, x_test, y_test, dataset, self.world, self.device)
        val_metrics = self.history[self.best_epoch - 1]["val_metrics"] if self.best_epoch else None
        metrics = training_metrics(
            self.module, dataset, test_metrics, val_metrics, self.best_epoch, self.history, train_time
        )
        metrics.update(self.objective.metrics())
        self.objective.finish()
        return self.world.main_does(lambda: self._save(metrics))

    def _save(self, metrics: dict[str, Any]) -> dict[str, Any]:
        config, inputs = self.config, self.objective.inputs()
        manifest = save_trained(
            config,
            self.stage,
            self.module,
            config.out,
            config.model,
            config.model_args,
            self.dataset,
            self.world,
            inputs,
            metrics,
        )
        resume_path(config.out).unlink(missing_ok=True)
        return manifest


def training_metrics(
    module: torch.nn.Module,
    dataset: Dataset,
    test_metrics: dict[str, Any],
    val_metrics: dict[str, Any] | None,
    best_epoch: int,
    history: list[dict[str, Any]],
    train_time: float,
) -> dict[str, Any]:
    """The figures of a trained network's manifest: its task's metrics on the test split and on the validation
    split at its best epoch (None without one), for a classifier its test accuracy and errors, its size, the
    run's time and its per-epoch ``history``."""
    params = count_params(module)
    epoch_seconds = sum(r["seconds"] for r in history)
    val_metrics = val_metrics if val_metrics and any(v is not None for v in val_metrics.values()) else None
    found: dict[str, Any] = {"test_metrics": test_metrics, "val_metrics": val_metrics}
    if dataset.task.name == "classification":
        test_accuracy = test_metrics["accuracy"]
        found.update(
            test_accuracy=test_accuracy,
            test_errors=int(round((1 - test_accuracy) * len(dataset.y_test))),
            val_accuracy=(val_metrics or {}).get("accuracy"),
        )
    return {
        **found,
        "best_epoch": best_epoch,
        "params": params,
        "train_time_s": round(train_time, 3),
        # training throughput of the epochs alone (one-time preparation excluded), all processes
        "train_samples_per_s": round(len(dataset.x_train) * len(history) / epoch_seconds, 1),
        "history": history,
    }


def save_trained(
    config,
    stage: str,
    module: torch.nn.Module,
    out: str,
    spec: str,
    model_args: dict[str, Any],
    dataset: Dataset,
    world: World,
    inputs: list[tuple[str, Path]],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Write ``module``, trained by ``stage`` with ``config``, as the compress checkpoint ``out`` (rebuilt by
    the model ``spec`` with ``model_args``) with its manifest: what it takes and gives, the data, where it
    trained, the files it read (``inputs``) and ``metrics``. Returns the manifest; rank 0 alone calls it."""
    spec = canonical_spec(spec)
    checkpoint = {
        "model_spec": spec,
        "model_args": model_args,
        "in_shape": list(dataset.in_shape),
        "num_classes": dataset.num_classes,
        "task": dataset.task_record(),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    manifest = new_manifest(out, stage, config.model_dump(mode="json"))
    manifest["inputs"] = [input_record(role, path) for role, path in inputs]
    manifest.update(
        {
            "model": {
                "spec": spec,
                "args": model_args,
                "params": count_params(module),
                "macs": count_macs(module, dataset.in_shape),
            },
            "input_spec": {
                "name": "input",
                "shape": [None, *dataset.in_shape],
                "dtype": "float32",
                "dynamic_axes": {"0": "batch"},
            },
            "output_spec": {
                "name": output_name(dataset.task),
                "shape": [None, dataset.num_classes],
                "dtype": "float32",
            },
            "preprocessing": dataset.preprocessing.to_dict(),
            "labels": dataset.labels,
            "data": dataset.describe(),
            "task": dataset.task_record(),
            "training": {
                "device": world.device.type,
                **world.describe(config.batch_size),
                "autocast": "bfloat16" if world.device.type == "cuda" else None,
            },
            "metrics": metrics,
        }
    )
    save_checkpoint(out, checkpoint, manifest)
    return manifest


def output_name(task: Task) -> str:
    """What a network's output is called: logits of classes or labels, or regression predictions."""
    return "predictions" if task.name == "regression" else "logits"


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
