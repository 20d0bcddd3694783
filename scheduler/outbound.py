"""HTTP requests the scheduler sends out: webhooks (``scheduler.notifiers``) and
check-in pings (``scheduler.checkins``).

Plain ``urllib`` (no new dependency), with three rules of its own:

* Redirects are not followed. urllib turns a redirected POST into a GET without its
  body, so an alert sent to a URL that redirects (``http://`` to ``https://``, a moved
  webhook) would be lost while looking delivered. A 3xx answer is an error that names
  where it points, so that the address can be fixed.
* ``timeout`` bounds each wait for the server (connecting, the answer's head), and
  reading an error answer's body stops at the deadline: a server that sends its body
  one byte at a time cannot hold a sender for longer.
* The body of a 2xx answer is not read at all, and at most a few kilobytes of an
  error's: it matters only to explain the error, and a server may send megabytes.

Errors never show the whole URL: a Slack or Teams webhook URL, a ping URL, is a
secret (whoever has it can post), and error messages end up in logs and in the admin.
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

# Characters of an error answer's body that an error message shows.
BODY_SHOWN = 200
# Bytes of an answer read at most (the rest is left unread).
_READ_AT_MOST = 4096
# A user agent of our own: some endpoints refuse urllib's default one.
USER_AGENT = "django-scheduler-app"


class DeliveryError(Exception):
    """A request that did not get a 2xx answer, with why in words."""

    def __init__(self, message: str, status: int | None = None, retry: bool = True) -> None:
        super().__init__(message)
        # The HTTP status of the answer, None when there was none (refused, timed out).
        self.status = status
        # Whether trying again later may help (a 404 or a redirect will not go away).
        self.retry = retry


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx answer is then raised as an HTTPError, handled below


_opener = urllib.request.build_opener(_NoRedirects())


def where(url: str) -> str:
    """What a message may show of ``url``: its host (and port), never its path."""
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or "?"  # without any user:password@


def send(
    url: str,
    body: bytes | None,
    timeout: float,
    content_type: str = "application/json",
    method: str | None = None,
) -> int:
    """Send ``body`` to ``url`` (POST; GET without a body unless ``method`` says), and
    return the 2xx status; raise ``DeliveryError`` for anything else."""
    deadline = time.monotonic() + timeout
    headers = {"User-Agent": USER_AGENT}
    if body is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    host = where(url)
    try:
        with _opener.open(request, timeout=timeout) as response:
            # Delivered: what the answer says beyond its status is of no use.
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        status = error.code
        try:
            text = _bounded(error, deadline)
        except (OSError, http.client.HTTPException, DeliveryError):
            text = b""
        finally:
            error.close()
        shown = text.decode("utf-8", "replace")[:BODY_SHOWN]
        if 300 <= status < 400:
            location = error.headers.get("Location", "")
            raise DeliveryError(
                f"{host} answered {status} {error.reason}, a redirect to "
                f"{where(location) if location else 'nowhere'}: redirects are not followed "
                "(a POST would arrive as a GET without its body); use the final address.",
                status,
                retry=False,
            ) from None
        raise DeliveryError(
            f"{host} answered {status} {error.reason}: {shown!r}",
            status,
            # The server's own trouble, or too many requests: later may work. A 4xx will not.
            retry=status >= 500 or status in (408, 429),
        ) from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, TimeoutError):
            raise DeliveryError(f"{host} did not answer within {timeout:g} s.") from None
        raise DeliveryError(f"could not reach {host}: {reason}") from None
    except TimeoutError:
        raise DeliveryError(f"{host} did not answer within {timeout:g} s.") from None
    except (OSError, http.client.HTTPException) as error:
        raise DeliveryError(f"could not reach {host}: {type(error).__name__}: {error}") from None


def _bounded(response: Any, deadline: float) -> bytes:
    """At most ``_READ_AT_MOST`` bytes of an answer, read before ``deadline``."""
    chunks: list[bytes] = []
    size = 0
    while size < _READ_AT_MOST:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeliveryError("the answer did not arrive within the timeout.")
        _set_timeout(response, left)
        chunk = response.read1(_READ_AT_MOST - size) if hasattr(response, "read1") else b""
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _set_timeout(response: Any, seconds: float) -> None:
    # The socket under an answer, to shorten its timeout to what is left of the deadline;
    # when it cannot be found, each read keeps the request's timeout (never longer).
    fp = getattr(response, "fp", None)
    raw = getattr(getattr(fp, "raw", None), "_sock", None)
    if raw is None:
        fp = getattr(fp, "fp", None)  # an HTTPError wraps the answer once more
        raw = getattr(getattr(fp, "raw", None), "_sock", None)
    if isinstance(raw, socket.socket):
        try:
            raw.settimeout(max(seconds, 0.001))
        except OSError:
            pass
