"""Server code publishing with an id and no callback waits for the answer (``server/answers.py``)."""

from __future__ import annotations

import pytest

from rusty_ws import create_app
from rusty_ws.brokers.base import Landed
from rusty_ws.exceptions import ProtocolError
from rusty_ws.protocol import Delivery, ErrorCode
from rusty_ws.server.answers import wait_for_answer
from rusty_ws.server.state import state_of
from support import MS, hub_config


def test_an_app_thread_publishing_with_an_id_gets_the_answer_and_a_repeat_is_the_first() -> None:
    hub = state_of(create_app(hub_config(history_size=10))).hub
    try:
        delivery = Delivery("app", "T", 1, "2026-12-01T00:00:00Z", "s")
        landed, repeat = hub.publish(delivery, "id-1")
        again, repeat_again = hub.publish(delivery, "id-1")
        assert (landed.position.offset, repeat) == (1, False)
        assert (again.position, repeat_again) == (landed.position, True)
    finally:
        hub.shutdown(1.0)


def test_an_answer_that_never_comes_is_unavailable_after_the_timeout() -> None:
    with pytest.raises(ProtocolError) as raised:
        wait_for_answer(lambda answer: None, 50 * MS, "nobody answered")
    assert (raised.value.code, "nobody answered" in str(raised.value)) == (ErrorCode.UNAVAILABLE, True)


def test_an_error_answer_is_raised_and_a_landing_returned() -> None:
    refused = ProtocolError(ErrorCode.INVALID_MESSAGE, "no")
    with pytest.raises(ProtocolError) as raised:
        wait_for_answer(lambda answer: answer(refused), 1.0, "late")
    assert raised.value is refused
    assert wait_for_answer(lambda answer: answer((Landed(None, 2), False)), 1.0, "late") == (Landed(None, 2), False)
