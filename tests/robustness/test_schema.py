"""Schemathesis against the gateway's own OpenAPI, over HTTP to a real `gateway serve` with
tokens, on each backend: every route, fuzzed within and outside its schema, answers without
a 5xx, as documented (status, content type, headers, body schema), refuses a missing or a
bad token, and reads back what it stored (stateful runs, links inferred from Location).

Two of schemathesis's checks are left out. A key may be schema-valid and still break the
key rules (`a//b`, `..`), which JSON Schema cannot say: its 400 must be a documented
problem, but is no failure. And unknown query parameters are ignored, as S3 and HTTP at
large do, where the negative check wants them refused; tests/robustness/test_bad_input.py
holds the gateway to its own rules instead."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from gateway.app import create_app
from gateway.settings import Settings
from gateway.testing import MotoServer
from tests.conftest import SIGNING_KEY, TOKENS, bearer, tokens_json
from tests.robustness.conftest import Served, serve

schema = schemathesis.openapi.from_dict(create_app(Settings(data_dir=Path("unused"))).openapi())


@schemathesis.serializer("application/offset+octet-stream")
def tus_chunk(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    """A tus PATCH body is bytes, as application/octet-stream is."""
    return value if isinstance(value, bytes) else str(value).encode()


# tus answers a request without Tus-Resumable 412, as its specification says
schema.config.checks.missing_required_header.expected_statuses = [
    "400",
    "401",
    "403",
    "412",
    "415",
    "422",
]
EXAMPLES = {"local": 40, "s3": 20}
EXCLUDED: list[Any] = [positive_data_acceptance, negative_data_rejection]


@pytest.fixture(scope="module", params=["local", "s3"])
def secured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("schema")
    (folder / "tokens.json").write_text(tokens_json(TOKENS))
    env = {"GATEWAY_TOKENS_FILE": str(folder / "tokens.json"), "GATEWAY_SIGNING_KEY": SIGNING_KEY}
    moto: MotoServer | None = request.getfixturevalue("moto") if request.param == "s3" else None
    with serve(request.param, folder / "data", moto, env) as served:
        yield served


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_answers_as_documented(case: schemathesis.Case, secured: Served) -> None:
    case.call_and_validate(
        base_url=secured.url,
        headers=bearer("admin"),
        excluded_checks=EXCLUDED,
        timeout=30,
    )


def test_stateful_runs_read_back_what_they_store(secured: Served) -> None:
    """PUT or POST an object, then GET, HEAD or DELETE it by the link in the answer."""

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": secured.url, "headers": bearer("admin"), "timeout": 30}

        def validate_response(
            self, response: Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            case.validate_response(response, excluded_checks=EXCLUDED, recorder=self.recorder)

    Machine.run(
        settings=settings(
            max_examples=EXAMPLES[secured.backend],
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )
