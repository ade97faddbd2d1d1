"""The optimizers a run can train with (``optim=NAME``), by name in ``OPTIMIZERS``.

Each one owns its option: the optim.* settings it reads (``READS``, beyond the name and the
learning rate every optimizer reads), the checks of their values (``check_own``), its learning
rate where optim.lr is left at null (``default_lr``), and how it is built (``build``). Its
option's node (``schema.optim.NAME``, ``run/config_groups.py``) holds the keys it reads at
``OptimConfig``'s defaults; ``configs/optim/NAME.yaml`` names that node and adds its presets.

To add an optimizer: its keys as fields of ``OptimConfig`` (where no optimizer has them yet),
one subclass of ``Optimizer`` in ``OPTIMIZERS``, and ``configs/optim/NAME.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from sensreg.checks import Problems, is_number
from sensreg.models import NETWORK_LR


@dataclass
class OptimConfig:
    name: str = "sgd"
    # None: the network's default for this optimizer (Optimizer.default_lr: SGD 0.05, LeNet-5
    # 0.02, VGG-16 0.01; Adam 1e-3), filled in when the config is built, so that the saved
    # config, the hash and the run see the number
    lr: float | None = None
    momentum: float = 0.9  # sgd
    nesterov: bool = True  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = 1e-8  # adam


class Optimizer:
    """The base: what every optimizer reads (its name and optim.lr) and checks (lr > 0)."""

    name: ClassVar[str]
    READS: ClassVar[tuple[str, ...]] = ()  # the optim.* keys it reads beyond name and lr
    # optim.lr where it is left at null, unless the network needs another one (NETWORK_LR)
    DEFAULT_LR: ClassVar[float]

    @classmethod
    def reads(cls, key: str) -> bool:
        """Whether ``optim.KEY`` counts in a run with this optimizer."""
        return key in ("name", "lr", *cls.READS)

    @classmethod
    def default_lr(cls, model: str) -> float:
        """The learning rate on the network ``model`` when optim.lr is not given (docs/tuning.md
        "Default learning rates")."""
        return NETWORK_LR.get((model, cls.name), cls.DEFAULT_LR)

    @classmethod
    def check(cls, optim: OptimConfig, p: Problems) -> None:
        """Add to ``p`` every value of ``optim`` this optimizer cannot train with."""
        if optim.lr is not None:  # None: the model or optimizer name is unknown, said elsewhere
            p.at_least("optim.lr", optim.lr, 0, strict=True)
        cls.check_own(optim, p)

    @classmethod
    def check_own(cls, optim: OptimConfig, p: Problems) -> None:
        """The checks of the settings only this optimizer reads."""

    @classmethod
    def build(cls, params, optim: OptimConfig) -> torch.optim.Optimizer:
        raise NotImplementedError


class SGD(Optimizer):
    """SGD with (Nesterov) momentum."""

    name = "sgd"
    READS = ("momentum", "nesterov")
    DEFAULT_LR = 0.05

    @classmethod
    def check_own(cls, optim, p):
        p.at_least("optim.momentum", optim.momentum, 0)
        if is_number(optim.momentum) and optim.momentum >= 1:
            p.add("optim.momentum",
                  f"optim.momentum={optim.momentum} must be below 1: the velocity would never "
                  f"forget a gradient and the run would not settle. 0.9 is usual.")
        if optim.nesterov is True and is_number(optim.momentum) and optim.momentum <= 0:
            p.add("optim.nesterov", "optim.nesterov=true needs optim.momentum > 0.")

    @classmethod
    def build(cls, params, optim):
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015)."""

    name = "adam"
    READS = ("betas", "eps")
    DEFAULT_LR = 1e-3

    @classmethod
    def check_own(cls, optim, p):
        # (a list of the wrong length or type is named by the type check)
        betas = optim.betas
        if isinstance(betas, (list, tuple)) and len(betas) == 2 and all(is_number(b) for b in betas) \
                and not all(0 <= b < 1 for b in betas):
            p.add("optim.betas",
                  f"optim.betas={list(betas)} must both lie in [0, 1): they are the decay rates of "
                  f"the running means of the gradient and of its square. [0.9,0.999] is usual.")
        p.at_least("optim.eps", optim.eps, 0)

    @classmethod
    def build(cls, params, optim):
        return torch.optim.Adam(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


OPTIMIZERS: dict[str, type[Optimizer]] = {o.name: o for o in (SGD, Adam)}
