"""Is a directory a loadable pipeline snapshot of a registry model? Checked before upload.

A snapshot that a worker fails to load costs a GPU node's start-up and an edit's
attempts, and the error then comes from deep inside ``from_pretrained``. So
``editflow models push`` checks, without torch, what loading needs first:

* ``model_index.json`` parses and names the registry's pipeline class for the model;
* every component it lists has its directory and its config (``config.json`` for a model,
  ``scheduler_config.json``, ``tokenizer_config.json``, ``processor_config.json`` or
  ``preprocessor_config.json``), and every JSON file parses;
* every model component has safetensors weights (one file, or an index whose shards all
  exist), and every safetensors file's header is readable and its tensors lie inside the
  file.

Each failure is one :class:`SnapshotError` naming the file and what was expected.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editflow.core.errors import InvalidInputError
from editflow.inference.registry import REGISTRY

MODEL_INDEX = "model_index.json"
#: A safetensors header larger than this is not a header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000


class SnapshotError(InvalidInputError):
    """The snapshot would not load; the message names the file."""


@dataclass(frozen=True)
class Snapshot:
    """A checked snapshot: its model, pipeline class, components and weight files."""

    root: Path
    model: str
    pipeline_class: str
    components: dict[str, tuple[str, str]]
    weights: tuple[Path, ...]


def _json(path: Path, root: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SnapshotError(f"{path.relative_to(root)} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{path.relative_to(root)} is not valid JSON: {exc}") from None


def _config_names(class_name: str) -> tuple[str, ...]:
    """The config file(s) a component of ``class_name`` is loaded from (any one will do)."""
    if class_name.endswith("Scheduler"):
        return ("scheduler_config.json",)
    if "Tokenizer" in class_name:
        return ("tokenizer_config.json",)
    if class_name.endswith("Processor"):
        return ("processor_config.json", "preprocessor_config.json")
    return ("config.json",)


def check_safetensors(path: Path, root: Path) -> int:
    """The number of tensors in ``path`` once its header proves readable and consistent."""
    where = path.relative_to(root)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise SnapshotError(f"{where} is not a safetensors file: shorter than its header size")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise SnapshotError(
                f"{where} is not a safetensors file (or is truncated): its header claims "
                f"{length} bytes of a {size}-byte file"
            )
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SnapshotError(f"{where}: the safetensors header is not JSON: {exc}") from None
    data = size - 8 - length
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, info in tensors.items():
        begin, end = (info.get("data_offsets") or [None, None])[:2]
        if not isinstance(begin, int) or not isinstance(end, int) or not 0 <= begin <= end <= data:
            raise SnapshotError(
                f"{where}: tensor {name!r} lies outside the file (offsets {begin}..{end}, "
                f"{data} bytes of data): the file is truncated or corrupt"
            )
    return len(tensors)


def _weights(directory: Path, root: Path) -> list[Path]:
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if indexes:
        shards: set[str] = set()
        for index in indexes:
            shards.update((_json(index, root).get("weight_map") or {}).values())
        missing = [s for s in sorted(shards) if not (directory / s).is_file()]
        if missing:
            raise SnapshotError(
                f"{directory.relative_to(root)}: shard {missing[0]} named by "
                f"{indexes[0].name} is missing"
            )
        return [directory / s for s in sorted(shards)]
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise SnapshotError(
            f"{directory.relative_to(root)} has no weights: expected *.safetensors "
            "(save_pretrained(..., safe_serialization=True))"
        )
    return files


def validate_snapshot(root: Path, model: str) -> Snapshot:
    """Check ``root`` as a snapshot of registry model ``model`` (module docstring)."""
    if model not in REGISTRY:
        raise SnapshotError(
            f"--name {model!r} is not a registry model: expected one of {', '.join(REGISTRY)}",
            field="name",
        )
    if not root.is_dir():
        raise SnapshotError(f"{root} is not a directory")
    index = _json(root / MODEL_INDEX, root)
    expected = REGISTRY[model].pipeline_class
    if index.get("_class_name") != expected:
        raise SnapshotError(
            f"{MODEL_INDEX} names pipeline {index.get('_class_name')!r}; {model} is loaded "
            f"as {expected}: is this the right snapshot for --name {model}?"
        )
    components: dict[str, tuple[str, str]] = {}
    weights: list[Path] = []
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or None in entry[:2]:
            continue  # metadata, or an optional component left out
        library, class_name = str(entry[0]), str(entry[1])
        components[name] = (library, class_name)
        directory = root / name
        if not directory.is_dir():
            raise SnapshotError(f"{MODEL_INDEX} lists component {name}, but {name}/ is missing")
        configs = _config_names(class_name)
        if not any((directory / c).is_file() for c in configs):
            raise SnapshotError(
                f"{name}/{configs[0]} is missing (the config of {class_name})"
                + (f"; {name}/{configs[1]} would do too" if len(configs) > 1 else "")
            )
        for config in sorted(directory.glob("*.json")):
            _json(config, root)
        if configs == ("config.json",):
            weights += _weights(directory, root)
    for path in weights:
        check_safetensors(path, root)
    return Snapshot(root, model, expected, components, tuple(weights))
