from django.urls import path

from diagnostics.views import cases, dashboards, model_registry, notifications, reader_studies, reviews, slides

urlpatterns = [
    path("", cases.home, name="home"),
    path("cases/", cases.case_list, name="case_list"),
    path("cases/new/", cases.case_new, name="case_new"),
    path("cases/<uuid:case_uuid>/", cases.case_detail, name="case_detail"),
    path("cases/<uuid:case_uuid>/status/", cases.case_status_fragment, name="case_status"),
    path("cases/<uuid:case_uuid>/upload/", cases.case_upload, name="case_upload"),
    path("cases/<uuid:case_uuid>/upload.json", cases.case_upload_file, name="case_upload_file"),
    path("jobs/<uuid:job_uuid>/retry/", cases.job_retry_page, name="job_retry"),
    path("scans/<uuid:scan_uuid>/image.png", cases.scan_image, name="scan_image"),
    path("scans/<uuid:scan_uuid>/slide.dzi", slides.slide_dzi, name="slide_dzi"),
    path(
        "scans/<uuid:scan_uuid>/slide_files/<int:level>/<int:col>_<int:row>.jpeg",
        slides.slide_tile,
        name="slide_tile",
    ),
    path("review/<uuid:item_uuid>/regions/<int:rank>.jpg", slides.slide_region, name="slide_region"),
    path("review/", reviews.review_queue_page, name="review_queue"),
    path("review/settings/", reviews.review_settings, name="review_settings"),
    path("review/<uuid:item_uuid>/", reviews.review_detail, name="review_detail"),
    path("review/<uuid:item_uuid>/blinded/", reviews.review_blinded, name="review_blinded"),
    path("review/<uuid:item_uuid>/heatmap.png", reviews.review_heatmap, name="review_heatmap"),
    path("models/<uuid:model_uuid>/card/", model_registry.model_card, name="model_card"),
    path("notifications/", notifications.notification_list, name="notification_list"),
    path("notifications/read/", notifications.notification_read, name="notification_read"),
    path("dashboard/", dashboards.dashboard, name="dashboard"),
    path("dashboard/agreement.csv", dashboards.dashboard_csv, name="dashboard_csv"),
    path("studies/", reader_studies.study_list, name="study_list"),
    path("studies/new/", reader_studies.study_new, name="study_new"),
    path("studies/<uuid:study_uuid>/", reader_studies.study_detail, name="study_detail"),
    path("studies/<uuid:study_uuid>/results.csv", reader_studies.study_csv, name="study_csv"),
    path("studies/<uuid:study_uuid>/reference/", reader_studies.study_reference, name="study_reference"),
    path("studies/<uuid:study_uuid>/read/", reader_studies.study_read, name="study_read"),
]
