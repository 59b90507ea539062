from django.urls import path

from diagnostics import views

urlpatterns = [
    path("", views.home, name="home"),
    path("cases/", views.case_list, name="case_list"),
    path("cases/new/", views.case_new, name="case_new"),
    path("cases/<uuid:case_uuid>/", views.case_detail, name="case_detail"),
    path("cases/<uuid:case_uuid>/status/", views.case_status_fragment, name="case_status"),
    path("cases/<uuid:case_uuid>/upload/", views.case_upload, name="case_upload"),
    path("jobs/<uuid:job_uuid>/retry/", views.job_retry, name="job_retry"),
    path("scans/<uuid:scan_uuid>/image.png", views.scan_image, name="scan_image"),
    path("review/", views.review_queue, name="review_queue"),
    path("review/<uuid:item_uuid>/", views.review_detail, name="review_detail"),
]
