"""The HL7 v2 inbox: every message stored, dispatched, and acknowledged after commit.

HL7 v2.5.1 chapter 2 (original acknowledgment mode, section 2.9.2): the receiver answers
each message with an ACK whose MSA-1 is AA (accepted), AE (error) or AR (rejected). Here AA is
sent only after the message row and its effects are committed in one transaction; AE/AR
carry the reason in MSA-3 and ERR, and the refused message is stored too. A message with the
MSH-10 control ID of an accepted one from the same sender (MSH-3, MSH-4) gets the stored
ACK again and has no second effect.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import Hl7Message
from router.domain.enums import AckCode, ReportSource
from router.domain.orders import report_status_from_hl7
from router.errors import first_line
from router.hl7.messages import (
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    UNKNOWN_KEY_IDENTIFIER,
    UNSUPPORTED_MESSAGE_TYPE,
    Hl7ParseError,
    MessageHeader,
    build_ack,
    header,
    parse,
    parse_order,
    parse_report,
)
from router.services.claims import Diagnosis
from router.services.orders import OrderService
from router.services.reports import ReportRefused, ReportService, SignedReport
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)

#: Message types the inbox takes (MSH-9.1 ^ MSH-9.2).
ORDER_TYPES = frozenset({"ORM^O01", "OMI^O23"})
REPORT_TYPES = frozenset({"ORU^R01"})


class _Refused(Exception):
    def __init__(self, code: AckCode, reason: str, error: tuple[str, str] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.error = error  # ERR-3 (HL7 table 0357)


class Hl7Inbox:
    """Handles the payload of one MLLP frame and returns the ACK payload."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        orders: OrderService,
        reports: ReportService,
        clock: Clock = utcnow,
        application: str = "ROUTER",
    ) -> None:
        self._sessions = sessions
        self._orders = orders
        self._reports = reports
        self._clock = clock
        self._application = application

    def handle(self, payload: bytes, peer: str) -> bytes:
        """Process one message; returns the ACK (bytes, no MLLP framing). Never raises."""
        now = self._clock()
        try:
            message = parse(payload)
            head = header(message)
        except Hl7ParseError as exc:
            LOG.warning("HL7 from %s rejected: %s", peer, exc)
            ack = build_ack(None, AckCode.AR, "", now, str(exc), self._application, SEGMENT_SEQUENCE_ERROR)
            self._record_refusal(payload, peer, None, AckCode.AR, str(exc), ack)
            return ack
        key = f"{head.sending_application}|{head.sending_facility}|{head.control_id}"
        try:
            with self._sessions.begin() as session:
                stored = session.scalar(select(Hl7Message.ack).where(Hl7Message.accepted_key == key))
                if stored is not None:
                    LOG.info(
                        "HL7 %s control ID %s from %s is a duplicate: ACK repeated",
                        head.message_type,
                        head.control_id,
                        peer,
                    )
                    return stored
                row = Hl7Message(
                    **_header_columns(head),
                    peer_address=peer[:64],
                    received_at=now,
                    size_bytes=len(payload),
                    raw=payload,
                    ack_code=AckCode.AA,
                    accepted_key=key,
                )
                session.add(row)
                session.flush()
                outcome = self._dispatch(session, message, head, row.id)
                ack = build_ack(head, AckCode.AA, head.control_id, now, "", self._application)
                row.outcome = outcome[:2000]
                row.ack = ack
            LOG.info("HL7 %s control ID %s accepted: %s", head.message_type, head.control_id, outcome)
            return ack
        except _Refused as exc:
            LOG.warning(
                "HL7 %s control ID %s answered %s: %s", head.message_type, head.control_id, exc.code, exc.reason
            )
            ack = build_ack(head, exc.code, head.control_id, now, exc.reason, self._application, exc.error)
            self._record_refusal(payload, peer, head, exc.code, exc.reason, ack)
            return ack
        except IntegrityError:
            # The same message committed by another connection at the same moment.
            with self._sessions() as session:
                stored = session.scalar(select(Hl7Message.ack).where(Hl7Message.accepted_key == key))
            if stored is not None:
                return stored
            reason = "database conflict, send again"
        except DBAPIError as exc:
            LOG.warning("HL7 control ID %s not stored: database error %s", head.control_id, first_line(exc))
            reason = "database unavailable, send again"
        except Exception as exc:  # one bad message never stops the listener; the sender is told
            LOG.exception("HL7 control ID %s failed: %s", head.control_id, type(exc).__name__)
            reason = f"internal error ({type(exc).__name__}): not applied"
            ack = build_ack(head, AckCode.AE, head.control_id, now, reason, self._application)
            self._record_refusal(payload, peer, head, AckCode.AE, reason, ack)
            return ack
        return build_ack(head, AckCode.AE, head.control_id, now, reason, self._application)

    def refuse_frame(self, received: bytes, peer: str, reason: str) -> bytes:
        """Answer (and store) a frame the listener could not read: too big, unframed, cut short."""
        ack = build_ack(None, AckCode.AR, "", self._clock(), reason, self._application, SEGMENT_SEQUENCE_ERROR)
        self._record_refusal(received, peer, None, AckCode.AR, reason, ack)
        return ack

    def _dispatch(self, session: Session, message: object, head: MessageHeader, message_id: int) -> str:
        now = self._clock()
        try:
            if head.message_type in ORDER_TYPES:
                return self._orders.apply(session, parse_order(message, head), message_id, now)
            if head.message_type in REPORT_TYPES:
                parsed = parse_report(message, head)
                status = report_status_from_hl7(parsed.result_status)
                if status is None:
                    raise _Refused(
                        AckCode.AE,
                        f"OBR-25 result status {parsed.result_status!r} is not P, F or C",
                        TABLE_VALUE_NOT_FOUND,
                    )
                report = SignedReport(
                    source=ReportSource.HL7,
                    status=status,
                    accession_number=parsed.accession_number,
                    study_instance_uid=None,
                    signer_id=parsed.interpreter_id,
                    signer_family=parsed.interpreter_family,
                    signer_given=parsed.interpreter_given,
                    signed_at=parsed.signed_at,
                    diagnoses=tuple(Diagnosis(item.code, item.system) for item in parsed.diagnoses),
                )
                return self._reports.apply(session, report, now, message_id)
        except Hl7ParseError as exc:
            raise _Refused(AckCode.AE, str(exc), REQUIRED_FIELD_MISSING) from exc
        except ReportRefused as exc:
            raise _Refused(AckCode.AE, str(exc), UNKNOWN_KEY_IDENTIFIER if exc.unknown_key else None) from exc
        raise _Refused(AckCode.AR, f"unsupported message type {head.message_type}", UNSUPPORTED_MESSAGE_TYPE)

    def _record_refusal(
        self, payload: bytes, peer: str, head: MessageHeader | None, code: AckCode, reason: str, ack: bytes
    ) -> None:
        try:
            with self._sessions.begin() as session:
                session.add(
                    Hl7Message(
                        **(_header_columns(head) if head else {}),
                        peer_address=peer[:64],
                        received_at=self._clock(),
                        size_bytes=len(payload),
                        raw=payload,
                        ack_code=code,
                        outcome=reason[:2000],
                        ack=ack,
                    )
                )
        except DBAPIError as exc:
            LOG.warning("refused HL7 message from %s not recorded: %s", peer, first_line(exc))


def _header_columns(head: MessageHeader) -> dict[str, object]:
    return {
        "control_id": head.control_id,
        "message_type": head.message_type[:16],
        "sending_application": head.sending_application[:180],
        "sending_facility": head.sending_facility[:180],
        "version": head.version[:16],
    }
