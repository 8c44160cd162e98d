"""The machine as IR: the `accel.config` module attribute, the AccelConfig as canonical JSON;
and `accel.source`, the digest of the quantized IR a module is compiled from.

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
SOURCE_ATTR = "accel.source"  # "sha256:..." of the quantized IR's text the module came from


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


def module_source(module: ModuleOp) -> str:
    """The digest of the quantized IR this module was compiled from, or "" if unrecorded."""
    text = module.attributes.get(SOURCE_ATTR)
    return text.data if isinstance(text, StringAttr) else ""


def set_module_source(module: ModuleOp, digest: str) -> None:
    """Record the digest of the quantized IR this module is compiled from (the driver does,
    before `tile`), so the binary can say which IR it belongs to."""
    module.attributes[SOURCE_ATTR] = StringAttr(digest)
