"""Feedback-loop complaints (ARF, RFC 5965) forwarded to ``POST /webhooks/email/feedback``.

The brand's abuse mailbox receives the mailbox providers' reports; whatever forwards them (a mail rule piping the
message to curl, an inbound-mail service) posts each report here as it arrived: the raw email with
``Content-Type: message/rfc822``, or a form with the raw email in the field ``email`` (SendGrid Inbound Parse with
"POST the raw, full MIME message") or ``body-mime`` (Mailgun's routes to a URL ending in ``mime``).

No key: the report proves itself by the original message's signed unsubscribe link (chorus.messaging.feedback).
The complaint is applied once; a report sent again answers ``"complained": false``.
"""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException  # what request.form() raises (FastAPI's is a subclass of it)
from starlette.formparsers import MultiPartException

from chorus.api.common import JSON, Services, form_problem, read_limited
from chorus.errors import ChorusError, NotFound
from chorus.messaging import consent, feedback
from chorus.store.tables import messages
from chorus.timeutil import utcnow

router = APIRouter(prefix="/webhooks", include_in_schema=False)
MAX_BODY = 10 * 1024 * 1024  # a report may quote the whole original message
FORM_FIELDS = ("email", "body-mime")  # SendGrid Inbound Parse (raw), Mailgun (…/mime)


@router.post("/email/feedback")
async def email_feedback(request: Request):
    svc: Services = request.app.state.services
    body = await read_limited(request, MAX_BODY, "the report")
    kind = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        body = await _from_form(request, body)
    elif kind not in ("message/rfc822", "text/plain", "application/octet-stream", ""):
        raise ChorusError("Content-Type must be message/rfc822 (the raw report), or a form with the raw report in "
                          f"{' or '.join(FORM_FIELDS)}", field="Content-Type")  # fmt: skip
    report = feedback.parse(body)
    mid = feedback.message_id(report, svc.links)
    complained = await run_in_threadpool(_apply, svc, mid, report) if report.complaint else False
    if complained:
        svc.wake_worker.set()  # the consent change and the timeline event, for segments and journeys
    return JSON({"message_id": mid, "feedback_type": report.feedback_type, "complained": complained})


async def _from_form(request: Request, body: bytes) -> bytes:
    request._body = body  # read_limited consumed the stream (bounded): the form parser reads the body from here
    try:
        form = await request.form(max_files=4, max_fields=200, max_part_size=MAX_BODY)
    except (HTTPException, MultiPartException) as exc:
        raise ChorusError(f"the body is not a valid form ({form_problem(exc)})", field="body") from None
    for name in FORM_FIELDS:
        value = form.get(name)
        if isinstance(value, str) and value:
            return value.encode("utf-8", "surrogateescape")
        if value is not None and hasattr(value, "read"):
            return await value.read()
    raise ChorusError(f"the form has no raw report ({' or '.join(FORM_FIELDS)})", field=FORM_FIELDS[0])


def _apply(svc: Services, mid: str, report: feedback.Report) -> bool:
    # dated by the report's own Date (when the loop wrote it, just after she complained), never later than its
    # receipt; not by Arrival-Date, which is when the original message arrived, perhaps days before the complaint
    now = utcnow()
    at = min(report.reported, now) if report.reported is not None else now
    with svc.engine.begin() as conn:
        row = conn.execute(sa.select(messages.c.workspace_id, messages.c.profile_id)
                           .where(messages.c.id == mid)).first()  # fmt: skip
        if row is None:
            raise NotFound("this message no longer exists")
        consent.lock_owners(conn, row.workspace_id, [row.profile_id])  # before the message row (see lock_owners)
        q = sa.select(messages).where(messages.c.id == mid)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        found = conn.execute(q).first()
        if found is None:  # erased meanwhile
            raise NotFound("this message no longer exists")
        if found.kind != "marketing":  # its unsubscribe link was printed in the body: the report proves nothing
            raise ChorusError("the report is about a transactional message: complaints are taken about marketing "
                              "messages only", field="List-Unsubscribe")  # fmt: skip
        return feedback.record(conn, dict(found._mapping), report, max(at, found.sent_at or found.created_at))
