from django.urls import path

from accounts.api import views

urlpatterns = [
    path("tokens/", views.TokenListCreate.as_view(), name="api_tokens"),
    path("tokens/<uuid:token_uuid>/", views.TokenDetail.as_view(), name="api_token_detail"),
    path("audit-events/", views.AuditEventList.as_view(), name="api_audit_events"),
    path("audit-events/<uuid:event_uuid>/", views.AuditEventDetail.as_view(), name="api_audit_event_detail"),
]
