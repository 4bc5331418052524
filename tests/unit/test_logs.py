"""The one logging module: context bound once per delivery, redaction on every handler."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import pytest

from shared.platform.errors import TransientError
from shared.platform.logs import (
    app_logger,
    bind,
    bind_request,
    configure_logging,
    current_context,
    redacted,
)


@pytest.fixture
def root_stream() -> Iterator[io.StringIO]:
    """A handler on the root logger, as the Functions host installs one."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s %(requestId)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def test_bound_context_rides_on_records_of_other_loggers_through_the_hosts_handler(root_stream: io.StringIO) -> None:
    """An SDK's record written during a delivery carries the requestId and has its addresses masked."""
    configure_logging()
    with bind_request(requestId="r-1"):
        logging.getLogger("azure.core.somewhere").warning("could not reach adele.vance@contoso.com")
    assert root_stream.getvalue().strip() == "azure.core.somewhere could not reach a***e@contoso.com r-1"


def test_exception_text_is_redacted_on_the_hosts_handler(root_stream: io.StringIO) -> None:
    """A traceback whose message holds an address is masked before it reaches the host."""
    configure_logging()
    try:
        raise ValueError("token for brian.j@tailspin.example: Bearer abc.def")
    except ValueError:
        with bind_request(requestId="r-2"):
            logging.getLogger("somelib").exception("failed")
    text = root_stream.getvalue()
    assert "brian.j@tailspin.example" not in text and "abc.def" not in text
    assert "b***j@tailspin.example" in text


def test_context_ends_with_its_block_and_later_binds_stay_inside_it() -> None:
    with bind_request(requestId="outer", dequeueCount=1):
        bind(attempt=2)
        assert dict(current_context()) == {"requestId": "outer", "dequeueCount": 1, "attempt": 2}
    assert dict(current_context()) == {}


def test_a_misspelt_context_field_is_refused() -> None:
    with pytest.raises(ValueError, match="requestid"), bind_request(requestid="x"):
        pass


async def test_concurrent_deliveries_each_see_their_own_context() -> None:
    """The worker runs invocations as concurrent tasks on one loop; their contexts do not mix."""
    seen: dict[str, str] = {}

    async def delivery(request_id: str) -> None:
        with bind_request(requestId=request_id):
            await asyncio.sleep(0.01)
            seen[request_id] = current_context()["requestId"]

    await asyncio.gather(*(delivery(f"r{i}") for i in range(5)))
    assert seen == {f"r{i}": f"r{i}" for i in range(5)}


def test_errors_raised_to_the_host_are_redacted() -> None:
    ours = redacted(TransientError("Graph is down for adele.vance@contoso.com"))
    assert str(ours) == "Graph is down for a***e@contoso.com" and isinstance(ours, TransientError)
    foreign = redacted(KeyError("brian.j@tailspin.example"))
    assert "brian.j@tailspin.example" not in str(foreign) and "KeyError" in str(foreign)
    plain = ValueError("nothing personal")
    assert redacted(plain) is plain


def test_app_logger_is_one_logger_with_both_filters() -> None:
    logger = app_logger()
    assert logger is app_logger() and {type(f).__name__ for f in logger.filters} >= {"ContextFilter", "RedactingFilter"}
