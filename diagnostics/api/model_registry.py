"""API: the model registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.http import request_user
from core.api.permissions import has_perm
from diagnostics.api import serializers as s
from diagnostics.models import ModelVersion
from diagnostics.selectors.model_registry import model_get, models_for_user
from diagnostics.services.model_registry import model_activate, model_register, model_retire

ModelRegistrar = has_perm("diagnostics.add_modelversion", message="Only admins can register models.")


ModelManager = has_perm("diagnostics.change_modelversion", message="Only admins can activate or retire models.")


class ModelFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=ModelVersion.Status.choices)
    name = django_filters.CharFilter()

    class Meta:
        model = ModelVersion
        fields: list[str] = []


class ModelListRegister(generics.ListAPIView):
    """Registered model versions (every signed-in user). POST registers a bundle (admins)."""

    queryset = ModelVersion.objects.none()  # tells the schema the model; get_queryset decides what is seen
    serializer_class = s.ModelOut
    filterset_class = ModelFilter

    def get_queryset(self) -> QuerySet[ModelVersion]:
        return models_for_user(user=request_user(self.request))

    def get_permissions(self) -> Sequence[Any]:
        if self.request.method == "POST":
            return [ModelRegistrar()]
        return super().get_permissions()

    @extend_schema(request=s.ModelRegisterIn, responses={201: s.ModelOut}, operation_id="models_register")
    def post(self, request: Request) -> Response:
        data = s.ModelRegisterIn(data=request.data)
        data.is_valid(raise_exception=True)
        model_version = model_register(
            acting_user=request_user(request),
            bundle_dir=data.validated_data["bundle"],
            activate=data.validated_data["activate"],
        )
        return Response(s.ModelOut(model_version).data, status=status.HTTP_201_CREATED)


class ModelDetail(generics.RetrieveAPIView):
    serializer_class = s.ModelOut

    def get_object(self) -> ModelVersion:
        return model_get(user=request_user(self.request), model_uuid=self.kwargs["model_uuid"])


class ModelActivate(generics.GenericAPIView):
    serializer_class = s.ModelOut
    permission_classes = [ModelManager]

    @extend_schema(request=None, responses={200: s.ModelOut})
    def post(self, request: Request, model_uuid: Any) -> Response:
        """Make this the active version; the previously active one is retired."""
        model_version = model_get(user=request_user(request), model_uuid=model_uuid)
        return Response(s.ModelOut(model_activate(acting_user=request_user(request), model_version=model_version)).data)


class ModelRetire(generics.GenericAPIView):
    serializer_class = s.ModelOut
    permission_classes = [ModelManager]

    @extend_schema(request=None, responses={200: s.ModelOut})
    def post(self, request: Request, model_uuid: Any) -> Response:
        """Retire this version. Retiring the active one leaves no active model."""
        model_version = model_get(user=request_user(request), model_uuid=model_uuid)
        return Response(s.ModelOut(model_retire(acting_user=request_user(request), model_version=model_version)).data)
