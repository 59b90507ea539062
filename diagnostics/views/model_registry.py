"""The model card page."""

from __future__ import annotations

from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET
from markdown_it import MarkdownIt

from accounts.http import AuthedHttpRequest
from diagnostics.selectors.model_registry import model_card_text, model_get


@require_GET
@login_required
def model_card(request: AuthedHttpRequest, model_uuid: UUID) -> HttpResponse:
    """The bundle's MODEL_CARD.md as a page. Rendered without raw HTML: the card is
    text from a model bundle, not markup we trust."""
    model_version = model_get(user=request.user, model_uuid=model_uuid)
    card_html = MarkdownIt("js-default").render(model_card_text(model_version=model_version))
    return render(request, "diagnostics/model_card.html", {"model_version": model_version, "card_html": card_html})
