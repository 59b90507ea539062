"""API: the review queue, review items and signed decisions."""

from __future__ import annotations

from typing import Any

import django_filters
from django.contrib.auth import logout
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.http import request_user
from accounts.models import ApiToken
from accounts.roles import REVIEW_PERMISSION
from core.api.errors import ApiError
from core.api.permissions import has_perm
from core.http import client_address
from diagnostics.api import serializers as s
from diagnostics.models import ReviewItem
from diagnostics.selectors.reviews import review_item_get, review_queue
from diagnostics.services.reviews import (
    ReviewRuleError,
    SignatureError,
    SigningLocked,
    blinded_read_record,
    review_item_open,
    review_sign,
)

Reviewer = has_perm(REVIEW_PERMISSION, message="The review queue is for physicians.")


class ReviewFilter(django_filters.FilterSet):
    model = django_filters.UUIDFilter(field_name="prediction__model_version__uuid")
    predicted_label = django_filters.CharFilter(method="filter_predicted_label")

    def filter_predicted_label(self, queryset: QuerySet[ReviewItem], name: str, value: str) -> QuerySet[ReviewItem]:
        # Never a way to learn an answer that blinded-first hides (see the selector).
        return queryset.filter(prediction__predicted_label=value, ai_hidden=False, ai_withheld=False)  # type: ignore[misc]  # annotated by the selector

    class Meta:
        model = ReviewItem
        fields: list[str] = []


class ReviewQueue(generics.ListAPIView):
    """Pending items: most advanced predicted stage first, then least confident, then oldest."""

    serializer_class = s.ReviewItemOut
    permission_classes = [Reviewer]
    filterset_class = ReviewFilter
    queryset = ReviewItem.objects.none()  # tells the schema the model; get_queryset decides what is seen

    def get_queryset(self) -> QuerySet[ReviewItem]:
        return review_queue(user=request_user(self.request))


class ReviewItemDetail(generics.RetrieveAPIView):
    serializer_class = s.ReviewItemDetailOut
    permission_classes = [Reviewer]

    def get_object(self) -> ReviewItem:
        return review_item_open(
            acting_user=request_user(self.request),
            item_uuid=self.kwargs["item_uuid"],
            client_address=client_address(self.request),
        )


def _signing_session(request: Request) -> Any:
    """The browser session a physician signs in, or None for a token: a request with a
    token is a session of its own, so it always needs the authenticator code."""
    return None if isinstance(request.auth, ApiToken) else request.session


class BlindedReadCreate(generics.GenericAPIView):
    serializer_class = s.ReviewItemDetailOut
    permission_classes = [Reviewer]

    @extend_schema(request=s.BlindedReadIn, responses={201: s.ReviewItemDetailOut})
    def post(self, request: Request, item_uuid: Any) -> Response:
        """Blinded-first: record your own stage before the AI's answer is shown. Answers
        the item, now with the prediction. Recorded once per physician and item."""
        item = review_item_get(user=request_user(request), item_uuid=item_uuid)
        data = s.BlindedReadIn(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            blinded_read_record(
                acting_user=request_user(request),
                review_item=item,
                stage=data.validated_data["stage"],
                client_address=client_address(request),
            )
        except ReviewRuleError as exc:
            raise ApiError(code=exc.code, message=exc.message, status_code=status.HTTP_409_CONFLICT) from exc
        item = review_item_get(user=request_user(request), item_uuid=item_uuid)
        return Response(s.ReviewItemDetailOut(item).data, status=status.HTTP_201_CREATED)


class ReviewDecisionCreate(generics.GenericAPIView):
    serializer_class = s.DecisionOut
    permission_classes = [Reviewer]

    @extend_schema(request=s.DecisionIn, responses={201: s.DecisionOut})
    def post(self, request: Request, item_uuid: Any) -> Response:
        """Sign a decision with your password (and `otp_token`, the code from your
        authenticator, if you enrolled one): confirm, reject (stage and reason), or
        correct the current signed decision (`supersedes`, stage and reason). With
        blinded-first reading on, record your own stage first (`blinded-read/`):
        until then signing answers 409 `blinded_read_required`."""
        item = review_item_get(user=request_user(request), item_uuid=item_uuid)
        data = s.DecisionIn(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        supersedes = None
        if values["supersedes"] is not None:
            supersedes = item.decisions.filter(uuid=values["supersedes"]).first()
            if supersedes is None:
                raise ApiError(
                    code="invalid",
                    message="The request is not valid. supersedes: no such decision on this item",
                    fields={"supersedes": [{"code": "not_found", "message": "no such decision on this item"}]},
                )
        try:
            decision = review_sign(
                acting_user=request_user(request),
                review_item=item,
                outcome=values.get("outcome") or "rejected",
                stage=values["stage"],
                reason=values["reason"],
                password=values["password"],
                supersedes=supersedes,
                client_address=client_address(request),
                otp_token=values["otp_token"],
                signing_session=_signing_session(request),
                api_token=request.auth if isinstance(request.auth, ApiToken) else None,
            )
        except SigningLocked as exc:
            if not isinstance(request.auth, ApiToken):
                logout(request._request)  # the session must log in again (a token was revoked)
            raise ApiError(code=exc.code, message=exc.message, status_code=status.HTTP_403_FORBIDDEN) from exc
        except SignatureError as exc:
            field = "otp_token" if exc.code == "second_factor_failed" else "password"
            raise ApiError(
                code=exc.code, message=exc.message, fields={field: [{"code": exc.code, "message": exc.message}]}
            ) from exc
        except ReviewRuleError as exc:
            raise ApiError(code=exc.code, message=exc.message, status_code=status.HTTP_409_CONFLICT) from exc
        return Response(s.DecisionOut(decision).data, status=status.HTTP_201_CREATED)
