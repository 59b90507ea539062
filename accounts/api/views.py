"""API: tokens (create, list, revoke) and the audit trail (admins, read only).
Thin: input serializer -> service -> output serializer; reads from selectors."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import selectors, services
from accounts.api.serializers import AuditEventOut, TokenCreatedOut, TokenCreateIn, TokenOut
from accounts.http import request_user
from accounts.models import ApiToken, AuditEvent
from core.api.errors import ApiError
from core.api.filters import CreatedRangeFilterSet
from core.api.permissions import has_perm
from core.http import client_address


class TokenListCreate(generics.ListAPIView):
    """Your API tokens (admins: everybody's). POST creates one and shows its secret once."""

    queryset = ApiToken.objects.none()  # tells the schema the model; get_queryset decides what is seen
    serializer_class = TokenOut

    def get_queryset(self) -> QuerySet[ApiToken]:
        return selectors.api_tokens_for_user(user=request_user(self.request))

    @extend_schema(request=TokenCreateIn, responses={201: TokenCreatedOut}, operation_id="tokens_create")
    def post(self, request: Request) -> Response:
        if isinstance(request.auth, ApiToken):
            # A leaked token must not be able to mint fresh ones that outlive its revocation.
            raise ApiError(
                code="session_required",
                message="Create tokens from a logged-in browser session or with manage.py api_token_create.",
                status_code=status.HTTP_403_FORBIDDEN,
            )
        data = TokenCreateIn(data=request.data)
        data.is_valid(raise_exception=True)
        wanted = data.validated_data.get("user")
        if wanted is not None and wanted != request_user(request).uuid:
            # A token acts, and is audited, under its user's name: only that user mints it.
            raise ApiError(
                code="permission_denied",
                message="A token is minted only for oneself; the user must create their own.",
                status_code=status.HTTP_403_FORBIDDEN,
            )
        token, key = services.api_token_create(
            acting_user=request_user(request),
            user=request_user(request),
            name=data.validated_data["name"],
            expires_in_days=data.validated_data.get("expires_in_days", services.DEFAULT_TOKEN_DAYS),
            client_address=client_address(request),
        )
        token.key = key  # type: ignore[attr-defined]  # shown once, never stored
        return Response(TokenCreatedOut(token).data, status=status.HTTP_201_CREATED)


class TokenDetail(generics.GenericAPIView):
    serializer_class = TokenOut

    def get_object(self) -> ApiToken:
        return selectors.api_token_get(user=request_user(self.request), token_uuid=self.kwargs["token_uuid"])

    def get(self, request: Request, token_uuid: Any) -> Response:
        return Response(TokenOut(self.get_object()).data)

    @extend_schema(request=None, responses={200: TokenOut})
    def delete(self, request: Request, token_uuid: Any) -> Response:
        """Revoke the token now; it answers 401 from then on."""
        token = services.api_token_revoke(
            acting_user=request_user(request), token=self.get_object(), client_address=client_address(request)
        )
        return Response(TokenOut(token).data)


class AuditEventFilter(CreatedRangeFilterSet):
    action = django_filters.CharFilter()
    object_type = django_filters.CharFilter()
    object_id = django_filters.CharFilter()
    actor = django_filters.UUIDFilter(field_name="actor__uuid")

    class Meta:
        model = AuditEvent
        fields: list[str] = []


AdminAudit = has_perm("accounts.view_auditevent", message="The audit trail is for admins.")


class AuditEventList(generics.ListAPIView):
    """The audit trail, newest first. Admins only; nothing here can be changed."""

    serializer_class = AuditEventOut
    permission_classes = [AdminAudit]
    filterset_class = AuditEventFilter
    queryset = AuditEvent.objects.none()  # tells the schema the model; get_queryset decides what is seen

    def get_queryset(self) -> QuerySet[AuditEvent]:
        return selectors.audit_events_for_user(user=request_user(self.request))


class AuditEventDetail(generics.RetrieveAPIView):
    serializer_class = AuditEventOut
    permission_classes = [AdminAudit]

    def get_object(self) -> AuditEvent:
        return selectors.audit_event_get(user=request_user(self.request), event_uuid=self.kwargs["event_uuid"])
