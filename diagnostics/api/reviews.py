"""API: the review queue, review items and signed decisions."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.roles import REVIEW_PERMISSION
from core.api.errors import ApiError
from core.api.permissions import has_perm
from core.http import client_address
from diagnostics.api import serializers as s
from diagnostics.models import ReviewItem
from diagnostics.selectors.reviews import review_item_get, review_queue
from diagnostics.services.reviews import SignatureError, review_sign

Reviewer = has_perm(REVIEW_PERMISSION, message="The review queue is for physicians.")


class ReviewFilter(django_filters.FilterSet):
    model = django_filters.UUIDFilter(field_name="prediction__model_version__uuid")
    predicted_label = django_filters.CharFilter(field_name="prediction__predicted_label")

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
        return review_queue(user=self.request.user)


class ReviewItemDetail(generics.RetrieveAPIView):
    serializer_class = s.ReviewItemDetailOut
    permission_classes = [Reviewer]

    def get_object(self) -> ReviewItem:
        return review_item_get(user=self.request.user, item_uuid=self.kwargs["item_uuid"])


class ReviewDecisionCreate(generics.GenericAPIView):
    serializer_class = s.DecisionOut
    permission_classes = [Reviewer]

    @extend_schema(request=s.DecisionIn, responses={201: s.DecisionOut})
    def post(self, request: Request, item_uuid: Any) -> Response:
        """Sign a decision with your password: confirm, reject (stage and reason), or
        correct the current signed decision (`supersedes`, stage and reason)."""
        item = review_item_get(user=request.user, item_uuid=item_uuid)
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
                acting_user=request.user,
                review_item=item,
                outcome=values.get("outcome") or "rejected",
                stage=values["stage"],
                reason=values["reason"],
                password=values["password"],
                supersedes=supersedes,
                client_address=client_address(request),
            )
        except SignatureError as exc:
            raise ApiError(
                code=exc.code, message=exc.message, fields={"password": [{"code": exc.code, "message": exc.message}]}
            ) from exc
        return Response(s.DecisionOut(decision).data, status=status.HTTP_201_CREATED)
