"""A DICOM C-STORE receiver (storage SCP) for modalities that only push DIMSE, in its
own process: ``manage.py dicom_receiver --port 11112 --aet CANCERWEB``.

An association is accepted only from a calling AE title that an active integration
account lists (the list is read again for every new connection); every instance takes
the same path as a STOW-RS one. A refused or broken instance gets a failure status and
the receiver keeps serving."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from diagnostics.models import Exchange
from diagnostics.services.integration import (
    allowed_ae_titles,
    exchange_refused,
    instance_receive,
    integration_account_for_ae_title,
)

logger = logging.getLogger(__name__)
# pynetdicom's debug output summarises data sets; keep only its warnings and errors.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NOT_AUTHORIZED = 0x0124


def _ps310(event: Any) -> bytes:
    """The received data set as a PS3.10 file: the file meta group pynetdicom builds
    from the presentation context, then the data set as it arrived."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, event.file_meta)
    out.write(event.request.DataSet.getvalue())
    return out.getvalue()


def handle_store(event: Any) -> int:
    close_old_connections()
    try:
        calling = event.assoc.requestor.ae_title
        account = integration_account_for_ae_title(ae_title=str(calling))
        if account is None:  # withdrawn after the association was accepted
            exchange_refused(
                account=None, channel=Exchange.Channel.C_STORE, code="unknown_ae_title",
                message="the calling AE title is not an integration account's", failure_reason=NOT_AUTHORIZED,
            )  # fmt: skip
            return NOT_AUTHORIZED
        outcome = instance_receive(
            account=account,
            data=_ps310(event),
            channel=Exchange.Channel.C_STORE,
            client_address=event.assoc.requestor.address,
        )
        return SUCCESS if outcome.stored else int(outcome.failure_reason or PROCESSING_FAILURE)
    except Exception:  # the receiver keeps serving whatever one instance does
        logger.exception("C-STORE of one instance failed")
        return PROCESSING_FAILURE
    finally:
        close_old_connections()


class Command(BaseCommand):
    help = "Receive DICOM C-STORE pushes from the AE titles of integration accounts."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=11112)
        parser.add_argument("--host", default="0.0.0.0")  # noqa: S104  (a DICOM listener listens on the network)
        parser.add_argument("--aet", default="CANCERWEB", help="this receiver's AE title")

    def handle(self, *args: Any, **options: Any) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.presentation import AllStoragePresentationContexts

        ae = AE(ae_title=options["aet"])
        ae.supported_contexts = AllStoragePresentationContexts
        ae.require_calling_aet = allowed_ae_titles() or ["\x00"]  # nobody until an account lists one

        def refresh(event: Any) -> None:
            # Read before the association request is judged: a new account's AE title
            # works without a restart, a removed one stops at once.
            close_old_connections()
            ae.require_calling_aet = allowed_ae_titles() or ["\x00"]

        handlers: list[Any] = [(evt.EVT_C_STORE, handle_store), (evt.EVT_CONN_OPEN, refresh)]
        server = ae.start_server((options["host"], options["port"]), block=False, evt_handlers=handlers)
        self.stdout.write(f"DICOM receiver {options['aet']} listening on {options['host']}:{options['port']}")
        self.stdout.flush()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        stop.wait()
        if server is not None:
            server.shutdown()
