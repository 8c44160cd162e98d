"""Pruning plans read from JSON: every malformed entry is refused with its JSON location
(types, bounds and versions checked before any array is built), and a file that is not text is
not a plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dopant.passes._prune_channels.plan import PruningPlan
from dopant.support.errors import InputError

AFFINE = {"offset": 0, "per_channel": 1, "stride": 1, "spacing": 1}


def _one_group_plan(group: dict[str, Any], version: object = 1) -> str:
    """A plan whose one group 'c' is conv c's 2 output channels, edited by `group`."""
    member = {"path": "c", "op": "conv2d", "dim": "out", **AFFINE}
    entry = {"size": 2, "keep": [0], "members": [member], **group}
    return json.dumps({"format": "dopant-pruning-plan", "version": version, "groups": {"c": entry}})


def _member(**fields: object) -> dict[str, Any]:
    """Group edits that give its member `fields` (None: without the field)."""
    member = {"path": "c", "op": "conv2d", "dim": "out", **AFFINE, **fields}
    return {"members": [{k: v for k, v in member.items() if v is not None}]}


WHERE = r"plan.json: groups\.c"
CHANNELS = {k: None for k in AFFINE}  # a member spelling its indices out


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (
            _member(**CHANNELS, channels=[[0], [1, 2]]),
            rf"{WHERE}\.members\[0\]\.channels\[1\] lists 2 indices and channels\[0\] 1;",
        ),
        (
            _member(**CHANNELS, channels="01"),
            rf"{WHERE}\.members\[0\]: 'channels' must be a list\.",
        ),
        (
            _member(**CHANNELS, channels=["0", [1]]),
            rf"{WHERE}\.members\[0\]\.channels\[0\] is '0'; it must be a list of indices\.",
        ),
        (  # a float is not truncated to an index
            _member(**CHANNELS, channels=[[0.5], [1]]),
            rf"{WHERE}\.members\[0\]\.channels\[0\]\[0\] is 0\.5; an index is an integer from "
            r"0 to 16777215\.",
        ),
        (
            _member(**CHANNELS, channels=[[True], [1]]),
            rf"{WHERE}\.members\[0\]\.channels\[0\]\[0\] is True;",
        ),
        (
            _member(**CHANNELS, channels=[[0], [-1]]),
            rf"{WHERE}\.members\[0\]\.channels\[1\]\[0\] is -1;",
        ),
        (
            _member(**CHANNELS, channels=[[0]]),
            rf"{WHERE}\.members\[0\]: 'channels' must hold one list per channel \(2\), not 1\.",
        ),
        (
            _member(offset=2**70),
            rf"{WHERE}\.members\[0\]: 'offset' must be an integer from 0 to 16777215, not "
            r"1180591620717411303424\.",
        ),
        (
            _member(offset=-1),
            rf"{WHERE}\.members\[0\]: 'offset' must be an integer from 0 to 16777215, not -1\.",
        ),
        (
            _member(offset=1.0),
            rf"{WHERE}\.members\[0\]: 'offset' must be an integer from 0 to 16777215, not 1\.0\.",
        ),
        (
            _member(per_channel=2**40),
            rf"{WHERE}\.members\[0\]: 'per_channel' must be an integer from 1 to 16777215, not",
        ),
        (  # 2 channels of 2**23 indices: 2**24 in all, one more than a member may hold
            _member(per_channel=2**23),
            rf"{WHERE}\.members\[0\] spans 16777216 indices \(2 channels of 8388608\); a member "
            r"holds at most 16777215\.",
        ),
        (  # channel 1 of the group would be index 0 - 1
            _member(stride=-1),
            rf"{WHERE}\.members\[0\] reaches index -1 \(offset 0, stride -1, spacing 1\); the "
            r"indices must lie in 0\.\.16777215\.",
        ),
        (
            _member(offset=2**23, stride=2**23),  # channel 1: 2**23 + 2**23
            rf"{WHERE}\.members\[0\] reaches index 16777216 \(offset 8388608, stride 8388608,",
        ),
        (
            {"size": 2**40},
            rf"{WHERE}: 'size' must be an integer from 1 to 16777215, not 1099511627776\.",
        ),
        ({"size": True}, rf"{WHERE}: 'size' must be an integer from 1 to 16777215, not True\."),
        (
            {"keep": [0, "1"]},
            rf"{WHERE}\.keep\[1\] is '1'; a kept channel is an integer \(a channel index\)\.",
        ),
        ({"keep": [False]}, rf"{WHERE}\.keep\[0\] is False; a kept channel is an integer"),
    ],
)
def test_a_malformed_plan_names_the_json_location(group: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        PruningPlan.from_json(_one_group_plan(group), "plan.json")


def test_the_version_is_the_integer_1() -> None:
    assert PruningPlan.from_json(_one_group_plan({})).keep() == {"c": (0,)}  # the edits' baseline
    for version in (True, 1.0, "1"):  # True == 1.0 == 1 in Python
        with pytest.raises(
            InputError, match=rf"plan.json: 'version' must be the integer 1, not {version!r}\."
        ):
            PruningPlan.from_json(_one_group_plan({}, version), "plan.json")


def test_a_file_that_is_not_text_is_not_a_plan(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"\x80\x02}q\x00")  # how a pickle starts: not UTF-8
    with pytest.raises(
        InputError,
        match=rf"'{weights}' is not a JSON pruning plan: byte 0 is not UTF-8 text; give a "
        r"plan\.json written by `dopant prune --plan-out`\.",
    ):
        PruningPlan.load(str(weights))
