"""The machine as IR: the `accel.config` module attribute, the AccelConfig as canonical JSON.

`tile` writes it (or reads it, when no target is given), `convert-qnn-to-accel` and emission
read it, so a module carries the machine it was planned for and every pass after `tile` runs
from text. These two functions are the only reader and writer.
"""

from __future__ import annotations

import json

from xdsl.dialects.builtin import ModuleOp, StringAttr

from dopant.backend.target import AccelConfig
from dopant.support.errors import DopantError

CONFIG_ATTR = "accel.config"


def module_target(module: ModuleOp) -> AccelConfig:
    """The machine the module is planned for; DopantError if it names none."""
    text = module.attributes.get(CONFIG_ATTR)
    if not isinstance(text, StringAttr):
        raise DopantError(
            f"the module has no {CONFIG_ATTR} attribute; run the tile pass (tile{{target=...}}) "
            "first, which records the machine there."
        )
    return AccelConfig.from_dict(json.loads(text.data), CONFIG_ATTR)


def has_target(module: ModuleOp) -> bool:
    return CONFIG_ATTR in module.attributes


def set_module_target(module: ModuleOp, config: AccelConfig) -> None:
    """Record `config` as the machine the module is planned for."""
    module.attributes[CONFIG_ATTR] = StringAttr(json.dumps(config.to_dict(), sort_keys=True))
