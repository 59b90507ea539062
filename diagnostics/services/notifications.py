"""Notifications in the app and by e-mail (never with a patient reference in the mail)."""

from __future__ import annotations

import logging
from datetime import timedelta
from uuid import UUID

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from accounts.roles import REVIEW_PERMISSION
from core.exceptions import NotFound
from diagnostics.models import (
    Notification,
    ReviewDecision,
    ReviewItem,
)

logger = logging.getLogger(__name__)


def notify(*, user: User, kind: str, message: str, link: str, review_item: ReviewItem | None) -> Notification:
    """An in-app notification and, after commit, the same news by e-mail. The e-mail
    carries no patient reference: mail leaves the hospital's systems."""
    note = Notification(user=user, kind=kind, message=message, link=link, review_item=review_item)
    note.full_clean()
    note.save()
    if user.email:
        subject = f"CancerWeb: {note.get_kind_display().lower()}"
        body = "There is news in CancerWeb for you. Sign in to see it"
        body += f": {settings.CANCERWEB_BASE_URL.rstrip('/')}{link}\n" if settings.CANCERWEB_BASE_URL else ".\n"
        address = user.email
        transaction.on_commit(lambda: _send_mail(subject=subject, body=body, to=address))
    return note


def _send_mail(*, subject: str, body: str, to: str) -> None:
    from django.core.mail import send_mail

    try:
        send_mail(subject, body, None, [to])
    except Exception:  # the in-app notification stands even when the mail server is down
        logger.warning("could not send a notification e-mail", exc_info=True)


def notify_case_signed(*, decision: ReviewDecision) -> None:
    from django.urls import reverse

    case = decision.review_item.prediction.scan.case
    verb = "corrected" if decision.supersedes_id else "signed"
    notify(
        user=case.created_by,
        kind=Notification.Kind.CASE_SIGNED,
        message=f"Case {case.patient_ref}: a physician {verb} a result.",
        link=reverse("case_detail", kwargs={"case_uuid": case.uuid}),
        review_item=decision.review_item,
    )


def reviews_notify_overdue() -> int:
    """Remind every physician of items waiting longer than REVIEW_OVERDUE_MINUTES.
    Safe to run again and again: one reminder per item and physician (a constraint)."""
    from django.urls import reverse

    cutoff = timezone.now() - timedelta(minutes=settings.REVIEW_OVERDUE_MINUTES)
    overdue = list(
        ReviewItem.objects.filter(status=ReviewItem.Status.PENDING, created_at__lt=cutoff).select_related(
            "prediction__scan__case"
        )
    )
    if not overdue:
        return 0
    app_label, codename = REVIEW_PERMISSION.split(".")
    physicians = list(
        User.objects.filter(is_active=True)
        .filter(
            Q(groups__permissions__codename=codename, groups__permissions__content_type__app_label=app_label)
            | Q(user_permissions__codename=codename, user_permissions__content_type__app_label=app_label)
        )
        .distinct()
    )
    sent = 0
    for item in overdue:
        for physician in physicians:
            if Notification.objects.filter(
                user=physician, review_item=item, kind=Notification.Kind.REVIEW_OVERDUE
            ).exists():
                continue
            try:
                with transaction.atomic():
                    notify(
                        user=physician,
                        kind=Notification.Kind.REVIEW_OVERDUE,
                        message=f"Case {item.prediction.scan.case.patient_ref} waits for review "
                        f"for more than {settings.REVIEW_OVERDUE_MINUTES} minutes.",
                        link=reverse("review_detail", kwargs={"item_uuid": item.uuid}),
                        review_item=item,
                    )
                sent += 1
            except (IntegrityError, ValidationError):
                continue  # a concurrent run reminded this physician already
    return sent


def notifications_mark_read(*, acting_user: User, notification_uuid: UUID | None = None) -> int:
    """Mark one of the user's notifications read, or all of them when no uuid is given."""
    qs = Notification.objects.filter(user=acting_user, read_at__isnull=True)
    if notification_uuid is not None:
        qs = qs.filter(uuid=notification_uuid)
    return qs.update(read_at=timezone.now())


def notification_open(*, acting_user: User, notification_uuid: UUID) -> str:
    """The user opens (clicks) one of their notifications: it is marked read, and the
    answer is where it leads (this site's own path only; the list when it has none).
    Another user's notification is not found."""
    from django.urls import reverse

    note = Notification.objects.filter(user=acting_user, uuid=notification_uuid).first()
    if note is None:
        raise NotFound("no such notification")
    if note.read_at is None:
        Notification.objects.filter(pk=note.pk, read_at__isnull=True).update(read_at=timezone.now())
    link = note.link or ""
    # A stored link is ours (reverse() made it), but never follow one off this site.
    if not link.startswith("/") or link.startswith("//") or "\\" in link:
        return reverse("notification_list")
    return link
