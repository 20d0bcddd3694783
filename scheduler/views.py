"""The Prometheus metrics view (``scheduler.urls``: ``<prefix>/metrics``).

Open to a scraper that sends ``Authorization: Bearer <SCHEDULER["METRICS_TOKEN"]>``
and to a logged-in staff user (to look at it in a browser); to no one else: the
metrics name every job and tell when each fails. Like the admin, it reads the
database and never loads the runtime.
"""

from __future__ import annotations

import hmac
import logging

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.gzip import gzip_page
from django.views.decorators.http import require_safe

from scheduler import conf
from scheduler.metrics import exposition

logger = logging.getLogger(__name__)

# What generate_latest writes: Prometheus' text format 0.0.4, which every scraper reads
# (Prometheus 2 and 3, Grafana Agent/Alloy, VictoriaMetrics, Datadog). Spelled out:
# prometheus_client's CONTENT_TYPE_LATEST now names the 1.0.0 variant.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# What a scraper is told to send (RFC 6750); the realm names what the token opens.
CHALLENGE = 'Bearer realm="scheduler metrics"'


def _bearer(request: HttpRequest) -> str | None:
    """The bearer token of the request, or None if it sends no Authorization: Bearer."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def _token_matches(given: str) -> bool:
    expected = conf.get("METRICS_TOKEN")
    if expected is None:
        return False
    # Constant time, on bytes: compare_digest refuses str with non-ASCII characters.
    return hmac.compare_digest(given.encode(), str(expected).encode())


def _refused(status: int, message: str, challenge: str | None = CHALLENGE) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain")
    if challenge:
        response["WWW-Authenticate"] = challenge
    return response


# gzip_page: a thousand jobs make a few hundred kilobytes of text, which Prometheus
# asks for gzipped (Accept-Encoding: gzip); never_cache: private, and always current.
@require_safe
@never_cache
@gzip_page
def metrics(request: HttpRequest) -> HttpResponse:
    """The scheduler's metrics in Prometheus' text format (0.0.4)."""
    token = _bearer(request)
    if token is not None:
        if not _token_matches(token):
            return _refused(
                401,
                "Invalid metrics token.",
                CHALLENGE + ', error="invalid_token"',
            )
    else:
        user = request.user
        if not user.is_authenticated:
            return _refused(401, "Send Authorization: Bearer <SCHEDULER['METRICS_TOKEN']>.")
        if not (user.is_active and user.is_staff):
            return _refused(403, "Staff only.", challenge=None)
    try:
        body = exposition()
    except DatabaseError:
        # Prometheus records the failed scrape (up == 0): the database's own error,
        # which can name host, port and user, goes to the server log only.
        logger.error("Cannot read the scheduler's metrics from its database", exc_info=True)
        return _refused(503, "The scheduler's database cannot be read.", challenge=None)
    return HttpResponse(body, content_type=CONTENT_TYPE)
