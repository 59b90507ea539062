from django.urls import path

from diagnostics import views

urlpatterns = [
    path("", views.home, name="home"),
    path("cases/", views.case_list, name="case_list"),
    path("cases/new/", views.case_new, name="case_new"),
    path("cases/<uuid:case_uuid>/", views.case_detail, name="case_detail"),
    path("cases/<uuid:case_uuid>/status/", views.case_status_fragment, name="case_status"),
    path("cases/<uuid:case_uuid>/upload/", views.case_upload, name="case_upload"),
    path("cases/<uuid:case_uuid>/upload.json", views.case_upload_file, name="case_upload_file"),
    path("jobs/<uuid:job_uuid>/retry/", views.job_retry, name="job_retry"),
    path("scans/<uuid:scan_uuid>/image.png", views.scan_image, name="scan_image"),
    path("review/", views.review_queue, name="review_queue"),
    path("review/settings/", views.review_settings, name="review_settings"),
    path("review/<uuid:item_uuid>/", views.review_detail, name="review_detail"),
    path("review/<uuid:item_uuid>/blinded/", views.review_blinded, name="review_blinded"),
    path("models/<uuid:model_uuid>/card/", views.model_card, name="model_card"),
    path("notifications/", views.notification_list, name="notification_list"),
    path("notifications/read/", views.notification_read, name="notification_read"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/agreement.csv", views.dashboard_csv, name="dashboard_csv"),
    path("review/<uuid:item_uuid>/heatmap.png", views.review_heatmap, name="review_heatmap"),
]
