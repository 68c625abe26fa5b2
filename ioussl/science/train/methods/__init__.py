"""Self-supervised pretraining methods, by the name ``pretrain.method`` gives them.

Each method is one module implementing ``base.PretrainMethod``; ``register`` adds it here and to the names the
config accepts (``ioussl.config.PRETRAIN_METHODS``, which the orchestrator checks without importing torch).
docs/training.md shows how a third method is added.
"""

from __future__ import annotations

from collections.abc import Callable

from ioussl import config
from ioussl.config import RunConfig
from ioussl.errors import ConfigError
from ioussl.science.train.methods.base import PretrainMethod

METHODS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make ``pretrain.method = name`` build this ``PretrainMethod``."""

    def add(cls: type) -> type:
        METHODS[name] = cls
        if name not in config.PRETRAIN_METHODS:
            config.PRETRAIN_METHODS.append(name)
        return cls

    return add


def build_method(cfg: RunConfig, steps_per_epoch: int) -> PretrainMethod:
    """The method ``cfg.pretrain.method`` names, built for ``steps_per_epoch`` steps per epoch.

    Raises:
        ConfigError: no method of that name is registered.
    """
    assert cfg.pretrain is not None
    name = cfg.pretrain.method
    if name not in METHODS:
        raise ConfigError(f"pretrain.method {name!r} is not implemented; known: {', '.join(sorted(METHODS))}")
    return METHODS[name](cfg, steps_per_epoch)


def _register_builtin() -> None:
    from ioussl.science.train.methods.dino import DinoMethod
    from ioussl.science.train.methods.simsiam import SimSiamMethod

    for cls in (SimSiamMethod, DinoMethod):
        register(cls.name)(cls)


_register_builtin()
