"""What ``asrd check`` says about the production wiring beyond "the config is valid": where CI
will notify, whether that is what the intake reads, and how long an intake outage may last
before the queue loses callbacks to the reconciler.

A definite mismatch between the callback target and the intake is already a configuration error
(``config.callback_mismatch``); these are the notes and warnings a user should read once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings

__all__ = ["Note", "notes"]


@dataclass(frozen=True)
class Note:
    text: str
    warning: bool = False


def notes(settings: Settings) -> list[Note]:
    """One line each, in the order a user would fix them."""
    out = _callback_notes(settings)
    out.extend(_outage_notes(settings))
    return out


def _callback_notes(settings: Settings) -> list[Note]:
    cb, cmq = settings.ci.callback, settings.intake.cmq
    if cb.type == "url":
        return [Note(f"callback target: CI posts to {_masked(cb.url)}")]
    target = f"CMQ {cb.mq_mode.lower()} {cb.mq_name!r} in region {cb.mq_region!r}"
    if cmq is None:
        return [Note(f"callback target: {target}; no [intake.cmq] here (an intake elsewhere)")]
    out = [Note(f"callback target: {target}; intake reads queue {cmq.queue!r}")]
    if not cmq.queue_region:
        out.append(
            Note(
                f"intake.cmq.endpoint = {cmq.endpoint!r} names no region: set intake.cmq.region "
                f"so it is compared with ci.callback.mq_region = {cb.mq_region!r}",
                warning=True,
            )
        )
    if cb.mq_mode == "Topic":
        out.append(
            Note(
                f"ci.callback.mq_mode = 'Topic': CMQ topic {cb.mq_name!r} must have a queue "
                f"subscription (NotifyContentFormat SIMPLIFIED, no filter tags) that delivers to "
                f"intake.cmq.queue = {cmq.queue!r}; asrd cannot see subscriptions, so check it "
                "in the TDMQ console"
            )
        )
    return out


def _outage_notes(settings: Settings) -> list[Note]:
    cmq, rc = settings.intake.cmq, settings.reconcile
    if cmq is None:
        return []
    # A message left undeleted for the queue's max unacknowledged time is acknowledged by TDMQ
    # and gone; the reconciler then delivers the job only while it is inside lookback_s.
    survives = cmq.max_unacked_s
    out = [
        Note(
            f"an intake outage up to {_duration(survives)} loses nothing "
            "(intake.cmq.max_unacked_s); longer ones leave the jobs to the reconciler"
        )
    ]
    needed = survives + rc.interval_s
    if rc.interval_s <= 0:
        out.append(
            Note(
                "reconcile.interval_s = 0: callbacks the queue drops after an outage longer than "
                f"{_duration(survives)} are delivered only by a manual `asrd reconcile`",
                warning=True,
            )
        )
    elif rc.lookback_s < needed:
        out.append(
            Note(
                f"reconcile.lookback_s = {rc.lookback_s:g} is shorter than "
                f"intake.cmq.max_unacked_s + reconcile.interval_s = {needed:g}: a callback the "
                "queue drops after an intake outage may be past the reconciler's window",
                warning=True,
            )
        )
    return out


def _masked(url: str) -> str:
    head, sep, _token = url.rpartition("/v1/callbacks/")
    return f"{head}{sep}<token>" if sep else url


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
