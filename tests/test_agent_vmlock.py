"""agent/vmlock: a VM's lock, lent to the hooks of its holder's after_* chains."""
from __future__ import annotations

import threading

import pytest

from vmhooks.agent.vmlock import OFFERED_TOKEN, VmLock, offered_token


def _try(lock: VmLock, token: str | None, blocking: bool = False) -> bool:
    """Whether a request offering `token` gets the lock (in a thread of its own)."""
    got: list[bool] = []

    def attempt() -> None:
        OFFERED_TOKEN.set(token)
        if lock.acquire(blocking, OFFERED_TOKEN.get()):
            got.append(True)
            lock.release()
        else:
            got.append(False)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(5)
    return got == [True]


def test_a_chain_lends_the_lock_only_while_it_runs_and_with_its_own_token():
    lock = VmLock()
    assert lock.acquire(True, None)
    try:
        with lock.lending() as first:
            assert first is not None and _try(lock, first)
            assert not _try(lock, "0" * 32)  # a wrong token waits like anyone
            assert not _try(lock, None)
        with lock.lending() as second:
            assert second not in (None, first)  # a process the first chain left behind gets nothing
            assert not _try(lock, first)
        assert not _try(lock, second)  # the chain is over, the holder still holds: the token is worth nothing
    finally:
        lock.release()
    with lock.lending() as unlocked:  # not holding it: nothing to lend
        assert unlocked is None


def test_a_borrower_has_the_lock_alone_and_the_chain_ends_after_it():
    lock = VmLock()
    borrowed, finish = threading.Event(), threading.Event()
    order: list[str] = []

    def borrower(token: str) -> None:
        assert lock.acquire(True, token)
        try:
            borrowed.set()
            finish.wait(5)
            with lock.lending() as own:  # its own hooks may borrow from it in turn
                assert own not in (None, token) and _try(lock, own)
            order.append("borrower done")
        finally:
            lock.release()

    assert lock.acquire(True, None)
    try:
        with lock.lending() as token:
            assert token is not None
            thread = threading.Thread(target=borrower, args=(token,))
            thread.start()
            assert borrowed.wait(5)
            assert not _try(lock, token)  # a second borrower waits for the first
            timer = threading.Timer(0.2, finish.set)
            timer.start()
        order.append("chain done")  # only once the borrower gave the lock back
    finally:
        lock.release()
        timer.cancel()
        finish.set()
        thread.join(5)
    assert order == ["borrower done", "chain done"]


def test_the_same_thread_locks_again_and_only_the_holder_releases():
    lock = VmLock()
    assert lock.acquire(True, None) and lock.acquire(False, None)
    lock.release()
    assert not _try(lock, None)  # still held once
    refused: list[str] = []

    def stranger() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            refused.append(str(exc))

    thread = threading.Thread(target=stranger)
    thread.start()
    thread.join(5)
    assert refused == ["releasing a VM lock this thread does not hold"]
    assert not _try(lock, None)  # a stranger's release changed nothing
    lock.release()
    assert _try(lock, None)


@pytest.mark.parametrize("header", [None, "", "\xe9" * 32, "G" * 32, "0" * 31, "0" * 33, "0" * 32 + "\n"])
def test_a_header_that_is_no_token_of_ours_is_no_token(header):
    assert offered_token(header) is None


def test_a_token_header_of_ours_is_taken():
    assert offered_token("0123456789abcdef" * 2) == "0123456789abcdef" * 2
