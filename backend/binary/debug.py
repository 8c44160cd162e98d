"""The DEBUG section of a `.dpb`: the debug map, to JSON and back (the layout is described in
binary.py). Nothing in it changes what the program computes or how long it takes; it names
things for people: which instructions belong to which layer, where each layer's value is left
in DRAM, and each conv or linear layer's untiled GEMM, on which statistics compute the
standard fold model. The reader checks types and sizes, and raises BinaryError naming the
section's byte offset, the entry and the field."""

from __future__ import annotations

import re
from typing import Any

from dopant.backend.binary.format import GEMM_KEYS, MAX_ELEMENTS, MAX_INSTRUCTIONS, BinaryError
from dopant.backend.binary.sections import (
    check_keys,
    dumps_json,
    json_int,
    json_list,
    json_name,
    read_json,
    read_tensor,
    tensor_json,
)
from dopant.backend.image import LayerGemm, LayerRange, ProgramImage, TensorDesc

DebugMap = tuple[tuple[LayerRange, ...], tuple[TensorDesc, ...], tuple[LayerGemm, ...], str]
SOURCE = re.compile(r"(sha256:[0-9a-f]{64})?")  # the digest of the IR compiled, or unknown


def debug_payload(program: ProgramImage) -> bytes:
    debug = {
        "layers": [{"name": r.name, "start": r.start, "stop": r.stop} for r in program.layers],
        "values": [tensor_json(t) for t in program.values],
        "gemms": [{key: getattr(g, key) for key in GEMM_KEYS} for g in program.gemms],
        "source": program.source,
    }
    payload = dumps_json(debug, "DEBUG")
    read_debug(read_json(payload, "the DEBUG section"), "the DEBUG section")
    return payload


def read_debug(raw: Any, where: str) -> DebugMap:
    """The debug map: instruction ranges per layer, where each layer's value is left, each
    conv or linear layer's GEMM, and the digest of the IR the program was compiled from."""
    debug = check_keys(raw, ("layers", "values", "gemms", "source"), where)
    source = debug["source"]
    if not isinstance(source, str) or not SOURCE.fullmatch(source):
        raise BinaryError(
            f"{where} field source must be 'sha256:' and 64 hex digits or empty, got {source!r}"
        )
    layers = []
    where_layers = f"{where} field layers"
    for index, item in enumerate(json_list(debug["layers"], where_layers)):
        at = f"{where_layers} entry {index}"
        entry = check_keys(item, ("name", "start", "stop"), at)
        layers.append(
            LayerRange(
                name=json_name(entry["name"], f"{at} field name"),
                start=json_int(entry["start"], f"{at} field start", 0, MAX_INSTRUCTIONS),
                stop=json_int(entry["stop"], f"{at} field stop", 0, MAX_INSTRUCTIONS),
            )
        )
    values = tuple(
        read_tensor(item, f"{where} field values[{index}]")
        for index, item in enumerate(json_list(debug["values"], f"{where} field values"))
    )
    where_gemms = f"{where} field gemms"
    gemms = tuple(
        _gemm(item, f"{where_gemms} entry {index}")
        for index, item in enumerate(json_list(debug["gemms"], where_gemms))
    )
    return tuple(layers), values, gemms, source


def _gemm(raw: Any, where: str) -> LayerGemm:
    """One layer's GEMM: a name and positive sizes (whether the machine fuses to its widths and
    whether its MACs are its instructions' is the loader's check)."""
    entry = check_keys(raw, GEMM_KEYS, where)
    sizes = {
        key: json_int(entry[key], f"{where} field {key}", 1, MAX_ELEMENTS) for key in GEMM_KEYS[1:]
    }
    return LayerGemm(name=json_name(entry["name"], f"{where} field name"), **sizes)
