from django.urls import path

from diagnostics.api import views

urlpatterns = [
    path("cases/", views.CaseListCreate.as_view(), name="api_cases"),
    path("cases/<uuid:case_uuid>/", views.CaseDetail.as_view(), name="api_case_detail"),
    path("cases/<uuid:case_uuid>/scans/", views.CaseScans.as_view(), name="api_case_scans"),
    path("scans/<uuid:scan_uuid>/", views.ScanDetail.as_view(), name="api_scan_detail"),
    path("jobs/", views.JobList.as_view(), name="api_jobs"),
    path("jobs/<uuid:job_uuid>/", views.JobDetail.as_view(), name="api_job_detail"),
    path("jobs/<uuid:job_uuid>/retry/", views.JobRetry.as_view(), name="api_job_retry"),
    path("review-queue/", views.ReviewQueue.as_view(), name="api_review_queue"),
    path("review-items/<uuid:item_uuid>/", views.ReviewItemDetail.as_view(), name="api_review_item"),
    path("review-items/<uuid:item_uuid>/decisions/", views.ReviewDecisionCreate.as_view(), name="api_review_sign"),
    path("models/", views.ModelListRegister.as_view(), name="api_models"),
    path("models/<uuid:model_uuid>/", views.ModelDetail.as_view(), name="api_model_detail"),
    path("models/<uuid:model_uuid>/activate/", views.ModelActivate.as_view(), name="api_model_activate"),
    path("models/<uuid:model_uuid>/retire/", views.ModelRetire.as_view(), name="api_model_retire"),
]
