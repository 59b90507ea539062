from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from accounts.models import ApiToken, AuditEvent
from accounts.services import DEFAULT_TOKEN_DAYS


class TokenCreateIn(serializers.Serializer):
    name = serializers.CharField(max_length=100, help_text="What the token is for, e.g. the lab system's name.")
    expires_in_days = serializers.IntegerField(
        min_value=1, max_value=settings.API_TOKEN_MAX_DAYS, default=DEFAULT_TOKEN_DAYS, required=False
    )
    user = serializers.UUIDField(
        required=False,
        help_text="Your own id, if given: a token is minted only for oneself (anybody else's answers 403).",
    )


class TokenOut(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    user = serializers.UUIDField(source="user.uuid", read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)
    revoked = serializers.SerializerMethodField()

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "user",
            "username",
            "key_prefix",
            "created_at",
            "expires_at",
            "revoked_at",
            "revoked",
            "last_used_at",
        ]

    def get_revoked(self, obj: ApiToken) -> bool:
        return obj.revoked_at is not None


class TokenCreatedOut(TokenOut):
    key = serializers.CharField(read_only=True, help_text="The secret. Shown once; only its hash is stored.")

    class Meta(TokenOut.Meta):
        fields = [*TokenOut.Meta.fields, "key"]


class AuditEventOut(serializers.ModelSerializer):
    id = serializers.UUIDField(source="uuid", read_only=True)
    actor = serializers.UUIDField(source="actor.uuid", read_only=True, allow_null=True, default=None)
    actor_username = serializers.CharField(source="actor.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = AuditEvent
        fields = ["id", "created_at", "actor", "actor_username", "action", "object_type", "object_id", "data"]
