"""What one MTA session does with all its children at once: start them, fan a command out to them.

Starting (M-SES-2, M-SES-3, D-14): each child gets the MTA's original offer (M-NEG-1); a
child the health keeper knows to be down is not tried. Bringing a child back is the health
keeper's job, off every session's path: here a failure only marks it down and counts its
fallback. Fanning out (M-ENV-2): a parallel-stage command goes to every target child
before any reply is read; what each answer does to its child is one row of :data:`OUTCOMES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ...log import Logger
from ...net.mta import collect_all
from ...protocol import CONTINUE, Discard, Negotiate, Reply, Skip
from ...protocol.stages import BY_LETTER, STAGE_NAMES
from ..child import Child, ChildFailure
from ..context import ManagerContext
from ..disconnect import NO_WATCH
from ..inprocess import make_child
from ..status import Combined, Status, status_of
from .negotiation import child_offer

if TYPE_CHECKING:
    from .port import SessionPort


def start_children(manager: ManagerContext, offer: Negotiate, logger: Logger,
                   count_fallback: Callable[[Child], None]) -> list[Child]:
    """Every enabled child, connected and negotiated at once; the ones that failed are quitted.

    Each child is connected and sent the offer, then every answer is read as it comes, in the
    session's own greenlet (:func:`milterman.net.mta.collect_all`). A unix socket connects or
    fails at once, so those children are opened one after another here; an ``inet:``/``inet6:``
    child may wait on a name lookup or a TCP handshake (up to its connection timeout), so those
    are opened concurrently, one greenlet each, and a child that hangs delays the others by
    nothing. ``count_fallback`` gets each child that is not there (D-14): a known-down one at
    once, one that could not be reached or negotiated once every attempt has ended.
    """
    offered = child_offer(offer)
    health = manager.health
    health.last_offer = offered
    children = [make_child(definition, logger) for definition in manager.definitions]
    failed: dict[Child, tuple[Exception, bool]] = {}
    opened: list[Child] = []
    over_network: list[Child] = []

    def open_child(child: Child) -> None:
        try:
            child.open(offered)
        except Exception as failure:
            failed[child] = _start_failure(health, child, failure)
        else:
            opened.append(child)

    for child in children:
        state = health.of(child.definition)
        if state.down:
            child.skip(f"down: {state.last_error}")
            count_fallback(child)
            continue
        if child.definition.milter_class is not None:  # in process: a computation, nothing to wait for
            try:
                child.connect(offered)
            except Exception as failure:
                failed[child] = _start_failure(health, child, failure)
            else:
                health.of(child.definition).succeeded()
        elif child.reuse(state.pool, offered):  # a connection kept from an earlier session
            continue
        elif child.definition.spec.family == "unix":
            open_child(child)
        else:
            over_network.append(child)
    if over_network:
        _open_concurrently(over_network, open_child)
        opened.sort(key=children.index)  # the answers are read, and logged, in the configuration's order
    if opened:
        answers = collect_all([child.client for child in opened], "O")
        for child, answer in zip(opened, answers, strict=True):
            try:
                child.negotiated_with(answer)
            except Exception as failure:
                failed[child] = _start_failure(health, child, failure)
                continue
            health.of(child.definition).succeeded()
    for child in children:
        if child not in failed:
            continue
        error, logged = failed[child]
        child.expire(f"negotiate: {error}", log=not logged)
        count_fallback(child)
    if manager.unreachable_reported and any(child.negotiated for child in children):
        manager.unreachable_reported = False
    return children


def _open_concurrently(children: list[Child], open_child: Callable[[Child], None]) -> None:
    """``open_child`` for each child at once (one greenlet each; one child runs here when it is alone)."""
    if len(children) == 1:
        open_child(children[0])
        return
    import gevent

    gevent.joinall([gevent.spawn(open_child, child) for child in children])


def _start_failure(health, child: Child, failure: Exception) -> tuple[Exception, bool]:
    """A child that could not be started: (the failure, whether the log already has it)."""
    if isinstance(failure, ChildFailure):
        health.of(child.definition).failed(str(failure))  # the one "down" line
        return failure, True
    return ChildFailure(f"internal error: {failure!r}"), False  # a bug must not leave the MTA unanswered


class Outcome(NamedTuple):
    """What a child's answer at a parallel stage does to that child (M-ENV-4, M-ENV-1, P-RPL-6)."""

    #: what an answer other than continue ends for the child: "session", "message", or at RCPT
    #: "recipient" (the recipient bookkeeping of M-ENV-6; only accept ends the message there)
    ends: str
    #: discard is a valid answer here; elsewhere it expires the child (P-RPL-6, from the stage table)
    discard_valid: bool


#: the one table of per-stage outcomes for the parallel stages
OUTCOMES = {letter: Outcome(ends, BY_LETTER[letter].discard_allowed) for letter, ends in (
    ("C", "session"), ("H", "session"), ("U", "session"), ("M", "message"), ("T", "message"), ("R", "recipient"))}


def fan_out(port: SessionPort, command, targets: list[Child], combined: Combined) -> None:
    """Send ``command`` to every target, then collect each reply against its own deadline (M-ENV-2);
    each answer is counted in ``combined`` and applied to its child by :data:`OUTCOMES`.

    The disconnect check (M-ERR-8) covers both halves: an in-process child answers while it is begun.
    """
    watch = port.watch
    if watch is NO_WATCH:
        answers = _send_and_collect(port, command, targets, combined)
    else:
        with watch:
            answers = _send_and_collect(port, command, targets, combined)
    letter = command.LETTER
    for child, response in answers:
        if isinstance(response, ChildFailure):
            port.expire(child, str(response), combined)
            continue
        if response.modifications or isinstance(response.final, Skip):
            odd = response.modifications[0] if response.modifications else response.final
            port.expire(child, f"{STAGE_NAMES[letter]}: unexpected {type(odd).__name__} outside end of "
                               f"message (M-ENV-4)", combined)
            continue
        _account(port, child, response.final, combined, command)


def _send_and_collect(port: SessionPort, command, targets: list[Child], combined: Combined) -> zip:
    """``command`` begun at every target that takes it, then each owed answer (or ChildFailure), waited for
    together in this greenlet: each child is held to its own deadline, and a reply already waiting is
    taken even after that deadline (M-ERR-2)."""
    letter = command.LETTER
    macros = port.stage_macros(letter)
    encoded = port.encoded_macros(letter, macros)
    packet = command.encode() if len(targets) > 1 else None  # once for every child (forward once)
    pending: list[Child] = []
    for child in targets:
        if not child.will_send(letter):
            _account(port, child, CONTINUE, combined, command)  # M-ENV-3: the child asked not to get it
            continue
        try:
            if child.begin(command, macros, encoded, packet):
                pending.append(child)
            else:
                _account(port, child, CONTINUE, combined, command)  # its own no-reply bit: don't wait (D-2)
        except ChildFailure as error:
            port.expire(child, str(error), combined)
    outcomes = collect_all([child.client for child in pending], letter)
    results = []
    for child, outcome in zip(pending, outcomes, strict=True):
        try:
            results.append(child.collected(letter, outcome))
        except ChildFailure as failure:
            results.append(failure)
    return zip(pending, results, strict=True)


def _account(port: SessionPort, child: Child, reply: Reply, combined: Combined, command) -> None:
    """One child's answer at a parallel stage: counted (an evaluation child's refusal as accept,
    M-EVAL-1) and applied to the child by the stage's row of :data:`OUTCOMES`."""
    letter = command.LETTER
    outcome = OUTCOMES[letter]
    if not outcome.discard_valid and isinstance(reply, Discard):
        port.expire(child, f"{STAGE_NAMES[letter]}: discard is not valid here (P-RPL-6)", combined)
        return
    real = status_of(reply)
    child.last_status = real.nick
    if child.definition.evaluation_mode:
        combined.add(Status.ACCEPT if real.is_refusal else real)
    else:
        combined.add(real, reply)
    ends = outcome.ends
    if ends == "recipient":
        if real != Status.TEMPORARY_FAILURE and real != Status.REJECT:
            child.recipients.append(command.address)
        if real == Status.CONTINUE or real == Status.ACCEPT or real == Status.DISCARD:
            child.recipients_accepted += 1
        if real == Status.ACCEPT:
            child.in_message = False  # accept at RCPT: the child leaves the message (M-ENV-4)
    elif real != Status.CONTINUE:
        if ends == "message":
            child.in_message = False  # accept or refusal at MAIL or DATA: the child leaves the message
            return
        if letter == "U" and real == Status.ACCEPT:
            port.logger.error(f"[{child.id}] [manager][child][unknown] [{child.name}] accept is not "
                              f"valid for an unknown command")
        child.end_status = real.nick
        child.quit()
        port.milter_end(child)
