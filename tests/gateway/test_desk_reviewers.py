"""The desk's reviewer role (editflow.gateway.reviewers): both identity sources, the tenant line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editflow.core.settings import GatewaySettings
from editflow.gateway.clients import parse_networks
from editflow.gateway.reviewers import (
    NotAReviewer,
    OutsideNamespaces,
    ReviewerDirectory,
    load_tokens,
)

LEI = {"token": "lei-token-0123456789", "name": "李雷", "id": "u-lei", "namespaces": ["design"]}
MEI = {"token": "mei-token-0123456789", "name": "韩梅梅", "namespaces": ["marketing", "design"]}


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "reviewers.json"
    path.write_text(json.dumps([LEI, MEI]), encoding="utf-8")
    return path


def by_token(directory: ReviewerDirectory, token: str) -> object:
    return directory.identify(authorization=f"Bearer {token}", headers={}, peer="10.0.0.9")


def test_a_named_token_identifies_its_person_and_namespaces(tokens_file: Path) -> None:
    directory = ReviewerDirectory(load_tokens(tokens_file))
    lei = directory.identify(authorization=f"Bearer {LEI['token']}", headers={}, peer="1.2.3.4")
    assert (lei.id, lei.name, lei.namespaces) == ("u-lei", "李雷", frozenset({"design"}))
    lei.require("design")
    with pytest.raises(OutsideNamespaces, match="marketing"):
        lei.require("marketing")
    assert directory.namespaces() == {"design", "marketing"}  # whose queues are watched
    mei = by_token(directory, str(MEI["token"]))
    assert mei.id == "韩梅梅" and mei.may_see("marketing")  # type: ignore[attr-defined]


def test_a_wrong_or_missing_token_is_no_reviewer(tokens_file: Path) -> None:
    directory = ReviewerDirectory(load_tokens(tokens_file))
    with pytest.raises(NotAReviewer, match="not valid"):
        by_token(directory, "lei-token-0123456780")
    with pytest.raises(NotAReviewer, match="Bearer"):
        directory.identify(authorization="Basic abc", headers={}, peer="1.2.3.4")
    with pytest.raises(NotAReviewer, match="missing reviewer identity"):
        directory.identify(authorization=None, headers={}, peer="1.2.3.4")


def test_a_secret_folder_has_one_person_per_key(tmp_path: Path) -> None:
    (tmp_path / "lei").write_text(json.dumps({**LEI, "id": None}), encoding="utf-8")
    (tmp_path / "..data").mkdir()  # what a Secret mount also holds
    lei = by_token(ReviewerDirectory(load_tokens(tmp_path)), str(LEI["token"]))
    assert lei.id == "lei"  # type: ignore[attr-defined]


def test_a_wrong_entry_fails_at_start_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{**LEI, "namespaces": "design"}]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[0\]\.namespaces"):
        load_tokens(path)
    path.write_text(json.dumps([LEI, {**MEI, "token": LEI["token"]}]), encoding="utf-8")
    with pytest.raises(ValueError, match="share a token"):
        load_tokens(path)


def header_directory() -> ReviewerDirectory:
    return ReviewerDirectory.from_settings(
        GatewaySettings(
            desk_trusted_proxy_cidrs=["10.42.0.0/16"],
            desk_reviewers={"lei@example.com": ["design"]},
        )
    )


def test_the_trusted_header_is_believed_from_the_proxy_only() -> None:
    directory = header_directory()
    headers = {"X-Forwarded-Email": "Lei@example.com"}
    lei = directory.identify(authorization=None, headers=headers, peer="10.42.7.1")
    assert lei.id == "Lei@example.com" and lei.may_see("design")
    assert not lei.may_see("marketing")
    with pytest.raises(NotAReviewer, match="only from the authenticating proxy"):
        directory.identify(authorization=None, headers=headers, peer="203.0.113.5")


def test_a_person_the_header_names_but_settings_do_not_sees_no_namespace() -> None:
    stranger = header_directory().identify(
        authorization=None, headers={"x-forwarded-email": "x@example.com"}, peer="10.42.0.2"
    )
    assert stranger.namespaces == frozenset()
    with pytest.raises(OutsideNamespaces):
        stranger.require("design")


def test_without_tokens_or_proxies_the_desk_is_closed() -> None:
    directory = ReviewerDirectory(proxies=parse_networks([]))
    with pytest.raises(NotAReviewer, match="no reviewers configured"):
        directory.identify(authorization="Bearer anything-at-all-123", headers={}, peer="::1")
