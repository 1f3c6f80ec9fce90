"""Which images a build leaves behind for removal (issue 19: the disk filled up).

The choice is a pure function of containers-storage's records; ``buildah rmi`` itself is run
by every real build of the image tests.
"""

from __future__ import annotations

from editflow.devstack.imageprune import StoredImage, to_remove

#: base <- deps-old <- app-old1, app-old2 ; base <- deps-new <- app-new ; wheel steps apart.
PARENTS = {
    "L-base": "",
    "L-deps-old": "L-base",
    "L-app-old1": "L-deps-old",
    "L-app-old2": "L-deps-old",
    "L-deps-new": "L-base",
    "L-app-new": "L-deps-new",
    "L-wheel-old": "L-base",
    "L-wheel-new": "L-base",
}


def _image(id_: str, layer: str, created: str, *names: str) -> StoredImage:
    return StoredImage(id=id_, names=names, top_layer=layer, created=created)


IMAGES = [
    _image("base", "L-base", "2026-01-01", "docker.io/library/debian:bookworm-slim"),
    _image("deps-old", "L-deps-old", "2026-01-02"),
    _image("w-old1", "L-app-old1", "2026-01-02", "localhost/editflow/worker:0.1.0-aaa"),
    _image("w-old2", "L-app-old2", "2026-01-03", "localhost/editflow/worker:0.1.0-bbb"),
    _image("wheel-old", "L-wheel-old", "2026-01-03"),
    _image("deps-new", "L-deps-new", "2026-01-04"),
    _image("wheel-new", "L-wheel-new", "2026-01-04"),
    _image("w-new", "L-app-new", "2026-01-04", "localhost/editflow/worker:0.1.0-ccc"),
]


def test_the_current_tag_and_the_one_before_stay_and_older_tags_go():
    removed = to_remove(IMAGES, PARENTS, "0.1.0-ccc")
    assert "w-old1" in removed
    assert not {"w-new", "w-old2", "base"} & set(removed)


def test_cache_steps_of_a_kept_image_stay_and_steps_nothing_builds_on_go():
    removed = to_remove(IMAGES, PARENTS, "0.1.0-ccc")
    # deps-old is still under w-old2 (kept), so the layer cache for it stays too.
    assert "deps-new" not in removed and "deps-old" not in removed
    assert {"wheel-old", "wheel-new"} <= set(removed)


def test_once_the_last_image_on_old_dependencies_goes_their_cache_step_goes_with_it():
    newer = [*IMAGES, _image("w-new2", "L-app-new", "2026-01-05", "localhost/editflow/worker:d")]
    removed = to_remove(newer, PARENTS, "d")
    assert {"w-old1", "w-old2", "deps-old"} <= set(removed)
    assert not {"w-new", "w-new2", "deps-new", "base"} & set(removed)


def test_images_of_other_names_are_never_touched():
    others = [_image("x", "L-app-old1", "2020-01-01", "docker.io/library/busybox:1")]
    assert to_remove(others, PARENTS, "0.1.0-ccc") == []
