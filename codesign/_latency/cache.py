"""The latency tables' cache on disk: one JSON file per machine and dopant version.

`DiskCache.of(config, folder)` names the file `latency-<hash>-<version>-f<format>.json` in
`folder` (default: `$DOPANT_CACHE_DIR`, else `~/.cache/dopant/latency`), where <hash> starts
`config.stable_hash()` (the machine, not its name) and <version> is dopant's. It holds

    {"format": "dopant-latency-table", "table_format": 1, "dopant": "0.1.0",
     "target": "<sha-256 hex>", "target_name": "edge16",
     "entries": {"conv2d in=64x28x28 out=64x28x28 ... w8a8": 115356, ...}}

keyed by signature text (`programs.Template.key`). `save` merges what is on disk first, so
tables built side by side (in parallel workers) add to one file, and writes atomically. A file
that does not read as such a table gives one DopantWarning naming it and is rebuilt; a folder
that cannot be written gives one warning and the table goes on in memory.
Bump TABLE_FORMAT when an entry's meaning changes (the single-op programs, the key text).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from dopant.backend.target import AccelConfig
from dopant.support.errors import DopantError, DopantWarning
from dopant.support.files import write_atomic

FORMAT = "dopant-latency-table"
TABLE_FORMAT = 1
ENV_DIR = "DOPANT_CACHE_DIR"


def default_folder() -> Path:
    """`$DOPANT_CACHE_DIR` if set, else `~/.cache/dopant/latency`."""
    chosen = os.environ.get(ENV_DIR)
    return Path(chosen) if chosen else Path.home() / ".cache" / "dopant" / "latency"


def dopant_version() -> str:
    try:
        return version("dopant")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


@dataclass
class DiskCache:
    """The cache file of one machine and dopant version (see the module docstring)."""

    path: Path
    header: dict[str, Any]
    writable: bool = True

    @staticmethod
    def of(config: AccelConfig, folder: str | os.PathLike[str] | None = None) -> DiskCache:
        digest = config.stable_hash().hex()
        release = dopant_version()
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", release)
        name = f"latency-{digest[:16]}-{safe}-f{TABLE_FORMAT}.json"
        header = {
            "format": FORMAT,
            "table_format": TABLE_FORMAT,
            "dopant": release,
            "target": digest,
            "target_name": config.name,
        }
        return DiskCache((Path(folder) if folder is not None else default_folder()) / name, header)

    def _read(self) -> dict[str, int]:
        """The entries on disk ({} when there is no file); DopantError saying what is wrong
        with a file that is not this machine's and version's table."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as error:
            raise DopantError(f"it cannot be read ({error})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise DopantError(f"it is not JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(data, dict):
            raise DopantError("it does not hold a JSON object")
        for field, expected in self.header.items():
            if field != "target_name" and data.get(field) != expected:
                raise DopantError(f"its {field} is {data.get(field)!r}, not {expected!r}")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entries.values()
        ):
            raise DopantError("its entries are not a map from signatures to cycle counts")
        return entries

    def load(self) -> dict[str, int]:
        """The entries on disk; {} with a warning when the file is unreadable (it is then
        replaced on the next save)."""
        try:
            return self._read()
        except DopantError as error:
            warnings.warn(
                f"the latency table cache {self.path} is unusable: {error}; it will be "
                "rebuilt (entries are measured again and the file rewritten).",
                DopantWarning,
                stacklevel=3,
            )
            return {}

    def save(self, entries: dict[str, int]) -> None:
        """Write `entries` merged over what is on disk now (an unreadable file is replaced)."""
        if not self.writable:
            return
        try:
            merged = {**self._read(), **entries}
        except DopantError:
            merged = dict(entries)
        payload = {**self.header, "entries": dict(sorted(merged.items()))}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(payload, indent=0) + "\n")
        except (OSError, DopantError) as error:
            self.writable = False
            warnings.warn(
                f"cannot write the latency table cache {self.path} ({error}); the table is "
                f"kept in memory only. Set {ENV_DIR} or cache_dir to a writable folder.",
                DopantWarning,
                stacklevel=3,
            )
