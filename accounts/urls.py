from django.contrib.auth import views as auth_views
from django.urls import path

from accounts import views

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("otp/setup/", views.otp_setup, name="otp_setup"),
    path("otp/verify/", views.otp_verify, name="otp_verify"),
    path("audit/", views.audit_list, name="audit_list"),
    path("lockouts/", views.lockouts, name="lockouts"),
    path("audit/export.csv", views.audit_export, name="audit_export"),
]
