"""The wheelhouse is kept once per machine and lent to a build context only for the build.

Issue 19: a clean-clone CI run died with ENOSPC inside ``pip wheel``, because every clone
downloaded its own 3.5 GB of worker wheels into its checkout. These tests use a pip stand-in
(the download itself is pip's, and the image tests build with the real one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from editflow.devstack import wheelhouse

LAYER = "inference"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDITFLOW_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "constraints.txt").write_text("torch==2.15.0\n")
    monkeypatch.setattr(wheelhouse, "requirement_lines", lambda repo, layer: ["torch"])
    return repo


def _fake_pip(calls: list[list[str]], *, fail: bool = False):
    def run(argv, **_):
        calls.append(list(argv))
        into = Path(argv[argv.index("--wheel-dir") + 1])
        (into / "torch-2.15.0-cp311-none-any.whl").write_bytes(b"wheel bytes")
        if fail:
            raise RuntimeError("pip wheel died half-way")

    return run


def test_wheels_are_downloaded_once_into_the_cache_and_a_second_checkout_reuses_them(
    cache: Path, checkout: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    calls: list[list[str]] = []
    monkeypatch.setattr(wheelhouse, "run_streaming", _fake_pip(calls))
    lines: list[str] = []
    first = wheelhouse.ensure_wheelhouse(checkout, LAYER, lines.append)
    assert first == cache / "wheelhouse" / "worker"
    assert (first / "torch-2.15.0-cp311-none-any.whl").read_bytes() == b"wheel bytes"
    # Nothing in the checkout: a clone never holds a copy of its own.
    assert not (checkout / "images" / "wheelhouse").exists()

    other = tmp_path / "clone"
    other.mkdir()
    (other / "constraints.txt").write_text("torch==2.15.0\n")
    wheelhouse.ensure_wheelhouse(other, LAYER, lines.append)
    assert len(calls) == 1, "the second checkout downloaded again"
    assert "wheelhouse worker: cached (1 wheels" in lines[-1]


def test_an_interrupted_download_is_never_taken_for_a_wheelhouse(
    cache: Path, checkout: Path, monkeypatch: pytest.MonkeyPatch
):
    calls: list[list[str]] = []
    monkeypatch.setattr(wheelhouse, "run_streaming", _fake_pip(calls, fail=True))
    with pytest.raises(RuntimeError):
        wheelhouse.ensure_wheelhouse(checkout, LAYER, lambda line: None)
    assert not (cache / "wheelhouse" / "worker").exists()
    monkeypatch.setattr(wheelhouse, "run_streaming", _fake_pip(calls))
    wheelhouse.ensure_wheelhouse(checkout, LAYER, lambda line: None)
    assert len(calls) == 2


def test_a_changed_pin_replaces_the_cached_wheels_whole(
    cache: Path, checkout: Path, monkeypatch: pytest.MonkeyPatch
):
    calls: list[list[str]] = []
    monkeypatch.setattr(wheelhouse, "run_streaming", _fake_pip(calls))
    target = wheelhouse.ensure_wheelhouse(checkout, LAYER, lambda line: None)
    (target / "torch-2.14.0-cp311-none-any.whl").write_bytes(b"an old pin")
    (checkout / "constraints.txt").write_text("torch==2.16.0\n")
    wheelhouse.ensure_wheelhouse(checkout, LAYER, lambda line: None)
    assert len(calls) == 2
    assert sorted(p.name for p in target.glob("*.whl")) == ["torch-2.15.0-cp311-none-any.whl"]


def test_a_build_context_holds_hard_links_only_for_the_build(
    cache: Path, checkout: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(wheelhouse, "run_streaming", _fake_pip([]))
    cached = wheelhouse.ensure_wheelhouse(checkout, LAYER, lambda line: None)
    stale = wheelhouse.folder(checkout, LAYER)
    stale.mkdir(parents=True)
    (stale / "left-from-an-old-layout.whl").write_bytes(b"x")
    with wheelhouse.linked(checkout, [LAYER]):
        inside = sorted(p.name for p in stale.iterdir())
        assert inside == ["torch-2.15.0-cp311-none-any.whl"]
        lent = stale / inside[0]
        assert lent.stat().st_ino == (cached / inside[0]).stat().st_ino  # no second copy
        assert (checkout / "images" / "wheelhouse" / "control-plane").is_dir()
    assert list(stale.iterdir()) == []
    assert (cached / inside[0]).exists()
