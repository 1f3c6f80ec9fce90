"""The shared URL policy (editflow.core.urlguard) and the callback subject rule, as pure code.

The guard's DNS is a seam (``resolve``): these tests answer through it to pin
down caching, time limits and the permanent/retriable split; the refusals
against the real gateway, NATS and apiserver are in tests/gateway/test_refusals.py
and tests/operator/test_refusals.py.
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from editflow.core.errors import InvalidInputError, UnsafeSourceError
from editflow.core.settings import EventsSettings
from editflow.core.urlguard import (
    AllowList,
    CachedResolver,
    HostNotFound,
    IPAddress,
    LookupFailed,
    UrlGuard,
    address_problem,
    system_resolve,
)
from editflow.events.callback_subjects import CallbackSubjects

PUBLIC = ipaddress.ip_address("93.184.215.14")


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254", "link-local"),
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("::ffff:192.168.1.1", "private"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
        ("100.64.0.1", "not globally routable"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
        ("fe80::1", "link-local"),
    ],
)
def test_non_public_addresses_are_named(address: str, why: str) -> None:
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None and why in problem


async def test_every_answer_must_be_public_and_the_first_is_pinned() -> None:
    async def mixed(host: str, port: int) -> list[IPAddress]:
        return [PUBLIC, ipaddress.ip_address("10.0.0.1")]

    guard = UrlGuard(resolver=mixed)
    with pytest.raises(UnsafeSourceError) as refused:
        await guard.check("https://mixed.oa.test/a.png", field="image_url")
    assert refused.value.field == "image_url"

    async def public(host: str, port: int) -> list[IPAddress]:
        return [PUBLIC]

    guard = UrlGuard(resolver=public)
    target = await guard.check("https://img.oa.test:8443/a b.png?x=1", field="f")
    url, headers, extensions = target.pinned()
    assert url == "https://93.184.215.14:8443/a b.png?x=1"
    assert headers == {"Host": "img.oa.test:8443"}
    assert extensions == {"sni_hostname": "img.oa.test"}


async def test_allow_listed_hosts_and_networks_pass() -> None:
    async def loopback(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    by_net = UrlGuard(AllowList.parse(cidrs=["127.0.0.0/8"]), loopback)
    assert (await by_net.check("http://images.local/a.png", field="f")).ip.is_loopback
    by_host = UrlGuard(AllowList.parse(hosts=["Images.Local."]), loopback)
    assert (await by_host.check("http://images.local/a.png", field="f")).ip.is_loopback


@pytest.mark.parametrize(
    "url",
    [
        "ftp://oa.test/a.png",
        "https:///a.png",
        "https://h:99999/",
        "https://\udcff\x98bad/a.png",  # no DNS name (schemathesis found it: was a 503)
        "https://" + "a" * 64 + ".test/a.png",  # a label longer than DNS allows
    ],
)
async def test_malformed_urls_are_invalid_input_naming_the_field(url: str) -> None:
    with pytest.raises(InvalidInputError) as bad:
        await UrlGuard().check(url, field="callback_url")
    assert bad.value.field == "callback_url"


async def test_a_real_nxdomain_is_permanent() -> None:
    with pytest.raises(HostNotFound):
        await system_resolve("no-such-host.invalid", 443)


async def test_answers_are_cached_and_concurrent_lookups_share_one_query() -> None:
    now = [0.0]
    calls: list[str] = []
    release = asyncio.Event()

    async def slow(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        await release.wait()
        return [PUBLIC]

    resolver = CachedResolver(slow, ttl_seconds=60, clock=lambda: now[0])
    waiting = [asyncio.create_task(resolver("a.oa.test", 443)) for _ in range(20)]
    await asyncio.sleep(0)
    release.set()
    assert all(r == [PUBLIC] for r in await asyncio.gather(*waiting))
    assert await resolver("A.oa.test.", 80) == [PUBLIC]  # cached (names compare normalised)
    assert calls == ["a.oa.test"]
    now[0] = 61.0  # past the TTL: asked again
    assert await resolver("a.oa.test", 443) == [PUBLIC]
    assert len(calls) == 2


async def test_nxdomain_is_cached_briefly_temporary_failures_never() -> None:
    now = [0.0]
    calls: list[str] = []

    async def answer(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        if host.startswith("gone"):
            raise HostNotFound(f"{host} does not exist")
        raise LookupFailed("SERVFAIL")

    resolver = CachedResolver(answer, negative_ttl_seconds=30, clock=lambda: now[0])
    for _ in range(3):
        with pytest.raises(HostNotFound):
            await resolver("gone.oa.test", 443)
        with pytest.raises(LookupFailed):
            await resolver("flaky.oa.test", 443)
    assert calls.count("gone.oa.test") == 1
    assert calls.count("flaky.oa.test") == 3


async def test_a_slow_lookup_is_cut_off_as_retriable() -> None:
    async def hangs(host: str, port: int) -> list[IPAddress]:
        await asyncio.Event().wait()
        return []

    resolver = CachedResolver(hangs, timeout_seconds=0.05)
    with pytest.raises(LookupFailed, match="did not answer within"):
        await resolver("slow.oa.test", 443)


async def test_the_cache_is_bounded() -> None:
    calls: list[str] = []

    async def answer(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return [PUBLIC]

    resolver = CachedResolver(answer, max_entries=2)
    for host in ("a.test", "b.test", "c.test", "a.test"):
        await resolver(host, 443)
    assert calls == ["a.test", "b.test", "c.test", "a.test"]  # a was evicted by c
    assert len(resolver._cache) == 2


@pytest.mark.parametrize(
    ("subject", "refused"),
    [
        ("oa.callbacks.my-oa.done", None),
        ("oa.callbacks", "not under the callback prefix"),
        ("oa.callbacksX.done", "not under the callback prefix"),
        ("$JS.API.STREAM.LIST", "NATS system subject"),
        ("$SYS.REQ.SERVER.PING", "NATS system subject"),
        ("$KV.bucket.key", "NATS system subject"),
        ("_INBOX.abc", "NATS system subject"),
        ("oa.approvals.image-edit", "editflow's own subjects"),
        ("editflow.completions.abc", "editflow's own subjects"),
        ("editflow.dlq.EDITFLOW_APPROVALS", "editflow's own subjects"),
        ("editflow.worker.results.e1", "editflow's own subjects"),
    ],
)
def test_callback_subjects_lie_under_the_prefix_and_never_on_system_or_own_subjects(
    subject: str, refused: str | None
) -> None:
    problem = CallbackSubjects.from_settings(EventsSettings()).problem(subject)
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem


def test_own_subjects_win_over_a_prefix_that_covers_them() -> None:
    rule = CallbackSubjects.from_settings(EventsSettings(callback_subject_prefix="editflow"))
    assert rule.problem("editflow.tenant-a.done") is None
    assert rule.problem("editflow.work.longcat-image-edit") is not None
