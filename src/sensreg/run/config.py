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

import hashlib
import json
from pathlib import Path
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from sensreg.atomic import path_too_long
from sensreg.checks import Problems, is_int, is_number, only, registered, type_problems
from sensreg.errors import UserError
from sensreg.data import DATASETS
from sensreg.data.config import DataConfig, check_data
from sensreg.data.registry import validation_size
from sensreg.models import EXTERNAL, MODELS, model_options
from sensreg.records.config_keys import LATER_KEYS, NOT_COMPUTATION, NOT_EXPERIMENT
from sensreg.run.devices import check_device, resolve_device
from sensreg.run.network_check import network_problems
from sensreg.run.optimizers import OPTIMIZERS, OptimConfig
from sensreg.run.precision import PRECISIONS
from sensreg.method.prune_schedules import PruneConfig, PRUNE_SCHEDULES
from sensreg.method.positions import epoch_at
from sensreg.method.regularizer import FOLLOW_ETA, SCALE_OVER, SCALES, SCHEDULE_KEYS, SCHEDULES, lambda_schedule
from sensreg.method.sensitivity import OUTPUTS, REDUCTIONS, VARIANTS

PRUNE_SCOPES = ("global", "layer")  # one threshold on |w|, or τ·σ_l per tensor (pruning.Masks.scales)
PARAM_SETS = ("all", "weights")
# The seeds a run can use: torch.manual_seed takes 64-bit integers, and the run seeds its
# generators with seed, seed + 1 and seed + 2 (lifecycle.setup_training).
SEED_RANGE = (-(2**63), 2**63 - 3)


class ConfigError(UserError, ValueError):
    """A user mistake in the config; the message says what is wrong and how to fix it."""


@dataclass
class ModelConfig:
    name: str = "lenet300"
    # model=torchvision or timm: the network's name in that library's registry; model=custom:
    # the function that builds it, package.module:function; kwargs: keyword arguments for it
    arch: str | None = only("torchvision", "timm", default=None)
    factory: str | None = only("custom", default=None)
    kwargs: dict[str, Any] = only("torchvision", "timm", "custom", default_factory=dict)

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


def _schedules_reading(key: str) -> tuple[str, ...]:
    """The schedules that take ``key`` (regularizer.SCHEDULE_KEYS)."""
    return tuple(name for name, keys in SCHEDULE_KEYS.items() if key in keys)


@dataclass
class ScheduleConfig:
    name: str = "constant"  # the options: configs/schedule/
    # step: the factor is gamma^(milestones passed); milestones are epochs, or fractions of the
    # run (0.8): positions.py
    milestones: list[int | float] = only(*_schedules_reading("milestones"), default_factory=lambda: [30, 60])
    gamma: float = only(*_schedules_reading("gamma"), default=0.1)
    min_factor: float = only(*_schedules_reading("min_factor"), default=0.0)  # cosine: the factor at the end


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
                and registered(optimizer, OPTIMIZERS):
            self.optim = replace(self.optim, lr=OPTIMIZERS[optimizer].default_lr(model))

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
        typed = {key: message for f in fields(cls) for key, message in type_problems(f.name, getattr(cfg, f.name))}
        problems += list(typed.values())
        # Range checks of a value of the wrong type would only repeat the problem.
        problems += cfg._problems().without(typed)
        if problems:
            raise ConfigError("Invalid configuration:\n  - " + "\n  - ".join(problems))
        return cfg

    def problems(self) -> list[str]:
        """Every invalid value, each as one sentence that names the key and the fix: the names
        chosen from a registry first, then each section's values; the checks that need valid
        values (λ's schedule, the model on the data's inputs) only once these pass."""
        return list(self._problems())

    def _problems(self) -> Problems:
        p = Problems()
        self._check_choices(p)
        check_data(self.data, p)
        self._check_sens_and_optim(p)
        if registered(self.prune.name, PRUNE_SCHEDULES):
            PRUNE_SCHEDULES[self.prune.name].check(self.prune, self.trainer.epochs, p)
        self._check_trainer(p)
        # The checks below compute with the values: they need every one of them valid, in type too
        # (a milestone that is not a number would end them in a traceback).
        if p or any(type_problems(f.name, getattr(self, f.name)) for f in fields(self)):
            return p
        p += self._lambda_schedule_problems()  # needs valid schedules, lambda and epochs
        self._check_run_length(p)
        if not p:
            p += network_problems(self)
        return p

    def _train_images(self) -> int | None:
        """Images of the training split once the validation split is held out (None: known only
        once a folder dataset is read)."""
        spec = DATASETS.get(self.data.name)
        n = self.data.num_train if self.data.name == "synthetic" else getattr(spec, "train_size", None)
        return None if n is None else n - validation_size(n, self.data.val_fraction)

    def _check_run_length(self, p: Problems) -> None:
        """What the length of the run makes impossible: a seed beyond the generators' range, a
        training split left empty, a pruning window after the run's last step or epoch."""
        seed = self.trainer.seed
        if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
            p.add("trainer.seed", f"trainer.seed={seed} is outside the seeds PyTorch takes: use an integer "
                  f"from {SEED_RANGE[0]} to {SEED_RANGE[1]} (the run also draws from seed + 1 and seed + 2).")
        train = self._train_images()
        if train is not None and train < 1:
            p.add("data.val_fraction", f"data.val_fraction={self.data.val_fraction} holds out every training "
                  f"image of data.name={self.data.name} for validation, leaving none to train on; lower it "
                  f"(0.1 is usual).")
            return
        epochs, warmup = self.trainer.epochs, self.trainer.warmup_epochs
        if warmup >= epochs and (self.sens.name != "none" or self.prune.name != "none"):
            p.add("trainer.warmup_epochs",
                  f"trainer.warmup_epochs={warmup} covers the whole run (trainer.epochs="
                  f"{epochs}): every epoch would be dense, with nothing regularized or pruned. Give fewer "
                  f"warm-up epochs than trainer.epochs (or train dense with sens=none prune=none).")
            return
        steps_per_epoch = None if train is None else -(-train // self.trainer.batch_size)
        PRUNE_SCHEDULES[self.prune.name].check_run(self.prune, epochs, steps_per_epoch, p)

    def _check_choices(self, p: Problems) -> None:
        p.choice("data.name", self.data.name, list(DATASETS))
        p.choice("model.name", self.model.name, [*MODELS, *EXTERNAL])
        if registered(self.model.name, MODELS):
            for key in ("arch", "factory", "kwargs"):
                if getattr(self.model, key):
                    p.append(f"model.{key} is read by model=torchvision, timm or custom only; "
                             f"model.name={self.model.name} is sensreg's own network: drop model.{key}.")
        p.choice("sens.name", self.sens.name, list(VARIANTS))
        p.choice("sens.output", self.sens.output, OUTPUTS)
        p.choice("sens.params", self.sens.params, PARAM_SETS)
        p.choice("sens.reduction", self.sens.reduction, REDUCTIONS)
        if registered(self.sens.name, VARIANTS):
            VARIANTS[self.sens.name].check(self.sens, p)
        p.choice("sens.scale", self.sens.scale, SCALES)
        p.choice("sens.scale_over", self.sens.scale_over, SCALE_OVER)
        if not (isinstance(self.sens.gamma, (int, float)) and 0 < self.sens.gamma < float("inf")):
            p.add("sens.gamma",
                  f"sens.gamma={self.sens.gamma!r} must be a positive, finite number (the factor on S "
                  f"under sens.scale=gamma; weights with S >= 1/gamma are not shrunk).")
        if self.sens.reduction == "sample" and self.trainer.compile:
            p.add("sens.reduction",
                  "sens.reduction=sample records each layer's input and output with module hooks, "
                  "which trainer.compile=true would compile away; set trainer.compile=false or "
                  "sens.reduction=batch.")
        p.choice("optim.name", self.optim.name, list(OPTIMIZERS))
        p.choice("eta_schedule.name", self.eta_schedule.name, list(SCHEDULES))
        p.choice("lam_schedule.name", self.lam_schedule.name, [*SCHEDULES, FOLLOW_ETA])
        p.choice("prune.name", self.prune.name, list(PRUNE_SCHEDULES))
        p.choice("prune.params", self.prune.params, PARAM_SETS)
        p.choice("prune.scope", self.prune.scope, PRUNE_SCOPES)
        p.choice("trainer.precision", self.trainer.precision, PRECISIONS)

    def _check_sens_and_optim(self, p: Problems) -> None:
        p.at_least("sens.lam", self.sens.lam, 0)
        if isinstance(self.sens.lam, (int, float)) and self.sens.lam >= 1:
            p.add("sens.lam",
                  f"sens.lam={self.sens.lam!r} must be below 1 (it is the fraction of an insensitive "
                  f"weight removed per step; typical values 1e-6 to 1e-3).")
        if self.sens.classes is not None:
            p.at_least("sens.classes", self.sens.classes, 1)
        if registered(self.optim.name, OPTIMIZERS):
            OPTIMIZERS[self.optim.name].check(self.optim, p)
        for name in ("eta_schedule", "lam_schedule"):
            s: ScheduleConfig = getattr(self, name)
            p.at_least(f"{name}.gamma", s.gamma, 0)
            p.at_least(f"{name}.min_factor", s.min_factor, 0)
            if s.name != "step" or not isinstance(s.milestones, (list, tuple)):
                continue
            for m in s.milestones:
                p.fraction(f"{name}.milestones", m)
                if is_int(m) and m < 0 and isinstance(self.trainer.epochs, int) \
                        and epoch_at(m, self.trainer.epochs) <= 0:
                    p.append(f"{name}.milestones: {m} counts back from the last epoch to before the "
                             f"first (of trainer.epochs={self.trainer.epochs} it is epoch "
                             f"{epoch_at(m, self.trainer.epochs)}), which would divide the factor "
                             f"from the start. Train at least {1 - m} epochs, count back fewer, or give "
                             f"a fraction of the run ({name}.milestones=[0.8]).")

    def _check_trainer(self, p: Problems) -> None:
        p.at_least("trainer.epochs", self.trainer.epochs, 1)
        p.at_least("trainer.batch_size", self.trainer.batch_size, 1)
        p.at_least("trainer.warmup_epochs", self.trainer.warmup_epochs, 0)
        p.at_least("trainer.checkpoint_every", self.trainer.checkpoint_every, 0)
        too_long = None if self.trainer.init is None else path_too_long(self.trainer.init)
        if too_long is not None:
            p.append(f"trainer.init: {too_long}. Give a shorter path of the file (a link to it, or a "
                     f"copy in a folder nearer the root).")
        elif self.trainer.init is not None and not Path(str(self.trainer.init)).expanduser().is_file():
            p.add("trainer.init",
                  f"trainer.init={self.trainer.init} does not exist; give the path of a sensreg "
                  f"model.pt or of a state dict file.")
        if not (isinstance(self.trainer.resume, bool) or (isinstance(self.trainer.resume, str) and self.trainer.resume)):
            p.add("trainer.resume",
                  f"trainer.resume={self.trainer.resume!r} is not one of: false, true (continue in this "
                  f"run folder), or the path of a run folder to continue.")
        if self.trainer.progress not in ("auto", True, False):
            p.add("trainer.progress",
                  f"trainer.progress={self.trainer.progress!r} is not one of: auto, true, false.")
        device_problem = check_device(self.trainer.device)
        if device_problem:
            p.add("trainer.device", device_problem)
        elif self.trainer.precision == "fp16" and resolve_device(self.trainer.device).type != "cuda":
            # Most CPUs emulate float16 (a LeNet-5 step took ten times as long as in float32
            # here); bfloat16 is the CPU's reduced precision, and it needs no loss scaling.
            p.add("trainer.precision",
                  f"trainer.precision=fp16 needs a CUDA GPU, but trainer.device={self.trainer.device} trains "
                  f"on the CPU{' (no GPU here)' if self.trainer.device == 'auto' else ''}; use "
                  f"trainer.precision=bf16 (or fp32) on the CPU.")


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


