"""Old builds leave the build storage after each new one, so the disk stays bounded.

Every code change gives the images a new content-hash tag, and every change of a pinned
dependency a new multi-GB dependency layer. Nothing removed the old ones: a machine that
runs the suite a few times a day (each CI run, each session's rehearsals) filled its disk
until a CI run died with ENOSPC (issue 19). After each build (under the build lock, so no
other build is reading the storage), :func:`prune_build_storage` keeps, per editflow image
name, the tag just built and the newest one before it (a stack started a minute ago may
still push it), and removes:

* every older tag of editflow's images;
* the layer-cache images (``--layers`` leaves one unnamed image per step) that no kept
  image is built on: a step of a kept image's chain stays, so the next build still reuses
  its dependency layers; the steps of a stage that is only copied from (the wheel build)
  go, and cost seconds to redo.

Removal goes through ``buildah rmi``, which drops a layer only when no image uses it. Images
not named ``localhost/editflow/...`` (the base image) are never touched. The records are
read straight from containers-storage's JSON, as :meth:`ImageStorage.image_size` does:
buildah lists neither layer chains nor exact creation times in one call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from editflow.devstack.buildah import ImageStorage

PREFIX = "localhost/editflow/"


@dataclass(frozen=True)
class StoredImage:
    id: str
    names: tuple[str, ...]
    top_layer: str
    created: str


def stored_images(storage: ImageStorage) -> tuple[list[StoredImage], dict[str, str]]:
    """The storage's images, and each layer's parent (``""`` at the bottom)."""
    images_file = storage.root / f"{storage.driver}-images" / "images.json"
    layers_file = storage.root / f"{storage.driver}-layers" / "layers.json"
    if not images_file.exists():
        return [], {}
    images = [
        StoredImage(
            id=item["id"],
            names=tuple(item.get("names") or ()),
            top_layer=item.get("layer", ""),
            created=item.get("created", ""),
        )
        for item in json.loads(images_file.read_text())
    ]
    layers = json.loads(layers_file.read_text()) if layers_file.exists() else []
    return images, {layer["id"]: layer.get("parent", "") for layer in layers}


def to_remove(images: list[StoredImage], parents: dict[str, str], current_tag: str) -> list[str]:
    """The IDs to remove: old editflow tags, then the cache steps nothing kept is built on."""
    by_repository: dict[str, list[tuple[str, str]]] = {}
    for image in images:
        for name in image.names:
            if name.startswith(PREFIX) and ":" in name:
                repository, _, tag = name.rpartition(":")
                by_repository.setdefault(repository, []).append((image.created, tag))
    keep_tags: dict[str, set[str]] = {}
    for repository, tagged in by_repository.items():
        others = sorted((t for t in tagged if t[1] != current_tag), reverse=True)
        keep_tags[repository] = {current_tag, *(tag for _, tag in others[:1])}

    def kept_name(name: str) -> bool:
        if not name.startswith(PREFIX):
            return True  # the base image, anything of someone else's
        repository, _, tag = name.rpartition(":")
        return tag in keep_tags.get(repository, set())

    removed = [i.id for i in images if i.names and not any(kept_name(n) for n in i.names)]
    kept_chain: set[str] = set()
    for image in images:
        if image.names and image.id not in removed:
            layer = image.top_layer
            while layer and layer not in kept_chain:
                kept_chain.add(layer)
                layer = parents.get(layer, "")
    removed += [i.id for i in images if not i.names and i.top_layer not in kept_chain]
    return removed


def prune_build_storage(
    storage: ImageStorage, current_tag: str, report: Callable[[str], None]
) -> int:
    """Remove what :func:`to_remove` picks; returns how many images went."""
    images, parents = stored_images(storage)
    doomed = to_remove(images, parents, current_tag)
    if not doomed:
        return 0
    before = _disk_bytes(storage)
    for image_id in doomed:
        # One by one: an image another one still builds on fails alone, and stays.
        storage.buildah("rmi", "--force", image_id, check=False)
    freed = before - _disk_bytes(storage)
    report(f"build storage: removed {len(doomed)} old images, {freed / 1e9:.1f} GB freed")
    return len(doomed)


def _disk_bytes(storage: ImageStorage) -> int:
    layers_file = storage.root / f"{storage.driver}-layers" / "layers.json"
    if not layers_file.exists():
        return 0
    return sum(int(layer.get("diff-size", 0)) for layer in json.loads(layers_file.read_text()))
