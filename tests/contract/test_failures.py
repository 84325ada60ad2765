"""Contract: what happens when a handler fails. Retries (backoff, ``Retry(delay)``) until
success; exhausted retries, ``Reject`` and errors not retried become dead letters with their
reason; a replay delivers again and removes the letter; purge deletes; the inbox skips a second
delivery of a handled (event id, handler); a handler's Redis effects commit with its inbox
record, or not at all; a delivery whose worker dies in it ``max_deliveries`` times is a poison
dead letter."""

from __future__ import annotations

import pytest

from celery_events import DeadLetter, DeadLetterNotFound, PublishResult

from .harness import BackendHarness


@pytest.fixture(scope="module", autouse=True)
def _services(backend: BackendHarness) -> None:
    backend.start("flaky")


def publish(backend: BackendHarness, data: dict[str, object], word: str = "pay") -> PublishResult:
    return backend.publisher.publish(f"work.{word}", data)


def letters(backend: BackendHarness, result: PublishResult) -> list[DeadLetter]:
    found = backend.bus("flaky").dead_letters.list(limit=None)
    return [letter for letter in found if letter.event_id == result.event.id]


def test_a_failing_handler_is_retried_with_backoff_until_it_succeeds(
    backend: BackendHarness,
) -> None:
    result = publish(backend, {"fail_times": 2})
    backend.wait_until(lambda: backend.handled(result.event.id).get("flaky.work") == 1)
    backend.settle("flaky")
    [effect] = backend.effects(result.event.id, "flaky.work")
    assert effect.run == 3  # two failures, then success
    assert backend.handled(result.event.id) == {"flaky.work": 1, "flaky.witness": 1}
    assert letters(backend, result) == []


def test_a_handler_asking_for_a_retry_runs_again(backend: BackendHarness) -> None:
    result = publish(backend, {"retry_delay": 0.2})
    backend.wait_until(lambda: backend.handled(result.event.id).get("flaky.work") == 1)
    backend.settle("flaky")
    [effect] = backend.effects(result.event.id, "flaky.work")
    assert effect.run == 2
    assert letters(backend, result) == []


def test_exhausted_retries_become_a_dead_letter_that_a_replay_delivers_again(
    backend: BackendHarness,
) -> None:
    # Given a handler that is broken for this event
    cause = backend.unique("cause")
    backend.board.set(f"broken:{cause}", "1")
    result = publish(backend, {"broken": cause})

    # When its retries run out, then the delivery is a dead letter with its reason and error
    backend.wait_until(lambda: letters(backend, result), what="a dead letter")
    backend.settle("flaky")
    [letter] = letters(backend, result)
    assert (letter.reason, letter.handler, letter.attempts) == ("retries_exhausted", "flaky.work", 4)
    assert letter.event_name == "work.pay" and letter.service == "flaky"
    assert letter.envelope is not None and letter.envelope["data"] == {"broken": cause}
    assert letter.error_type == "ValueError"
    assert "broken for this event" in letter.error_message
    assert letter.traceback and "Traceback" in letter.traceback
    assert backend.handled(result.event.id) == {"flaky.witness": 1}
    dead_letters = backend.bus("flaky").dead_letters
    assert dead_letters.get(letter.id) == letter

    # When the cause is fixed and the letter replayed
    backend.board.set(f"broken:{cause}", "")
    assert [r.id for r in dead_letters.replay(letter.id)] == [letter.id]

    # Then the same event reaches that handler again, and the letter is gone
    backend.wait_until(lambda: backend.handled(result.event.id).get("flaky.work") == 1)
    backend.settle("flaky")
    assert backend.handled(result.event.id) == {"flaky.work": 1, "flaky.witness": 1}
    with pytest.raises(DeadLetterNotFound, match=letter.id):
        dead_letters.get(letter.id)
    assert letters(backend, result) == []


def test_reject_and_errors_not_retried_are_dead_letters_at_once(backend: BackendHarness) -> None:
    rejected = publish(backend, {"reject": True})
    not_retried = publish(backend, {"bad_key": True})
    backend.wait_until(lambda: letters(backend, rejected) and letters(backend, not_retried))
    backend.settle("flaky")
    [letter] = letters(backend, rejected)
    assert (letter.reason, letter.attempts, letter.error_type) == ("rejected", 1, "Reject")
    assert letter.error_message == "the order is cancelled"
    [other] = letters(backend, not_retried)
    assert (other.reason, other.attempts, other.error_type) == ("not_retried", 1, "KeyError")
    assert backend.handled(rejected.event.id) == {"flaky.witness": 1}


def test_purge_deletes_the_chosen_dead_letters(backend: BackendHarness) -> None:
    word = backend.unique("purge")
    first, second = (publish(backend, {"reject": True}, word) for _ in range(2))
    kept = publish(backend, {"reject": True})
    backend.wait_until(lambda: all(letters(backend, r) for r in (first, second, kept)))
    dead_letters = backend.bus("flaky").dead_letters
    assert dead_letters.purge(event_name=f"work.{word}") == 2
    assert dead_letters.list(event_name=f"work.{word}") == []
    assert letters(backend, first) == letters(backend, second) == []
    [letter] = letters(backend, kept)
    assert dead_letters.purge(letter.id) == 1
    assert letters(backend, kept) == []
    with pytest.raises(DeadLetterNotFound):
        dead_letters.purge(letter.id)


def test_the_inbox_skips_a_second_delivery_of_a_handled_event(backend: BackendHarness) -> None:
    # Given an event each handler handled once
    result = publish(backend, {})
    backend.wait_until(
        lambda: backend.handled(result.event.id) == {"flaky.work": 1, "flaky.witness": 1}
    )

    # When the same event (same id) is delivered again, as an outbox resend does
    again = backend.publisher.publish_event(result.event)
    assert {d.handler for d in again.deliveries} == {"flaky.work", "flaky.witness"}
    assert not {d.task_id for d in again.deliveries} & {d.task_id for d in result.deliveries}

    # Then the handler with an inbox skips it; the one without runs again
    backend.wait_until(lambda: backend.handled(result.event.id).get("flaky.witness") == 2)
    backend.settle("flaky")
    assert backend.handled(result.event.id) == {"flaky.work": 1, "flaky.witness": 2}
    assert letters(backend, result) == []


@pytest.mark.requires("transactional_effects")
def test_effects_queued_by_a_failed_run_are_dropped_and_a_successful_runs_kept(
    backend: BackendHarness,
) -> None:
    # Given a handler that queues its effect on bus.redis_effects(), then fails once
    result = backend.publisher.publish("tally.count", {"fail_times": 1})

    # Then only the effect of the run that succeeded is there, committed with its inbox record
    backend.wait_until(lambda: backend.handled(result.event.id))
    backend.settle("flaky")
    assert [(e.handler, e.run) for e in backend.effects(result.event.id)] == [("flaky.tally", 2)]

    # And a second delivery of the event, skipped by the inbox, adds none
    backend.publisher.publish_event(result.event)
    backend.settle("flaky")
    assert [(e.handler, e.run) for e in backend.effects(result.event.id)] == [("flaky.tally", 2)]
    assert backend.board.count(f"runs:flaky.tally:{result.event.id}") == 2


@pytest.mark.requires("dead_worker_recovery")
def test_a_delivery_whose_worker_dies_in_it_too_often_is_a_poison_dead_letter(
    backend: BackendHarness,
) -> None:
    # Given a handler that kills the process running it, every time
    result = publish(backend, {"crash": True})

    # Then after max_deliveries (3) runs the delivery is a dead letter, not a crash loop
    backend.wait_until(lambda: letters(backend, result), timeout=60, what="a poison dead letter")
    [letter] = letters(backend, result)
    assert (letter.reason, letter.attempts) == ("too_many_deliveries", 3)
    assert letter.error_type == "PoisonMessageError"
    assert backend.board.count(f"runs:flaky.work:{result.event.id}") == 3
    assert backend.handled(result.event.id) == {"flaky.witness": 1}

    # And the service still handles events
    after = publish(backend, {})
    backend.wait_until(lambda: backend.handled(after.event.id).get("flaky.work") == 1)
