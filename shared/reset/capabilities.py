"""Least power: which capability each part of a request needs, and what its submitter was granted.

One rule for every way in. Intake refuses a request its caller may not make (403 naming the
capability); the worker checks again with the grant intake recorded for that exact message, or
with ``QUEUE_CAPABILITIES`` for anything else on the queue (a queue has no caller identity), and
fails the request with ``CapabilityMissing``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from shared.platform.errors import PolicyRefusedError
from shared.platform.settings import QUEUE_GRANTABLE, Capability, Settings
from shared.reset.contract import ResetRequest
from shared.reset.status import StatusRecord, stored_form

# Owner keys of requests that no Entra ID principal submitted (see shared.api.principal).
KEY_CALLER = "key"  # every function key holder: the host does not tell the app which key was used
QUEUE_PRODUCER = "queue"  # anything that writes to the request queue (ticketing systems, bulk files)


@dataclass(frozen=True)
class Need:
    """A capability a request needs, and the field that needs it."""

    capability: Capability
    field: str


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def needs(request: ResetRequest, settings: Settings) -> list[Need]:
    """Every capability the request needs; a plain reset needs Reset.Submit alone."""
    found = [Need(Capability.SUBMIT, "(request)")]
    if request.new_email:
        found.append(Need(Capability.SWITCH_EMAIL, "newEmail"))
    if request.move_to_domain:
        # The guest's sign-in moves to another address just as with newEmail.
        found.append(Need(Capability.SWITCH_EMAIL, "moveToDomain"))
    if request.invite_redirect_url and not _same_url(request.invite_redirect_url, settings.default_redirect):
        found.append(Need(Capability.MESSAGE_OPTIONS, "inviteRedirectUrl"))
    if request.cc_recipients:
        found.append(Need(Capability.MESSAGE_OPTIONS, "ccRecipients"))
    if request.customized_message_body:
        found.append(Need(Capability.MESSAGE_OPTIONS, "customizedMessageBody"))
    return found


def missing(request: ResetRequest, granted: Iterable[Capability], settings: Settings) -> list[Need]:
    have = set(granted)
    return [need for need in needs(request, settings) if need.capability not in have]


def describe(need: Need, channel: str) -> str:
    subject = "a reset" if need.field == "(request)" else need.field
    return f"{subject} needs the capability {need.capability.value}, which {channel} was not granted"


def require(request: ResetRequest, granted: Iterable[Capability], settings: Settings, *, channel: str) -> None:
    """Raise PolicyRefusedError (CapabilityMissing) naming every capability the request lacks."""
    lacking = missing(request, granted, settings)
    if lacking:
        raise PolicyRefusedError(
            "; ".join(describe(n, channel) for n in lacking) + " (docs/security.md says how to grant it)",
            code="CapabilityMissing",
        )


def encode(granted: Iterable[Capability]) -> str:
    """A grant as the status record keeps it; only what the worker acts on."""
    return ",".join(sorted(c.value for c in granted if c in QUEUE_GRANTABLE))


def decode(text: str | None) -> frozenset[Capability]:
    known = {c.value: c for c in Capability}
    return frozenset(known[v] for v in (text or "").split(",") if v in known)


def message_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def grant_for(record: StatusRecord, body: bytes, settings: Settings) -> tuple[frozenset[Capability], str]:
    """The grant a delivery runs with, and who it came from (for the refusal message).

    Intake's grant holds only for the very message intake enqueued (or its replay, which is the
    stored form of it); any other message under that requestId is judged as a queue message.
    """
    if record.granted is not None:
        try:
            same = record.request_json is not None and stored_form(body.decode("utf-8-sig")) == record.request_json
        except UnicodeDecodeError:
            same = False
        if same or (record.message_hash is not None and record.message_hash == message_hash(body)):
            return decode(record.granted), "its submitter"
    return settings.queue_capabilities, "the request queue (QUEUE_CAPABILITIES)"
