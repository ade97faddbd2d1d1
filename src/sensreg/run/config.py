"""The typed view of a composed `sensreg train` config, validated before any work starts, and
the one home of every key's default.

The dataclasses below are the schema: each key, its type and its default. Hydra composes from
them: ``option_node`` gives each option of a config group (``optim=adam``) the keys that option
reads, at their defaults, and the option's YAML file (``configs/optim/adam.yaml``) names that node
in its defaults list and holds only the values it changes, its presets. Code that builds a
``TrainConfig`` directly therefore gets what ``sensreg train ~experiment`` gets.

The core never sees Hydra: the CLI turns the composed config into a plain dict, and
``TrainConfig.from_dict`` turns that into these dataclasses, checking every value a user can
get wrong. All problems are collected and reported together in one ``ConfigError``. Config
dicts saved by older versions (run folders, checkpoints) are read through ``upgrade_config``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

import torch

from sensreg.atomic import path_too_long
from sensreg.errors import UserError, first_line
from sensreg.data import DATASETS, input_shape
from sensreg.data.registry import validation_size
from sensreg.models import (EXTERNAL, MODELS, OPTIMIZER_LR, UnknownModel, build_model, default_lr,
                            model_options)
from sensreg.run.config_keys import LATER_KEYS, NOT_COMPUTATION, NOT_EXPERIMENT
from sensreg.run.precision import PRECISIONS
from sensreg.method.prune_schedules import PruneConfig, PRUNE_SCHEDULES, is_gradual, target_sparsity
from sensreg.method.neuron import UnitError
from sensreg.method.per_sample import PerSampleError
from sensreg.method.pruning import prunable_names
from sensreg.method.positions import epoch_at, first_epoch_at, is_fraction
from sensreg.method.regularizer import FOLLOW_ETA, SCALE_OVER, SCALES, SCHEDULE_KEYS, SCHEDULES, lambda_schedule
from sensreg.method.sensitivity import OUTPUTS, REDUCTIONS, VARIANTS, tape_for

OPTIMIZERS = ("sgd", "adam")
PRUNE_SCOPES = ("global", "layer")  # one threshold on |w|, or τ·σ_l per tensor (pruning.Masks.scales)
PARAM_SETS = ("all", "weights")
# The seeds a run can use: torch.manual_seed takes 64-bit integers, and the run seeds its
# generators with seed, seed + 1 and seed + 2 (lifecycle.setup_training).
SEED_RANGE = (-(2**63), 2**63 - 3)


class ConfigError(UserError, ValueError):
    """A user mistake in the config; the message says what is wrong and how to fix it."""


def _only(*options: str, **default: Any) -> Any:
    """A key that only these options of its group read (``default=`` or ``default_factory=``):
    the config nodes of the group's other options leave it out, so that Hydra refuses it there."""
    return field(metadata={"options": options}, **default)


@dataclass
class DataConfig:
    name: str = "mnist"
    root: str = "data"  # where the dataset lives: each data/NAME.yaml says its layout
    val_fraction: float = 0.1  # held out from the training set for threshold and model selection
    split_seed: int = 0  # fixes the train/validation split, the same for every training seed
    on_device: bool = True  # hold the whole dataset on the training device as tensors
    eval_batch_size: int = 1000
    # random crop of the image zero-padded (black) by 4 pixels and horizontal flip, of training
    # batches only; the CIFAR configs turn it on
    augment: bool = _only("cifar10", "cifar100", "imagenet", default=False)
    # synthetic only: class prototypes plus noise (data/synthetic.yaml)
    num_train: int = _only("synthetic", default=1024)
    num_test: int = _only("synthetic", default=512)
    num_classes: int = _only("synthetic", default=10)
    noise: float = _only("synthetic", default=1.0)
    shape: list[int] = _only("synthetic", default_factory=lambda: [1, 28, 28])  # of one image: C, H, W
    # imagenet only (read from image files): the training crop's and the evaluation crop's
    # side, and the side the shorter edge is resized to before the evaluation crop
    image_size: int = _only("imagenet", default=224)
    resize: int = _only("imagenet", default=256)
    # imagenet only: DataLoader worker processes that decode the images, pinned host memory
    # for the copies to a GPU, workers kept alive between passes, batches loaded ahead per worker
    num_workers: int = _only("imagenet", default=8)
    pin_memory: bool = _only("imagenet", default=True)
    persistent_workers: bool = _only("imagenet", default=True)
    prefetch_factor: int = _only("imagenet", default=2)

    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments of the dataset loader beyond name and root."""
        if self.name == "synthetic":
            return {"num_train": self.num_train, "num_test": self.num_test,
                    "num_classes": self.num_classes, "noise": self.noise, "shape": tuple(self.shape)}
        if _registered(self.name, DATASETS) and DATASETS[self.name].from_files:
            return {"image_size": self.image_size, "resize": self.resize, "augment": self.augment,
                    "num_workers": self.num_workers, "pin_memory": self.pin_memory,
                    "persistent_workers": self.persistent_workers, "prefetch_factor": self.prefetch_factor}
        return {}


@dataclass
class ModelConfig:
    name: str = "lenet300"
    # model=torchvision or timm: the network's name in that library's registry; model=custom:
    # the function that builds it, package.module:function; kwargs: keyword arguments for it
    arch: str | None = _only("torchvision", "timm", default=None)
    factory: str | None = _only("custom", default=None)
    kwargs: dict[str, Any] = _only("torchvision", "timm", "custom", default_factory=dict)

    def options(self) -> dict[str, Any]:
        """build_model's keyword arguments beyond the name."""
        return model_options(asdict(self))


@dataclass
class SensConfig:
    name: str = "spec"
    lam: float = 3e-4  # shrink strength: w <- w - lam * w * max(0, 1 - S) every step
    output: str = "logits"  # the output o that S differentiates: logits (z) or probs (softmax(z))
    params: str = "all"  # which tensors are regularized: all (weights and biases) or weights
    # unspec and neuron: None = exact over all C classes; K = unbiased estimate over K sampled classes
    classes: int | None = None
    # batch: |d mean_n o_n / dw|; sample: mean_n |d o_n / dw| (per_sample.py)
    reduction: str = "batch"
    # how S is brought to the scale of the bound at 1: none, gamma (S * gamma), max (S / max S
    # per tensor or over all regularized tensors: scale_over); regularizer.SCALES
    scale: str = "none"
    gamma: float = 1.0  # the factor of scale=gamma
    scale_over: str = "tensor"  # scale=max: the maximum of each tensor | all (of every regularized tensor)


@dataclass
class OptimConfig:
    name: str = "sgd"
    # None: the network's default for this optimizer (models.default_lr: SGD 0.05, LeNet-5
    # 0.02, VGG-16 0.01; Adam 1e-3), filled in when the config is built, so that the saved
    # config, the hash and the run see the number
    lr: float | None = None
    momentum: float = _only("sgd", default=0.9)
    nesterov: bool = _only("sgd", default=True)
    betas: tuple[float, float] = _only("adam", default=(0.9, 0.999))
    eps: float = _only("adam", default=1e-8)


def _schedules_reading(key: str) -> tuple[str, ...]:
    """The schedules that take ``key`` (regularizer.SCHEDULE_KEYS)."""
    return tuple(name for name, keys in SCHEDULE_KEYS.items() if key in keys)


@dataclass
class ScheduleConfig:
    name: str = "constant"  # the options: configs/schedule/
    # step: the factor is gamma^(milestones passed); milestones are epochs, or fractions of the
    # run (0.8): positions.py
    milestones: list[int | float] = _only(*_schedules_reading("milestones"), default_factory=lambda: [30, 60])
    gamma: float = _only(*_schedules_reading("gamma"), default=0.1)
    min_factor: float = _only(*_schedules_reading("min_factor"), default=0.0)  # cosine: the factor at the end


@dataclass
class TrainerConfig:
    epochs: int = 20
    batch_size: int = 100
    device: str = "auto"  # auto (cuda when present, else cpu) | cpu | cuda | cuda:N
    seed: int = 0
    deterministic: bool = False  # true: deterministic kernels (slower on GPU), bit-reproducible on CPU
    warmup_epochs: int = 0  # dense epochs first: lambda = 0 and no pruning
    # The weights to start from (None: a random initialization), read from this file only, never
    # downloaded: a sensreg model.pt, or a state dict file as torchvision publishes its weights,
    # also one saved from a DistributedDataParallel model ("module." prefixes are removed) or
    # nested under "state_dict" or "model" (init_weights.py). It must fit the network:
    # torchvision's ImageNet weights (1000 classes) load into vgg16/resnet18/resnet50 on a
    # 1000-class dataset, not into a 10-class model.
    init: str | None = None
    progress: Any = "auto"  # auto (a progress bar on a terminal only) | true | false
    channels_last: bool = True  # NHWC memory layout for networks with convolutions (faster; same results)
    # write last.pt (everything needed to resume) every N epochs; 0 = only at the end or on a stop
    checkpoint_every: int = 1
    # true: continue from last.pt in this run folder | PATH: continue the run folder PATH
    resume: Any = False
    # fp32 | bf16 | fp16: the training forward under autocast (precision.py); fp16: CUDA only,
    # with loss scaling
    precision: str = "fp32"
    # torch.compile the model for the training forward (evaluation stays uncompiled; on the CPU
    # it needs a C++ compiler)
    compile: bool = False


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sens: SensConfig = field(default_factory=SensConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eta_schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    lam_schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name=FOLLOW_ETA))
    prune: PruneConfig = field(default_factory=PruneConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        model, optimizer = self.model.name, self.optim.name
        if self.optim.lr is None and isinstance(model, str) and (model in MODELS or model in EXTERNAL) \
                and isinstance(optimizer, str) and optimizer in OPTIMIZER_LR:
            self.optim = replace(self.optim, lr=default_lr(model, optimizer))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "TrainConfig":
        """Build and validate; raises ConfigError listing every problem found."""
        problems: list[str] = []
        raw = {k: v for k, v in raw.items() if k not in NOT_EXPERIMENT}
        extra = sorted(set(raw) - {f.name for f in fields(cls)})
        if extra:
            problems.append(f"unknown top-level key(s) {', '.join(extra)}.")
        sections = {}
        for f in fields(cls):
            default = f.default_factory()  # type: ignore[misc]
            values = dict(raw.get(f.name) or {})
            known = {g.name for g in fields(default)}
            unknown = sorted(set(values) - known)
            if unknown:
                problems.append(f"{f.name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
            sections[f.name] = replace(default, **{k: v for k, v in values.items() if k in known})
        cfg = cls(**sections)
        typed = {key: message for f in fields(cls) for key, message in _type_problems(f.name, getattr(cfg, f.name))}
        problems += list(typed.values())
        # Range checks of a value of the wrong type would only repeat the problem.
        problems += [m for m in cfg.problems() if not any(m.startswith(f"{key}=") for key in typed)]
        if problems:
            raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(problems))
        return cfg

    def problems(self) -> list[str]:
        """Every invalid value, each as one sentence that names the key and the fix: the names
        chosen from a registry first, then each section's values; the checks that need valid
        values (λ's schedule, the model on the data's inputs) only once these pass."""
        p = _Problems()
        self._check_choices(p)
        self._check_data(p)
        self._check_sens_and_optim(p)
        self._check_prune(p)
        self._check_trainer(p)
        # The checks below compute with the values: they need every one of them valid, in type too
        # (a milestone that is not a number would end them in a traceback).
        if p or any(_type_problems(f.name, getattr(self, f.name)) for f in fields(self)):
            return list(p)
        p += self._lambda_schedule_problems()  # needs valid schedules, lambda and epochs
        p += self._run_length_problems()
        if not p:
            p += self._model_data_problems()
        return list(p)

    def _train_images(self) -> int | None:
        """Images of the training split once the validation split is held out (None: known only
        once a folder dataset is read)."""
        spec = DATASETS.get(self.data.name)
        n = self.data.num_train if self.data.name == "synthetic" else getattr(spec, "train_size", None)
        return None if n is None else n - validation_size(n, self.data.val_fraction)

    def _run_length_problems(self) -> list[str]:
        """What the length of the run makes impossible: a seed beyond the generators' range, a
        training split left empty, a gmp window after the run's last step or epoch."""
        p = []
        seed = self.trainer.seed
        if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            p.append(f"trainer.seed={seed} is outside the seeds PyTorch takes: use an integer from "
                     f"{SEED_RANGE[0]} to {SEED_RANGE[1]} (the run also draws from seed + 1 and seed + 2).")
        train = self._train_images()
        if train is not None and train < 1:
            p.append(f"data.val_fraction={self.data.val_fraction} holds out every training image of "
                     f"data.name={self.data.name} for validation, leaving none to train on; lower it (0.1 is usual).")
            return p
        epochs, warmup = self.trainer.epochs, self.trainer.warmup_epochs
        if warmup >= epochs and (self.sens.name != "none" or self.prune.name != "none"):
            p.append(f"trainer.warmup_epochs={warmup} covers the whole run (trainer.epochs={epochs}): every epoch "
                     f"would be dense, with nothing regularized or pruned. Give fewer warm-up epochs than "
                     f"trainer.epochs (or train dense with sens=none prune=none).")
            return p
        if self.prune.name in ("search", "fixed") and _TYPES["int"][0](self.prune.start_epoch) \
                and self.prune.start_epoch > epochs:
            p.append(f"prune.start_epoch={self.prune.start_epoch} comes after the last epoch (trainer.epochs="
                     f"{epochs}): prune={self.prune.name} would never prune. Give an epoch of the run, or a "
                     f"fraction of it.")
        if not is_gradual(self.prune.name) or train is None:
            return p
        steps = epochs * -(-train // self.trainer.batch_size)
        start, end = self.prune.start_step, self.prune.end_step
        length = f"the run's last step, {steps} ({epochs} epoch{'s' * (epochs > 1)} of {steps // epochs} steps)"
        if start is not None and start >= steps:
            p.append(f"prune.start_step={start} comes at or after {length}: gmp would never prune. "
                     f"Give a step before it.")
        elif end is not None and end > steps:
            p.append(f"prune.end_step={end} comes after {length}: gmp would never reach "
                     f"prune.target={self.prune.target}. Set prune.end_step to at most {steps}.")
        # (Here, once every value is valid, rather than beside the stop_epoch check: a problem
        # naming prune.start_epoch there hides the checks of the window's end.)
        if start is None and isinstance(self.prune.start_epoch, int) and self.prune.start_epoch > epochs:
            p.append(f"prune.start_epoch={self.prune.start_epoch} comes after the last epoch (trainer.epochs="
                     f"{epochs}): gmp would never prune. Give an epoch of the run, or a fraction of it.")
        return p

    def _check_choices(self, p: "_Problems") -> None:
        p.choice("data.name", self.data.name, list(DATASETS))
        p.choice("model.name", self.model.name, [*MODELS, *EXTERNAL])
        if _registered(self.model.name, MODELS):
            for key in ("arch", "factory", "kwargs"):
                if getattr(self.model, key):
                    p.append(f"model.{key} is read by model=torchvision, timm or custom only; "
                             f"model.name={self.model.name} is sensreg's own network: drop model.{key}.")
        p.choice("sens.name", self.sens.name, list(VARIANTS))
        p.choice("sens.output", self.sens.output, OUTPUTS)
        p.choice("sens.params", self.sens.params, PARAM_SETS)
        p.choice("sens.reduction", self.sens.reduction, REDUCTIONS)
        variant = VARIANTS.get(self.sens.name) if isinstance(self.sens.name, str) else None
        if variant is not None and self.sens.reduction in REDUCTIONS and self.sens.reduction not in variant.reductions:
            p.append(f"sens.reduction={self.sens.reduction} is not defined for sens={variant.name}, whose "
                     f"sensitivity is by definition a mean over the samples of each one's: drop "
                     f"sens.reduction (its option sets {variant.reductions[0]}).")
        p.choice("sens.scale", self.sens.scale, SCALES)
        p.choice("sens.scale_over", self.sens.scale_over, SCALE_OVER)
        if not (isinstance(self.sens.gamma, (int, float)) and 0 < self.sens.gamma < float("inf")):
            p.append(f"sens.gamma={self.sens.gamma!r} must be a positive, finite number (the factor on S "
                     f"under sens.scale=gamma; weights with S >= 1/gamma are not shrunk).")
        if self.sens.reduction == "sample" and self.trainer.compile:
            p.append("sens.reduction=sample records each layer's input and output with module hooks, "
                     "which trainer.compile=true would compile away; set trainer.compile=false or "
                     "sens.reduction=batch.")
        p.choice("optim.name", self.optim.name, OPTIMIZERS)
        p.choice("eta_schedule.name", self.eta_schedule.name, list(SCHEDULES))
        p.choice("lam_schedule.name", self.lam_schedule.name, [*SCHEDULES, FOLLOW_ETA])
        p.choice("prune.name", self.prune.name, list(PRUNE_SCHEDULES))
        p.choice("prune.params", self.prune.params, PARAM_SETS)
        p.choice("prune.scope", self.prune.scope, PRUNE_SCOPES)
        p.choice("trainer.precision", self.trainer.precision, PRECISIONS)

    def _check_data(self, p: "_Problems") -> None:
        check_data(self.data, p)

    def _check_sens_and_optim(self, p: "_Problems") -> None:
        p.at_least("sens.lam", self.sens.lam, 0)
        if isinstance(self.sens.lam, (int, float)) and self.sens.lam >= 1:
            p.append(f"sens.lam={self.sens.lam!r} must be below 1 (it is the fraction of an insensitive "
                     f"weight removed per step; typical values 1e-6 to 1e-3).")
        if self.sens.classes is not None:
            p.at_least("sens.classes", self.sens.classes, 1)
        if self.optim.lr is not None:  # None: the model or optimizer name is unknown, said above
            p.at_least("optim.lr", self.optim.lr, 0, strict=True)
        p.at_least("optim.momentum", self.optim.momentum, 0)
        if _TYPES["float"][0](self.optim.momentum) and self.optim.momentum >= 1:
            p.append(f"optim.momentum={self.optim.momentum} must be below 1: the velocity would never "
                     f"forget a gradient and the run would not settle. 0.9 is usual.")
        if self.optim.name == "sgd" and self.optim.nesterov is True and _TYPES["float"][0](self.optim.momentum) \
                and self.optim.momentum <= 0:
            p.append("optim.nesterov=true needs optim.momentum > 0.")
        for name in ("eta_schedule", "lam_schedule"):
            s: ScheduleConfig = getattr(self, name)
            p.at_least(f"{name}.gamma", s.gamma, 0)
            p.at_least(f"{name}.min_factor", s.min_factor, 0)
            if s.name != "step" or not isinstance(s.milestones, (list, tuple)):
                continue
            for m in s.milestones:
                p.fraction(f"{name}.milestones", m)
                if _TYPES["int"][0](m) and m < 0 and isinstance(self.trainer.epochs, int) \
                        and epoch_at(m, self.trainer.epochs) <= 0:
                    p.append(f"{name}.milestones: {m} counts back from the last epoch to before the "
                             f"first (of trainer.epochs={self.trainer.epochs} it is epoch "
                             f"{epoch_at(m, self.trainer.epochs)}), which would divide the factor "
                             f"from the start. Train at least {1 - m} epochs, count back fewer, or give "
                             f"a fraction of the run ({name}.milestones=[0.8]).")

    def _check_prune(self, p: "_Problems") -> None:
        schedule = PRUNE_SCHEDULES[self.prune.name] if _registered(self.prune.name, PRUNE_SCHEDULES) else None
        for key, low in getattr(schedule, "MINIMUMS", {}).items():
            p.at_least(f"prune.{key}", getattr(self.prune, key), low)
        stop, start, epochs = self.prune.stop_epoch, self.prune.start_epoch, self.trainer.epochs
        if is_fraction(start):
            p.fraction("prune.start_epoch", start)
        else:
            p.at_least("prune.start_epoch", start, 1)
        if is_gradual(self.prune.name):
            self._check_gmp(p)
        if stop is None or not isinstance(epochs, int) or p.has("prune.start_epoch"):
            return
        if is_fraction(stop):
            p.fraction("prune.stop_epoch", stop)
            if is_fraction(start) and _TYPES["float"][0](stop) and stop < start:
                p.append(f"prune.stop_epoch={stop!r} comes before prune.start_epoch={start!r} (both fractions "
                         f"of the run), so nothing would be pruned; give a later stop.")
            return
        first = first_epoch_at(start, epochs) if _TYPES["float"][0](start) else 1
        if _TYPES["int"][0](stop) and stop < 0:
            if epoch_at(stop, epochs) < first:
                p.append(f"prune.stop_epoch={stop} counts back from the last epoch: of trainer.epochs="
                         f"{epochs} it is epoch {epoch_at(stop, epochs)}, before prune.start_epoch={start}, "
                         f"so nothing would be pruned. Train at least {first - stop} epochs, count back "
                         f"fewer, or give the window's end as a fraction of the run (prune.stop_epoch=0.8); "
                         f"~experiment leaves the main job's schedule out altogether.")
        else:
            p.at_least("prune.stop_epoch", stop, first)

    def _check_gmp(self, p: "_Problems") -> None:
        try:
            target = target_sparsity(self.prune.target)
        except (TypeError, ValueError) as err:
            p.append(f"{err}; prune=gmp prunes to it.")
            return
        if isinstance(self.prune.initial, (int, float)) and not 0 <= self.prune.initial <= target:
            p.append(f"prune.initial={self.prune.initial!r} must lie between 0 and the target sparsity "
                     f"{target:g} (prune.target={self.prune.target}).")
        for key in ("start_step", "end_step"):
            if getattr(self.prune, key) is not None:
                p.at_least(f"prune.{key}", getattr(self.prune, key), 0)
        if self.prune.end_step is not None and self.prune.start_step is not None \
                and isinstance(self.prune.end_step, int) and isinstance(self.prune.start_step, int) \
                and self.prune.end_step <= self.prune.start_step:
            p.append(f"prune.end_step={self.prune.end_step} must come after prune.start_step="
                     f"{self.prune.start_step}.")
        stop, epochs = self.prune.stop_epoch, self.trainer.epochs
        if self.prune.end_step is None and isinstance(stop, int) and isinstance(epochs, int) and stop > epochs:
            p.append(f"prune.stop_epoch={stop} comes after the last epoch (trainer.epochs={epochs}): gmp "
                     f"would never reach prune.target={self.prune.target}. Set prune.stop_epoch to at most "
                     f"{epochs} (or count back from the end, e.g. -4).")

    def _check_trainer(self, p: "_Problems") -> None:
        p.at_least("trainer.epochs", self.trainer.epochs, 1)
        p.at_least("trainer.batch_size", self.trainer.batch_size, 1)
        p.at_least("trainer.warmup_epochs", self.trainer.warmup_epochs, 0)
        p.at_least("trainer.checkpoint_every", self.trainer.checkpoint_every, 0)
        too_long = None if self.trainer.init is None else path_too_long(self.trainer.init)
        if too_long is not None:
            p.append(f"trainer.init: {too_long}. Give a shorter path of the file (a link to it, or a "
                     f"copy in a folder nearer the root).")
        elif self.trainer.init is not None and not Path(str(self.trainer.init)).expanduser().is_file():
            p.append(f"trainer.init={self.trainer.init} does not exist; give the path of a sensreg "
                     f"model.pt or of a state dict file.")
        if not (isinstance(self.trainer.resume, bool) or (isinstance(self.trainer.resume, str) and self.trainer.resume)):
            p.append(f"trainer.resume={self.trainer.resume!r} is not one of: false, true (continue in this "
                     f"run folder), or the path of a run folder to continue.")
        if self.trainer.progress not in ("auto", True, False):
            p.append(f"trainer.progress={self.trainer.progress!r} is not one of: auto, true, false.")
        device_problem = check_device(self.trainer.device)
        if device_problem:
            p.append(device_problem)
        elif self.trainer.precision == "fp16" and resolve_device(self.trainer.device).type != "cuda":
            # Most CPUs emulate float16 (a LeNet-5 step took ten times as long as in float32
            # here); bfloat16 is the CPU's reduced precision, and it needs no loss scaling.
            p.append(f"trainer.precision=fp16 needs a CUDA GPU, but trainer.device={self.trainer.device} trains "
                     f"on the CPU{' (no GPU here)' if self.trainer.device == 'auto' else ''}; use "
                     f"trainer.precision=bf16 (or fp32) on the CPU.")

    def _model_data_problems(self) -> list[str]:
        """The model must accept the dataset's inputs (VGG-16 needs at least 32x32, say). It is
        built on the meta device: shapes only, no memory, no initialization cost."""
        shape = input_shape(self.data.name, self.data.image_size, self.data.shape)
        # (A folder dataset's classes are known once its folder is read; the count only sizes the
        # last layer, which any count fits.)
        classes = getattr(DATASETS.get(self.data.name), "num_classes", None) or self.data.num_classes
        external = self.model.name in EXTERNAL
        name = f"model.name={self.model.name}" + (f" ({self.model.arch or self.model.factory})" if external else "")
        inputs = "x".join(map(str, shape))
        output = None
        try:
            with torch.device("meta"):
                model = build_model(self.model.name, classes, shape, **self.model.options())
        except UnknownModel as err:
            return [f"{err}."]
        except Exception as err:  # noqa: BLE001 - a factory's own failure, whatever it raises
            if not external and isinstance(err, (ValueError, RuntimeError, TypeError)):
                return [self._cannot_train(name, inputs, err, shape, external)]  # (own networks check inputs as built)
            why = first_line(err)
            return [f"{name} could not be built with its settings ({classes} classes, inputs {inputs}): "
                    f"{type(err).__name__}: {why}. Fix the model's factory or its settings (model.*)."]
        if external:
            try:
                with torch.device("meta"):
                    output = model(torch.empty((2, *shape)))
            except Exception as err:  # noqa: BLE001 - whatever its forward raises on these inputs
                return [self._cannot_train(name, inputs, err, shape, external)]
        problem = _network_problem(name, model, output, classes)
        if problem:
            return [problem]
        # Weights, gradients, the optimizer's state and the sensitivity: four copies at least.
        need = 4 * 4 * sum(param.numel() for param in model.parameters())
        have = _memory_bytes()
        if have and need > have:
            return [f"model.name={self.model.name} with {classes} classes (data.num_classes) has "
                    f"{need // 16:,} parameters, which need {need / 2**30:.3g} GiB to train, more than this "
                    f"machine's {have / 2**30:.3g} GiB; use fewer classes or a smaller model."]
        if self.prune.name != "none" and not prunable_names(model, self.prune.params, self.prune.batchnorm):
            return [f"{name} has no parameter that prune.params={self.prune.params} may prune (all frozen, or "
                    f"none of two or more dimensions), so prune={self.prune.name} would prune nothing. Set "
                    f"prune.params=all, or prune=none."]
        if is_gradual(self.prune.name):
            names = prunable_names(model, self.prune.params, self.prune.batchnorm)
            params = dict(model.named_parameters())
            total = sum(params[n].numel() for n in names)
            kept = total - round(target_sparsity(self.prune.target) * total)
            if kept < len(names):  # every pruned tensor keeps at least its largest entry
                return [f"prune.target={self.prune.target} would keep {kept} of the network's {total:,} prunable "
                        f"parameters, fewer than one for each of its {len(names)} tensors: a target beyond "
                        f"the network. Give at most {total // len(names):,}x."]
        try:
            tape_for(VARIANTS[self.sens.name], model, [p for p in model.parameters() if p.requires_grad],
                     self.sens.reduction)
        except (PerSampleError, UnitError) as err:
            return [f"model.name={self.model.name}: {err}"]
        return []

    def _cannot_train(self, name: str, inputs: str, err: BaseException, shape, external: bool) -> str:
        why = first_line(err, empty=type(err).__name__)
        hint = ""
        if self.model.name == "torchvision" and shape[0] not in (1, 3):
            hint = " (torchvision's classification models take 3-channel images, or 1-channel ones repeated)"
        elif external:
            hint = " (or set its inputs with +model.kwargs.KEY=VALUE)"
        return (f"{name} cannot train on data.name={self.data.name} (inputs {inputs}): {why}. Choose a model made "
                f"for this dataset{hint}.")

    def _lambda_schedule_problems(self) -> list[str]:
        """lambda times its schedule's factor must stay below 1 in every regularized epoch (a step
        schedule with gamma > 1, or one that follows such an eta schedule, can take it there)."""
        epochs, warmup = self.trainer.epochs, self.trainer.warmup_epochs
        lam_at = lambda_schedule(vars(self.lam_schedule), vars(self.eta_schedule), epochs, warmup)
        # The factor is constant between milestones and monotone under cosine: its largest value
        # is at the first or last regularized epoch or where a milestone takes effect (looking at
        # every epoch would take forever for trainer.epochs=10**12).
        marks = {epoch_at(m, epochs) + shift for s in (self.eta_schedule, self.lam_schedule)
                 if s.name == "step" for m in s.milestones for shift in (-1, 0, 1, warmup)}
        candidates = {warmup, epochs - 1} | {e for e in marks if warmup <= e < epochs}
        for epoch in sorted(candidates):
            lam = self.sens.lam * lam_at(epoch)
            if lam >= 1:
                which = "the eta schedule it follows" if self.lam_schedule.name == FOLLOW_ETA else "its schedule"
                return [f"sens.lam={self.sens.lam!r} times {which} reaches {lam:g} in epoch {epoch + 1}; it "
                        f"must stay below 1. Lower sens.lam or the schedule's gamma, or set "
                        f"schedule@lam_schedule=constant."]
        return []

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hash(self) -> str:
        """A short hash of everything that defines the experiment except the seed.

        Runs that differ only in trainer.seed share it (so they group across seeds); so do runs
        that differ only in where and how fast they run or where they read data from
        (``NOT_COMPUTATION``), which do not change what is computed.
        """
        d = self.to_dict()
        d["trainer"].pop("seed")
        for section, key in NOT_COMPUTATION:
            d[section].pop(key, None)
        for (section, key), old in LATER_KEYS.items():
            if d[section].get(key) == old:
                d[section].pop(key)
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# The schema of each config group's options (eta_schedule and lam_schedule are both chosen from
# the group schedule), and the defaults that are another key's value in a composed config.
GROUP_SCHEMAS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "sens": SensConfig,
                                  "optim": OptimConfig, "schedule": ScheduleConfig,
                                  "prune": PruneConfig, "trainer": TrainerConfig}
LINKED_DEFAULTS: dict[str, dict[str, str]] = {"prune": {"params": "${sens.params}"}}
# The prune.* keys each pruning schedule reads besides name, params and batchnorm (PruneConfig
# lives with the method, so it carries no _only marks; its option files set the others to null).
PRUNE_READS: dict[str, tuple[str, ...]] = {
    "search": ("patience", "tolerance", "start_epoch", "stop_epoch", "scope"),
    "fixed": ("threshold", "start_epoch", "stop_epoch", "every", "scope"),
    "gmp": ("target", "initial", "every", "scope", "start_epoch", "stop_epoch", "start_step", "end_step"),
    "gmp_units": ("target", "initial", "every", "start_epoch", "stop_epoch", "start_step", "end_step"),
    "none": (),
}
SECTION_GROUPS = {"eta_schedule": "schedule", "lam_schedule": "schedule"}  # a section and the group it is chosen from


def key_readers(section: str, key: str) -> tuple[str, ...] | None:
    """The options of ``section``'s group that read ``section.key``; None where every one does."""
    group = SECTION_GROUPS.get(section, section)
    if group == "prune":
        if key in ("name", "params", "batchnorm"):
            return None
        return tuple(option for option, keys in PRUNE_READS.items() if key in keys)
    schema = GROUP_SCHEMAS.get(group)
    found = {f.name: f for f in fields(schema)} if schema is not None else {}
    return found[key].metadata.get("options") if key in found else None


def option_node(group: str, option: str) -> dict[str, Any]:
    """The config an option of a group starts from: the schema's default of every key the option
    reads (``_only``), its name, and the linked defaults. Hydra knows it as ``schema.GROUP.OPTION``
    (registered by ``sensreg.configs``); the option's YAML file adds its presets."""
    schema = GROUP_SCHEMAS[group]
    node = {f.name: _plain(f.default_factory() if f.default_factory is not MISSING else f.default)
            for f in fields(schema) if option in f.metadata.get("options", (option,))}
    if "name" in node:
        node["name"] = option
    return node | LINKED_DEFAULTS.get(group, {})


def _plain(value: Any) -> Any:
    # OmegaConf holds lists, not tuples (OptimConfig.betas)
    return list(value) if isinstance(value, tuple) else value


def upgrade_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A config as an older version saved it (config.yaml, a checkpoint's config), read as this
    version's: every key added since (``LATER_KEYS``) that a saved section lacks gets the value
    that does what the older version did. The one place old run folders are translated; readers
    index the result directly. Sections the config does not have stay absent."""
    out = {section: (dict(values) if isinstance(values, dict) else values) for section, values in saved.items()}
    for (section, key), old in LATER_KEYS.items():
        if isinstance(out.get(section), dict):
            out[section].setdefault(key, copy.deepcopy(old))
    return out


# What each annotation of the dataclasses above accepts, and how a problem is worded.
_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    # nan would slip through every comparison, and no key means anything by an infinity.
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "text"),
    "list[int]": (lambda v: isinstance(v, (list, tuple)) and all(_TYPES["int"][0](x) for x in v),
                  "a list of integers, e.g. [30,60]"),
    # a position in the run (positions.py): an epoch, or a fraction of the run
    "int | float": (lambda v: _TYPES["float"][0](v), "an epoch (an integer) or a fraction of the run "
                    "(a number between 0 and 1)"),
    "list[int | float]": (lambda v: isinstance(v, (list, tuple)) and all(_TYPES["float"][0](x) for x in v),
                          "a list of epochs or of fractions of the run, e.g. [30,60] or [0.8]"),
    "tuple[float, float]": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2
                            and all(_TYPES["float"][0](x) for x in v), "two numbers, e.g. [0.9,0.999]"),
    "dict[str, Any]": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                       "keyword arguments, e.g. +model.kwargs.image_size=32"),
}


def _network_problem(name: str, model, output, classes: int | None) -> str | None:
    """What makes a built network untrainable: no trainable parameter, a layer of size zero, or
    an output (``output``, for a batch of 2; None where not run) that is not one row of
    float logits per sample and class."""
    params = dict(model.named_parameters())
    if not any(p.requires_grad for p in params.values()):
        return (f"{name} has no trainable parameter ({'all are frozen' if params else 'it has none'}): "
                f"there is nothing to train. Give a model with parameters that require gradients.")
    empty = [n for n, p in params.items() if p.numel() == 0]
    if empty:
        return (f"{name} has a layer of size zero ({', '.join(empty[:3])}: no entries), which cannot be trained "
                f"or pruned; check the widths the model is built with.")
    if output is None:
        return None
    expect = f"a tensor of shape (batch, {classes}) of float logits"
    if not isinstance(output, torch.Tensor):
        kind = type(output).__name__
        hint = (" (torchvision's googlenet and inception_v3 return one in training: build them with "
                "+model.kwargs.aux_logits=false)" if isinstance(output, tuple) else "")
        return (f"{name} returns a {kind}, not {expect}{hint}. Wrap the model so that its forward returns the "
                f"logits alone.")
    if not output.dtype.is_floating_point:
        return f"{name} returns {output.dtype} values, not {expect}; its forward must return the logits."
    if output.dim() != 2 or output.shape[0] != 2 or (classes is not None and output.shape[1] != classes):
        return (f"{name} returns shape {tuple(output.shape)} for a batch of 2, not (2, {classes}): the logits, "
                f"one row per sample and one column per class. Give the model num_classes={classes} "
                f"(a factory takes it as its first argument) or flatten its output.")
    return None


def _memory_bytes() -> int | None:
    """This machine's physical memory (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _registered(name: Any, registry: dict) -> bool:
    """Whether ``name`` names an entry of ``registry`` (a list given as a name names none)."""
    return isinstance(name, str) and name in registry


def check_data(data: "DataConfig", p: "_Problems") -> None:
    """The checks of the data section (train, and the data.* overrides of eval and export)."""
    if data.name != "synthetic" and not (isinstance(data.root, str) and data.root.strip()):
        p.append(f"data.root={data.root!r} must name the folder where the dataset lives (e.g. data.root=data).")
    if not (isinstance(data.val_fraction, (int, float)) and 0 < data.val_fraction < 1):
        p.append(f"data.val_fraction={data.val_fraction!r} must lie strictly between 0 and 1.")
    p.at_least("data.eval_batch_size", data.eval_batch_size, 1)
    # torch.Generator takes seeds from -2^63 to 2^64 - 1 (data/registry.py: split_train_val)
    if _TYPES["int"][0](data.split_seed) and not -(2**63) <= data.split_seed < 2**64:
        p.append(f"data.split_seed={data.split_seed} is outside the seeds PyTorch takes: use an "
                 f"integer from {-(2**63)} to {2**64 - 1}.")
    if data.name == "synthetic":
        p.at_least("data.num_train", data.num_train, 2)  # a training and a validation sample
        p.at_least("data.num_test", data.num_test, 1)
        p.at_least("data.num_classes", data.num_classes, 2)
        p.at_least("data.noise", data.noise, 0)
        if not (isinstance(data.shape, (list, tuple)) and len(data.shape) == 3
                and all(_TYPES["int"][0](v) and v >= 1 for v in data.shape)):
            p.append(f"data.shape={data.shape!r} must be three positive integers, channels, height "
                     f"and width of one image, e.g. [1,28,28] (like MNIST) or [3,32,32] (like CIFAR).")
        elif not p:
            _check_synthetic_size(data, p)
    if _registered(data.name, DATASETS) and DATASETS[data.name].from_files:
        if data.on_device:
            p.append(f"data.on_device=true cannot hold data.name={data.name}: its images are "
                     f"decoded from files batch by batch, never held on the device as a whole; "
                     f"set data.on_device=false.")
        p.at_least("data.num_workers", data.num_workers, 0)
        p.at_least("data.prefetch_factor", data.prefetch_factor, 1)
        p.at_least("data.image_size", data.image_size, 1)
        if _TYPES["int"][0](data.resize) and _TYPES["int"][0](data.image_size) \
                and data.resize < data.image_size:
            p.append(f"data.resize={data.resize} is smaller than data.image_size={data.image_size}: "
                     f"the evaluation crop would reach past the resized image. Set data.resize >= "
                     f"data.image_size (ImageNet's usual pair: 256 and 224).")


def _check_synthetic_size(data: "DataConfig", p: "_Problems") -> None:
    """The generated images are held in memory whole: more than this machine has would end
    the run in an out-of-memory kill instead of a message."""
    c, h, w = data.shape
    # the images, and one prototype image per class (data/tensors.py: load_synthetic), float32
    need = (data.num_train + data.num_test + data.num_classes) * c * h * w * 4
    have = _memory_bytes()
    if have and need > have:
        p.append(f"data.num_train={data.num_train} and data.num_test={data.num_test} images of "
                 f"data.shape={list(data.shape)} in data.num_classes={data.num_classes} classes "
                 f"need {need / 2**30:.3g} GiB of memory, more than this machine's {have / 2**30:.3g} GiB; "
                 f"generate fewer or smaller images, or fewer classes.")


def data_problems(data: "DataConfig") -> list[str]:
    """Every invalid value of a data section on its own (as train checks it), one sentence each."""
    p = _Problems()
    typed = _type_problems("data", data)
    p += [message for _, message in typed]
    if not typed:
        check_data(data, p)
    return list(p)


class _Problems(list):
    """The problems found so far (one sentence each), and the two checks most values need."""

    def choice(self, key: str, value: Any, known) -> None:
        if value not in known:
            self.append(f"{key}={value!r} is not one of: {', '.join(map(str, known))}.")

    def has(self, *keys: str) -> bool:
        """Whether a problem was found with one of ``keys`` already."""
        return any(m.startswith(f"{key}=") for m in self for key in keys)

    def fraction(self, key: str, value: Any) -> None:
        """A position given as a float is a fraction of the run: it must lie in [0, 1]."""
        # (nan and the infinities are no numbers to place: the type check names them)
        if is_fraction(value) and math.isfinite(value) and not 0.0 <= value <= 1.0:
            self.append(f"{key}={value!r}: a float is a fraction of the run and must lie between 0 and 1 "
                        f"(0.8: after 80 % of it); give an epoch as an integer ({round(value)}).")

    def at_least(self, key: str, value: Any, low: float, strict: bool = False) -> None:
        # value != value: nan, which every comparison would let through
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value or \
                (value <= low if strict else value < low):
            self.append(f"{key}={value!r} must be a number {'>' if strict else '>='} {low}.")


def _type_problems(section: str, obj: Any) -> list[tuple[str, str]]:
    """(key, sentence) for every value of ``obj`` whose type its annotation does not accept."""
    out = []
    for f in fields(obj):
        annotation = str(f.type)
        optional = annotation.endswith(" | None")
        check = _TYPES.get(annotation.removesuffix(" | None"))
        value = getattr(obj, f.name)
        if check is None or (optional and value is None) or check[0](value):
            continue
        key = f"{section}.{f.name}"
        out.append((key, f"{key}={value!r} must be {check[1]}{' (or null)' if optional else ''}."))
    return out


def config_differences(saved: dict[str, Any], now: dict[str, Any],
                       ignore: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """``section.key: saved -> now`` for every value that differs, except the ``ignore`` keys.

    ``saved`` is read through ``upgrade_config``.
    """
    saved = upgrade_config({section: dict(values or {}) for section, values in saved.items()})
    out = []
    for section in sorted(set(saved) | set(now)):
        a, b = saved.get(section) or {}, now.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if (section, key) in ignore:
                continue
            if a.get(key) != b.get(key) and not _same_sequence(a.get(key), b.get(key)):
                out.append(f"{section}.{key}: {a.get(key)!r} in the saved run, {b.get(key)!r} now")
    return out


def _same_sequence(a: Any, b: Any) -> bool:
    # YAML and JSON give lists where the dataclasses hold tuples (betas).
    return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)


def check_device(device: str) -> str | None:
    """None if ``device`` can be used here, else a sentence saying why not and what to use."""
    if device in ("auto", "cpu"):
        return None
    if isinstance(device, str) and device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"trainer.device={device} but no CUDA GPU is available here; use trainer.device=cpu or auto."
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            return (f"trainer.device={device} names a GPU that is not present "
                    f"({torch.cuda.device_count()} visible); use cuda:0..{torch.cuda.device_count() - 1}.")
        return None
    return f"trainer.device={device!r} is not one of: auto, cpu, cuda, cuda:N."


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
