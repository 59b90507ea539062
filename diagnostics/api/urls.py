from django.urls import path

from diagnostics.api import cases, integration, model_registry, reviews, slides

urlpatterns = [
    path("cases/", cases.CaseListCreate.as_view(), name="api_cases"),
    path("cases/<uuid:case_uuid>/", cases.CaseDetail.as_view(), name="api_case_detail"),
    path("cases/<uuid:case_uuid>/scans/", cases.CaseScans.as_view(), name="api_case_scans"),
    path("cases/<uuid:case_uuid>/slide-uploads/", slides.CaseSlideUploads.as_view(), name="api_case_slide_uploads"),
    path("slide-uploads/<uuid:upload_uuid>/", slides.SlideUploadDetail.as_view(), name="api_slide_upload"),
    path(
        "slide-uploads/<uuid:upload_uuid>/finish/", slides.SlideUploadFinish.as_view(), name="api_slide_upload_finish"
    ),
    path("review-items/<uuid:item_uuid>/slide-map/", slides.SlideMap.as_view(), name="api_slide_map"),
    path("scans/<uuid:scan_uuid>/", cases.ScanDetail.as_view(), name="api_scan_detail"),
    path("jobs/", cases.JobList.as_view(), name="api_jobs"),
    path("jobs/<uuid:job_uuid>/", cases.JobDetail.as_view(), name="api_job_detail"),
    path("jobs/<uuid:job_uuid>/retry/", cases.JobRetry.as_view(), name="api_job_retry"),
    path("review-queue/", reviews.ReviewQueue.as_view(), name="api_review_queue"),
    path("review-items/<uuid:item_uuid>/", reviews.ReviewItemDetail.as_view(), name="api_review_item"),
    path("review-items/<uuid:item_uuid>/blinded-read/", reviews.BlindedReadCreate.as_view(), name="api_blinded_read"),
    path("review-items/<uuid:item_uuid>/decisions/", reviews.ReviewDecisionCreate.as_view(), name="api_review_sign"),
    path("dicomweb/studies", integration.StowStudies.as_view(), name="api_dicomweb_studies"),
    path(
        "fhir/DiagnosticReport/<uuid:report_id>",
        integration.FhirDiagnosticReport.as_view(),
        name="api_fhir_diagnostic_report",
    ),
    path("models/", model_registry.ModelListRegister.as_view(), name="api_models"),
    path("models/<uuid:model_uuid>/", model_registry.ModelDetail.as_view(), name="api_model_detail"),
    path("models/<uuid:model_uuid>/activate/", model_registry.ModelActivate.as_view(), name="api_model_activate"),
    path("models/<uuid:model_uuid>/retire/", model_registry.ModelRetire.as_view(), name="api_model_retire"),
]
