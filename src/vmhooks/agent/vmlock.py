"""One VM's lock, which its holder may lend to the hooks of its after_*
chains.

A hook that calls the agent back for its own VM (VDSM's openstacknet
resumes, from after_vm_start, the VM it had started paused) would
otherwise wait for the very operation that waits for the hook, until the
hook's timeout. So while the holder runs an after_* chain (its work on the
VM is done; only hooks and its answer are left), a request that shows the
chain's token takes the lock over, one at a time, and the chain ends only
once the lock is back: the two never act on the VM together. Each chain
has a token of its own (VMHOOKS_LOCK_TOKEN in its hooks' environment),
worth nothing once the chain ends.
"""
from __future__ import annotations

import hmac
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# The lock token a request offers: the API server sets it from the
# X-Vmhooks-Lock-Token header, which `vdsm.client` and `vmhooks.client` send
# when they run in a hook.
OFFERED_TOKEN: ContextVar[str | None] = ContextVar("vmhooks_offered_token", default=None)
TOKEN_FORM = re.compile(r"[0-9a-f]{32}")


def offered_token(header: str | None) -> str | None:
    """A header's token, or None when it is absent or not one of ours."""
    return header if header is not None and TOKEN_FORM.fullmatch(header) else None


class _Holder:
    __slots__ = ("thread", "depth", "tokens")

    def __init__(self, thread: int) -> None:
        self.thread = thread
        self.depth = 1  # re-entrant: the same thread may lock again
        self.tokens: set[str] = set()  # of its chains that lend the lock now

    def lends_to(self, offered: str) -> bool:
        return any(hmac.compare_digest(token, offered) for token in self.tokens)


class VmLock:
    __slots__ = ("_cond", "_holders", "users")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._holders: list[_Holder] = []  # the current holder last; those it borrowed from below
        self.users = 0  # threads holding or waiting for it (the registry's count)

    def acquire(self, blocking: bool, offered: str | None) -> bool:
        me = threading.get_ident()
        with self._cond:
            while self._holders:
                top = self._holders[-1]
                if top.thread == me:
                    top.depth += 1
                    return True
                if offered is not None and top.lends_to(offered):
                    break  # lent to this request by the chain whose hook sent it
                if not blocking:
                    return False
                self._cond.wait()
            self._holders.append(_Holder(me))
            return True

    def release(self) -> None:
        with self._cond:
            top = self._holders[-1] if self._holders else None
            if top is None or top.thread != threading.get_ident():
                raise RuntimeError("releasing a VM lock this thread does not hold")
            top.depth -= 1
            if top.depth == 0:
                self._holders.pop()
                self._cond.notify_all()

    @contextmanager
    def lending(self) -> Iterator[str | None]:
        """A fresh token while the caller's chain runs; None for a thread
        that does not hold the lock. At the end the token is withdrawn
        first, then the lock awaited back from a borrower that has it."""
        me = threading.get_ident()
        with self._cond:
            mine = self._holders[-1] if self._holders and self._holders[-1].thread == me else None
            if mine is None:
                token = None
            else:
                token = secrets.token_hex(16)
                mine.tokens.add(token)
        if mine is None or token is None:
            yield None
            return
        try:
            yield token
        finally:
            with self._cond:
                mine.tokens.discard(token)
                while self._holders[-1] is not mine:
                    self._cond.wait()
