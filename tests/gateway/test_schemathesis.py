"""Property-based checks of the whole HTTP API against its own OpenAPI document (schemathesis).

Runs against a real ``editflow gateway run`` on loopback with the session's
NATS and MinIO, but on stream names no operator consumes (``isolated_events``):
hundreds of generated edits are published and stored for real, and none of
them reaches a GPU Job. ``POST /edit`` is exercised too, with its wait cut to
1 s (``EDITFLOW_GATEWAY__WAIT_TIMEOUT_SECONDS``): every valid generated call
answers ``failed`` with the id of the edit that continues, which is the
documented timeout answer. Rate limits are off here (the limiter has its own
tests).

Every schemathesis check runs except ``positive_data_acceptance`` ("a
schema-valid request must be accepted"): some rules are not expressible in
JSON Schema (a template's own parameters, blank prompts, the upload prefix
of ``image_key``, ``s3://`` keys outside the platform bucket), and such
requests are rightly answered 422. The document does state what it can (one
image source, a prompt or a template, URL schemes). Nothing leaves loopback:
generated image URLs are only published, never fetched, since no worker
consumes these streams.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.gateway.servers import TOKEN, isolated_events, running_gateway

pytestmark = [pytest.mark.platform, pytest.mark.slow]


@pytest.fixture(scope="module")
def schema_gateway(stack, tmp_path_factory):
    env = {
        **isolated_events(),
        "EDITFLOW_GATEWAY__RATE_LIMIT_PER_MINUTE": "0",
        "EDITFLOW_GATEWAY__READ_RATE_LIMIT_PER_MINUTE": "0",
        "EDITFLOW_GATEWAY__WAIT_TIMEOUT_SECONDS": "1",
    }
    with running_gateway(stack, tmp_path_factory.mktemp("schemathesis"), **env) as server:
        yield server


MAX_EXAMPLES = 40


def test_api_conforms_to_its_openapi_document(schema_gateway) -> None:
    """Every operation, ``MAX_EXAMPLES`` generated requests each, all schemathesis checks.

    (Operations are driven one by one with hypothesis: schemathesis' lazy
    pytest loader does not run under pytest 9.)
    """
    schema = schemathesis.openapi.from_url(f"{schema_gateway.url}/openapi.json")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            case.call_and_validate(headers=auth, excluded_checks=[positive_data_acceptance])

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label}: {exc}")
    assert operations == 19  # POST /v1/edits/{id}/select and the desk's seven included
    assert not failures, "\n\n".join(failures)
