"""Who may use the designer's desk: the reviewer role, separate from the OA token.

Two identity sources (docs/desk.md, "Who may use the desk"):

* **named tokens** from a mounted Secret (``desk_reviewers_file``): a JSON list of
  ``{"token", "name", "id", "namespaces"}``, or a folder with one such object per file
  (a Secret with one key per person; the key is the id when the object names none).
  A token is compared with every known token in constant time (``hmac.compare_digest``,
  as the guard checks the OA token), so timing tells nothing about which prefix matched.
* **a trusted identity header** set by an authenticating proxy (oauth2-proxy's
  ``X-Forwarded-Email``), believed only when the TCP peer is in
  ``desk_trusted_proxy_cidrs``: anyone else could write any name into it. The person's
  namespaces come from ``desk_reviewers``; a person not listed there has no namespaces.

A reviewer sees and acts only in their namespaces: the tenant boundary holds on the desk.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editflow.core.settings import GatewaySettings
from editflow.gateway.clients import Network, parse_networks


class NotAReviewer(Exception):
    """No valid reviewer identity (answered 401, with what to send)."""


class OutsideNamespaces(Exception):
    """A reviewer asked for a namespace not listed for them (answered 403)."""


@dataclass(frozen=True)
class Reviewer:
    id: str
    name: str
    namespaces: frozenset[str]

    def may_see(self, namespace: str) -> bool:
        return namespace in self.namespaces

    def require(self, namespace: str) -> None:
        if not self.may_see(namespace):
            raise OutsideNamespaces(
                f"reviewer {self.id!r} may not use namespace {namespace!r}; "
                f"theirs: {sorted(self.namespaces)}"
            )

    def as_person(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name}


@dataclass(frozen=True)
class _Entry:
    token: bytes
    reviewer: Reviewer


def _entry(raw: Any, where: str, default_id: str | None = None) -> _Entry:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a JSON object with token, name, namespaces")
    token = raw.get("token")
    name = raw.get("name")
    rid = raw.get("id") or default_id or name
    namespaces = raw.get("namespaces")
    if not isinstance(token, str) or len(token) < 16:
        raise ValueError(f"{where}.token: expected a string of at least 16 characters")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}.name: expected the person's name")
    if not isinstance(namespaces, list) or not all(isinstance(n, str) for n in namespaces):
        raise ValueError(f"{where}.namespaces: expected a list of namespace names")
    return _Entry(token.encode(), Reviewer(str(rid), name.strip(), frozenset(namespaces)))


def load_tokens(path: str | Path) -> tuple[_Entry, ...]:
    """The named tokens in ``path`` (a JSON list, or a folder of one object per file).

    A wrong entry fails at start-up naming the entry and field, never at the first login.
    """
    path = Path(path)
    entries: list[_Entry] = []
    if path.is_dir():
        for item in sorted(path.iterdir()):
            if item.name.startswith(".") or not item.is_file():  # Secret mounts' ..data links
                continue
            raw = json.loads(item.read_text(encoding="utf-8"))
            entries.append(_entry(raw, f"{path}/{item.name}", default_id=item.name))
    else:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, list):
            raise ValueError(f"{path}: expected a JSON list of reviewers")
        entries += [_entry(r, f"{path}[{i}]") for i, r in enumerate(raw)]
    tokens = [e.token for e in entries]
    if len(set(tokens)) != len(tokens):
        raise ValueError(f"{path}: two reviewers share a token; give each person their own")
    return tuple(entries)


class ReviewerDirectory:
    """Answers "who is this request?" for the desk, from a token or the trusted header."""

    def __init__(
        self,
        tokens: Iterable[_Entry] = (),
        *,
        header: str = "X-Forwarded-Email",
        proxies: tuple[Network, ...] = (),
        header_namespaces: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.tokens = tuple(tokens)
        self.header = header.lower()
        self.proxies = proxies
        self.header_namespaces = {
            k.lower(): frozenset(v) for k, v in (header_namespaces or {}).items()
        }

    @classmethod
    def from_settings(cls, gw: GatewaySettings) -> ReviewerDirectory:
        return cls(
            load_tokens(gw.desk_reviewers_file) if gw.desk_reviewers_file else (),
            header=gw.desk_trusted_header,
            proxies=parse_networks(gw.desk_trusted_proxy_cidrs),
            header_namespaces=gw.desk_reviewers,
        )

    def namespaces(self) -> frozenset[str]:
        """Every namespace some reviewer may see (whose queue gauges the gateway keeps fresh)."""
        found = {ns for e in self.tokens for ns in e.reviewer.namespaces}
        return frozenset(found.union(*self.header_namespaces.values()))

    @property
    def configured(self) -> bool:
        return bool(self.tokens or self.proxies)

    def by_token(self, token: str) -> Reviewer | None:
        supplied = token.encode()
        found: Reviewer | None = None
        for entry in self.tokens:  # every entry compared: no early exit to time
            if hmac.compare_digest(supplied, entry.token):
                found = entry.reviewer
        return found

    def identify(
        self, *, authorization: str | None, headers: Mapping[str, str], peer: str | None
    ) -> Reviewer:
        """The reviewer behind a request, or :class:`NotAReviewer` saying what is wrong."""
        if not self.configured:
            raise NotAReviewer(
                "the desk has no reviewers configured (gateway.desk.reviewers Secret or "
                "trusted proxy); ask the platform team"
            )
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise NotAReviewer("send 'Authorization: Bearer <your reviewer token>'")
            reviewer = self.by_token(token.strip())
            if reviewer is None:
                raise NotAReviewer("the reviewer token is not valid")
            return reviewer
        identity = next((v for k, v in headers.items() if k.lower() == self.header), None)
        if identity and self.proxies:
            if not self._from_proxy(peer):
                raise NotAReviewer(
                    f"{self.header} is believed only from the authenticating proxy, not from {peer}"
                )
            who = identity.strip()
            namespaces = self.header_namespaces.get(who.lower(), frozenset())
            return Reviewer(who, who, namespaces)
        raise NotAReviewer("missing reviewer identity: send 'Authorization: Bearer <token>'")

    def _from_proxy(self, peer: str | None) -> bool:
        try:
            addr = ipaddress.ip_address((peer or "").strip())
        except ValueError:
            return False
        return any(addr in net for net in self.proxies)
