"""Orders from the RIS (ORM^O01, OMI^O23): stored by accession number and matched to studies.

An order and its study meet by accession number whichever arrives first: an order matches a
study already received, and the routing timer matches orders to studies received later
(:meth:`OrderService.match_pending`). A matched order sets the study's priority and its CPT
codes, which outrank the DICOM header and the CPT map when the read is billed. A cancel
(ORC-1 CA/OC, HL7 v2.5.1 table 0119) withdraws the order: a study not yet read is flagged
for an admin and cannot be billed (:meth:`router.services.reads.ReadService.complete_in`
refuses it), and professional records already written are reversed (the ledger is
append-only: a reversal, never an edit; DESIGN.md decision 5).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import Order, Study
from router.db.queries import for_update
from router.domain.enums import CorrectionReason, CptSource, OrderStatus, StudyStatus
from router.domain.npi import is_valid_npi
from router.domain.orders import CANCEL_CONTROLS, priority_from_hl7
from router.errors import NotFoundError
from router.hl7.messages import CPT_SYSTEMS, CodedValue, OrderMessage
from router.services.ledgers import open_charges, reverse_charge
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)


def _coded_json(values: tuple[CodedValue, ...]) -> list[dict[str, Any]]:
    """``[{code, text, system}]``, with ``modifiers`` (OBR-45, in order) on a procedure that has them."""
    return [
        {"code": item.code, "text": item.text, "system": item.system}
        | ({"modifiers": list(item.modifiers)} if item.modifiers else {})
        for item in values
    ]


class OrderService:
    """Stores orders, matches them to studies, lists them."""

    def __init__(self, sessions: sessionmaker[Session], clock: Clock = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock

    def apply(self, session: Session, message: OrderMessage, hl7_message_id: int, now: dt.datetime) -> str:
        """Create, update or cancel the order of ``message`` in the caller's transaction.

        Returns
        -------
        str
            What it did, for the message log (accession number and control code, no PHI).
        """
        order = session.scalars(
            for_update(select(Order).where(Order.accession_number == message.accession_number), session)
        ).one_or_none()
        cancel = message.order_control in CANCEL_CONTROLS
        if order is None:
            order = Order(accession_number=message.accession_number, received_at=now, procedures=[], diagnoses=[])
            session.add(order)
        order.order_control = message.order_control or "NW"
        order.hl7_message_id = hl7_message_id
        order.updated_at = now
        if cancel:
            order.status = OrderStatus.CANCELLED
            order.cancelled_at = now
        else:
            priority = priority_from_hl7(message.priority_code)
            referring = message.referring_id.strip()
            order.status = OrderStatus.ACTIVE
            order.cancelled_at = None
            order.placer_order_number = message.placer_order_number or None
            order.procedures = _coded_json(message.procedures)
            order.diagnoses = _coded_json(message.diagnoses)
            order.priority = priority
            order.priority_code = message.priority_code[:8] or None
            order.referring_id = referring[:64] or None
            order.referring_npi = referring if is_valid_npi(referring) else None
            order.referring_name = message.referring_name or None
            order.ordering_facility = message.ordering_facility or None
            order.patient_class = message.patient_class or None
            order.patient_location = message.patient_location or None
        session.flush()
        study = session.scalars(
            for_update(
                select(Study).where(Study.accession_number == order.accession_number).order_by(Study.id), session
            )
        ).first()
        effect = self._apply_to_study(session, order, study, now) if study is not None else "no study yet"
        what = "cancelled" if cancel else "stored"
        LOG.info("order %s (ORC-1 %s) %s: %s", order.accession_number, order.order_control, what, effect)
        return f"order {order.accession_number} {what}: {effect}"

    def match_pending(self) -> int:
        """Match orders without a study to studies received since (the routing timer calls it).

        Returns the number of orders matched.
        """
        now = self._clock()
        matched = 0
        with self._sessions.begin() as session:
            rows = session.execute(
                select(Order, Study)
                .join(Study, Study.accession_number == Order.accession_number)
                .where(Order.study_id.is_(None))
                .order_by(Order.id)
            ).all()
            seen: set[int] = set()
            for order, study in rows:
                if order.id in seen:
                    continue
                seen.add(order.id)
                effect = self._apply_to_study(session, order, study, now)
                LOG.info("order %s matched to study %s: %s", order.accession_number, study.study_instance_uid, effect)
                matched += 1
        return matched

    def _apply_to_study(self, session: Session, order: Order, study: Study, now: dt.datetime) -> str:
        order.study_id = study.id
        if order.status == OrderStatus.CANCELLED:
            return self._withdraw(session, order, study, now)
        effects = [f"matched study {study.study_instance_uid}"]
        if order.priority is not None:
            study.priority = order.priority.value
            effects.append(f"priority {order.priority.value}")
        cpt = [item for item in order.procedures if str(item.get("system", "")).upper() in CPT_SYSTEMS]
        if cpt:
            # The order's codes outrank the header's and the map: they replace the study's codes.
            study.procedure_codes = [
                {
                    "value": item["code"],
                    "scheme": "C4",
                    "meaning": item.get("text", ""),
                    "source": CptSource.REQUESTED_PROCEDURE_CODE_SEQUENCE.value,
                    "from_order": True,
                }
                | ({"modifiers": list(item["modifiers"])} if item.get("modifiers") else {})
                for item in cpt
            ]
            effects.append("CPT " + ",".join(item["code"] for item in cpt))
        return "; ".join(effects)

    def _withdraw(self, session: Session, order: Order, study: Study, now: dt.datetime) -> str:
        if study.status != StudyStatus.COMPLETED:
            study.needs_review = True
            return f"study {study.study_instance_uid} flagged for review: order cancelled before the read was billed"
        written = 0
        for charge in open_charges(session, study.id):
            reverse_charge(
                session, charge, CorrectionReason.ORDER_CANCELLED, now, f"order {order.accession_number} cancelled"
            )
            written += 1
        study.needs_review = True
        return f"study {study.study_instance_uid} already billed: {written} reversal(s) written"

    # ------------------------------------------------------------------ views
    def list(self, status: OrderStatus | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Orders, newest first, as plain dicts."""
        with self._sessions() as session:
            statement = select(Order).order_by(Order.id.desc()).limit(limit)
            if status is not None:
                statement = statement.where(Order.status == status)
            return [_order_json(session, order) for order in session.scalars(statement)]

    def show(self, accession_number: str) -> dict[str, Any]:
        """One order by accession number.

        Raises
        ------
        NotFoundError
            No order with that accession number.
        """
        with self._sessions() as session:
            order = session.scalars(select(Order).where(Order.accession_number == accession_number)).one_or_none()
            if order is None:
                raise NotFoundError(f"no order with accession number {accession_number!r}")
            return _order_json(session, order)


def _order_json(session: Session, order: Order) -> dict[str, Any]:
    study = session.get(Study, order.study_id) if order.study_id else None
    return {
        "accession_number": order.accession_number,
        "placer_order_number": order.placer_order_number,
        "status": order.status.value,
        "order_control": order.order_control,
        "priority": order.priority.value if order.priority else None,
        "priority_code": order.priority_code,
        "procedures": order.procedures,
        "diagnoses": order.diagnoses,
        "referring_npi": order.referring_npi,
        "referring_id": order.referring_id,
        "referring_name": order.referring_name,
        "ordering_facility": order.ordering_facility,
        "patient_class": order.patient_class,
        "patient_location": order.patient_location,
        "study_instance_uid": study.study_instance_uid if study else None,
        "study_status": study.status.value if study else None,
        "received_at": order.received_at,
        "updated_at": order.updated_at,
        "cancelled_at": order.cancelled_at,
    }
