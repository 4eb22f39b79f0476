"""Event-driven waits for pynetdicom's polling reactors (a measured latency fix).

pynetdicom 3 runs two polling loops per association: the DUL reactor sleeps
``_run_loop_delay`` (1 ms) whenever it found nothing to do, and the association reactor sleeps
1 ms before every look at its DIMSE message queue. Each C-STORE crosses both loops twice
(request in, response out), so with one association a sender waits up to ~4 ms per instance
doing nothing, which caps a pynetdicom receiver near 110-220 instances/s on small instances
(see docs/benchmarks.md).

:func:`install` replaces those sleeps, for pynetdicom's own threads only, with waits that end as
soon as there is work:

- the association thread waits on its DIMSE message queue's condition, woken by ``put``, by the
  DUL handing it a primitive (an A-RELEASE or A-ABORT from the peer) and by a local ``send_*``,
  ``release`` or ``abort`` asking it to pause: before, those waited until the wait ran out (a
  peer's A-RELEASE-RP up to 5 ms late per association, each C-STORE the router forwards up to
  5 ms; docs/benchmarks.md, lever 24);
- the DUL thread waits in ``select`` on its socket and on a wake-up pipe written when a
  primitive is queued for sending (``send_pdu``).

An association thread that wakes at once can queue a primitive just after the DUL began
aborting (a peer's second A-RELEASE-RQ); the state machine drops it (:func:`_drops_late_primitive`).

Because these waits end on work, their upper bound can be longer than the 1 ms poll
(:data:`DUL_WAIT`, :data:`ASSOCIATION_WAIT`): an idle or busy association wakes its threads far
less often, so they stop competing with the C-STORE handler for the interpreter lock. Timers
(ARTIM, network idle timeout, release/abort checks) are looked at with at most that much delay.
Every other caller of ``time.sleep`` in those modules sleeps as usual. If pynetdicom's internals
differ from what this expects, the waits fall back to plain sleeps.

The DUL also sets ``TCP_QUICKACK`` whenever data is waiting, so a sender with Nagle's algorithm
on is not left waiting for our delayed ACK (about 40 ms per instance on Linux) before it sends
the last part of a data set.
"""

from __future__ import annotations

import logging
import os
import queue as _queue
import select
import socket
import threading
import time as _time
import types
import weakref
from typing import Any

from pynetdicom import association as _association_module
from pynetdicom import dul as _dul_module
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import TRANSITION_TABLE, StateMachine

#: Longest wait of the DUL thread for socket data or a primitive to send, in seconds.
DUL_WAIT = 0.02
#: Longest wait of the association thread for a DIMSE message, in seconds. A receiving
#: association's C-STOREs are served in its DUL thread (router.dicom.store_codec), so this thread
#: wakes only for timers and for what ends its wait early; at 5 ms its wake-ups, 200 a second per
#: association, took the interpreter lock from the DUL threads storing data sets (4 associations:
#: 30-40 % fewer instances a second; docs/benchmarks.md, lever 31).
ASSOCIATION_WAIT = 0.05
#: Pause between the association thread's looks at its DUL while it stops (``Association.kill``
#: polls every 10 ms): the thread, which counts against the listener's connection limits until
#: it ends, lingered up to 10 ms after every association (docs/benchmarks.md, lever 24).
KILL_POLL = 0.0005
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
#: Events of primitives from the local service user (PS3.8 section 9.2.1, Table 9-9): they reach
#: the state machine through the DUL's ``to_provider_queue``.
LOCAL_PRIMITIVE_EVENTS = frozenset({"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})
#: Sta13: awaiting transport connection close, after an A-ABORT (PS3.8 Table 9-10).
ABORTING = "Sta13"
#: Sta1: idle, no transport connection (PS3.8 Table 9-10).
IDLE = "Sta1"
LOG = logging.getLogger(__name__)
_INSTALLED = False
_LOCK = threading.Lock()


def _wake_pipe(dul: Any) -> tuple[int, int] | None:
    pipe = getattr(dul, "_router_wake", None)
    if pipe is None:
        try:
            read_fd, write_fd = os.pipe()
        except OSError:
            return None
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        pipe = (read_fd, write_fd)
        dul._router_wake = pipe
        weakref.finalize(dul, _close_pipe, pipe)
    return pipe


def _close_pipe(pipe: tuple[int, int]) -> None:
    for fd in pipe:
        try:
            os.close(fd)
        except OSError:
            pass


def _wake(dul: Any) -> None:
    pipe = getattr(dul, "_router_wake", None)
    if pipe is not None:
        try:
            os.write(pipe[1], b"\0")
        except (BlockingIOError, OSError):
            pass  # already signalled (pipe full) or closed


def quick_ack(sock: socket.socket) -> None:
    """Set ``TCP_QUICKACK`` on ``sock`` (where the platform has it): data is waiting, and a
    sender with Nagle's algorithm on must not wait for our delayed ACK. Errors are ignored."""
    if _QUICKACK is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:
            pass


def _dul_wait(dul: DULServiceProvider, seconds: float) -> None:
    queue = dul.to_provider_queue
    if queue.qsize():
        return
    wrapper = dul.socket
    sock = getattr(wrapper, "socket", None) if wrapper is not None else None
    pipe = _wake_pipe(dul)
    if sock is None or pipe is None:
        _time.sleep(seconds)
        return
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return  # TLS: decrypted bytes already buffered
    try:
        readable, _, _ = select.select([sock, pipe[0]], [], [], max(seconds, DUL_WAIT))
    except (OSError, ValueError):
        _time.sleep(seconds)
        return
    if sock in readable:
        if hasattr(wrapper, "readable_seen"):  # router.dicom.guard's socket
            wrapper.readable_seen = True  # type: ignore[union-attr]  # its ready check needs no select of its own
        quick_ack(sock)
    if pipe[0] in readable:
        try:
            while os.read(pipe[0], 4096):
                pass
        except (BlockingIOError, OSError):
            pass


def _message_queue(assoc: Any) -> Any:
    """``assoc``'s DIMSE message queue, or ``None`` before it has one."""
    return getattr(getattr(assoc, "dimse", None), "msg_queue", None)


def _message_condition(assoc: Any) -> threading.Condition | None:
    """The condition of ``assoc``'s DIMSE message queue (``Queue.not_empty``), if it has one."""
    return getattr(_message_queue(assoc), "not_empty", None)


def _poke(assoc: Any) -> None:
    """End the association thread's wait in :func:`_association_wait` (or its next one).

    ``_router_pokes`` is counted under the message queue's condition, so a waiter that looked
    before the poke is notified and one that looks after sees the count move: no wake-up is
    lost, and each poke ends at most one wait early (no busy loop).
    """
    condition = _message_condition(assoc)
    if condition is None:
        return  # not set up yet: its reactor has not started waiting
    with condition:
        assoc._router_pokes = getattr(assoc, "_router_pokes", 0) + 1
        condition.notify_all()


class _UserQueue(_queue.Queue):
    """The DUL's queue of primitives for its association (``to_user_queue``: A-ASSOCIATE,
    A-RELEASE, A-ABORT, A-P-ABORT from the peer) that wakes the association thread on every
    arrival, and that can be ended (:meth:`end`) once nothing more can arrive."""

    def __init__(self, dul: DULServiceProvider) -> None:
        super().__init__()
        self._dul = weakref.ref(dul)
        self.ended = False

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        dul = self._dul()
        if dul is not None:
            _poke(getattr(dul, "_assoc", None))

    def end(self) -> None:
        """Nothing more will be put: a wait for an item (:meth:`get`) ends at once."""
        with self.not_empty:
            self.ended = True
            self.not_empty.notify_all()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """``Queue.get``, except that a blocking get of an empty, ended queue raises
        ``queue.Empty`` at once instead of waiting out ``timeout``."""
        with self.not_empty:
            if block:
                deadline = None if timeout is None else _time.monotonic() + timeout
                while not self._qsize() and not self.ended:
                    remaining = None if deadline is None else deadline - _time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self.not_empty.wait(remaining)
            if not self._qsize():
                raise _queue.Empty
            item = self._get()
            self.not_full.notify()
            return item


class _ReactorCheckpoint(threading.Event):
    """An association's ``_reactor_checkpoint`` whose ``clear`` wakes the association thread.

    pynetdicom's ``send_*``, ``release`` and ``abort`` clear it, then spin until the reactor
    pauses at its top; the reactor got there only when its wait ran out (up to
    :data:`ASSOCIATION_WAIT` per call, i.e. per C-STORE the router forwards). Its ``set`` also
    closes a race of pynetdicom's (see :meth:`set`)."""

    def __init__(self, assoc: Association) -> None:
        super().__init__()
        self._assoc = weakref.ref(assoc)

    def clear(self) -> None:
        super().clear()
        _poke(self._assoc())

    def set(self) -> None:
        """Unpause; from another thread, also mark the reactor as not paused.

        pynetdicom's reactor sets ``_is_paused`` again only once it runs, and the next
        ``send_*`` goes on as soon as ``_is_paused`` is true: a reactor thread not yet scheduled
        since it was unpaused still looked paused, then woke and could take that request's
        response off the queue as if it were a request ("Received unexpected C-STORE service
        message", the sender waiting out its DIMSE timeout). From the association's own thread
        (a service class sending on its own association while serving) it is left as it is.
        """
        assoc = self._assoc()
        if assoc is not None and threading.current_thread() is not assoc:
            assoc._is_paused = False
        super().set()


def _association_wait(assoc: Association, seconds: float) -> None:
    queue = _message_queue(assoc)
    condition = getattr(queue, "not_empty", None)
    if condition is None:
        _time.sleep(seconds)
        return
    with condition:
        pokes = getattr(assoc, "_router_pokes", 0)
        if pokes != getattr(assoc, "_router_seen_pokes", 0):
            assoc._router_seen_pokes = pokes  # type: ignore[attr-defined]
            return  # a primitive from the peer, or a pause asked for, since the last look
        if not queue._qsize():
            condition.wait(max(seconds, ASSOCIATION_WAIT))
            assoc._router_seen_pokes = getattr(assoc, "_router_pokes", 0)  # type: ignore[attr-defined]
        if queue._qsize():
            # Queue.put wakes one waiter. This thread may not be the one that takes the item
            # (an SCU's send_* pauses the reactor and waits in get() itself), so pass the
            # wake-up on; a waiter that finds nothing simply waits again.
            condition.notify()


def _drops_late_primitive(machine: StateMachine, event: str) -> bool:
    """Drop a local primitive that reaches the state machine after the association began
    aborting (Sta13), instead of pynetdicom raising ``InvalidEventError`` in the DUL thread.

    PS3.8 Table 9-10 defines no local primitive in Sta13: once an A-ABORT is sent or received,
    nothing more is sent. The association thread can still queue one in that window, e.g. the
    A-RELEASE-RP to a peer that sent a second A-RELEASE-RQ (or a P-DATA) right after the
    first: the DUL answered that with an A-ABORT (AA-8), and the release response then had no
    transition (an ERROR and a traceback per association, which any sender could cause).
    """
    if machine.current_state != ABORTING or event not in LOCAL_PRIMITIVE_EVENTS:
        return False
    if (event, ABORTING) in TRANSITION_TABLE:
        return False
    dul = machine.dul
    try:
        primitive = dul.to_provider_queue.get(False)  # the one _process_recv_primitive looked at
    except _queue.Empty:
        primitive = None
    LOG.debug("%s dropped: the association is already aborting", type(primitive).__name__)
    return True


def _end_user_queue(dul: Any) -> None:
    """The transport connection is closed (Sta1): nothing more can reach the association, so a
    wait for its next primitive ends now.

    The one wait this shortens in practice is an acceptor's for the A-ASSOCIATE-RQ: pynetdicom
    waits ``acse_timeout`` (30 s by default) for it, and a connection that closed after a byte,
    a partial request, or garbage the listener answered with an A-ABORT went on holding a place
    among ``max_associations`` and ``max_connections`` meanwhile: 16 such connections kept
    every sender out for 30 s (PS3.8 section 9.2, Table 9-10: Sta2 + Evt17, AA-5, has no
    indication for the user)."""
    queue = getattr(dul, "to_user_queue", None)
    if isinstance(queue, _UserQueue):
        queue.end()


def _sleep(seconds: float) -> None:
    thread = threading.current_thread()
    if isinstance(thread, DULServiceProvider):
        _dul_wait(thread, seconds)
    elif isinstance(thread, Association) and seconds <= 0.001:
        _association_wait(thread, seconds)
    elif isinstance(thread, Association) and getattr(thread, "_kill", False):
        _time.sleep(min(seconds, KILL_POLL))
    else:
        _time.sleep(seconds)


def install() -> bool:
    """Switch pynetdicom's reactors to event-driven waits (idempotent). Returns True if installed."""
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return True
        if not (
            hasattr(DULServiceProvider, "send_pdu")
            and hasattr(_association_module, "time")
            and hasattr(_dul_module, "time")
        ):
            return False
        shim = types.SimpleNamespace(**{name: getattr(_time, name) for name in dir(_time) if not name.startswith("__")})
        shim.sleep = _sleep
        original_send_pdu = DULServiceProvider.send_pdu
        original_dul_init = DULServiceProvider.__init__
        original_association_init = Association.__init__
        original_do_action = StateMachine.do_action

        def send_pdu(self: DULServiceProvider, primitive: Any) -> None:
            original_send_pdu(self, primitive)
            _wake(self)

        def dul_init(self: DULServiceProvider, assoc: Any) -> None:
            original_dul_init(self, assoc)
            if type(self.to_user_queue) is _queue.Queue:
                self.to_user_queue = _UserQueue(self)

        def association_init(self: Association, *args: Any, **kwargs: Any) -> None:
            original_association_init(self, *args, **kwargs)
            checkpoint = getattr(self, "_reactor_checkpoint", None)
            if type(checkpoint) is threading.Event:
                replacement = _ReactorCheckpoint(self)
                if checkpoint.is_set():
                    replacement.set()
                self._reactor_checkpoint = replacement

        def do_action(self: StateMachine, event: str) -> None:
            if _drops_late_primitive(self, event):
                return
            try:
                original_do_action(self, event)
            except Exception:
                # pynetdicom lets an action's exception end the DUL thread (the peer gets no
                # answer); the association's wait for a primitive then ends now instead of after
                # acse_timeout, so the connection gives its place back at once.
                _end_user_queue(self.dul)
                raise
            finally:
                if self.current_state == IDLE:
                    _end_user_queue(self.dul)

        send_pdu.__doc__ = original_send_pdu.__doc__
        do_action.__doc__ = original_do_action.__doc__
        dul_init.__doc__ = original_dul_init.__doc__
        association_init.__doc__ = original_association_init.__doc__
        DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]
        DULServiceProvider.__init__ = dul_init  # type: ignore[method-assign]
        Association.__init__ = association_init  # type: ignore[method-assign]
        StateMachine.do_action = do_action  # type: ignore[method-assign]
        _association_module.time = shim  # type: ignore[assignment]
        _dul_module.time = shim  # type: ignore[assignment]
        _INSTALLED = True
        return True


def installed() -> bool:
    """Whether :func:`install` has taken effect in this process."""
    return _INSTALLED
