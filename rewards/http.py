"""HTTP endpoint rewards: a recipe names ``http://host:port/path`` and the batch is POSTed there.

Request: one POST per batch, ``Content-Type: application/json``, the body being exactly the keyword
arguments a batched Python reward would get — every per-response field a list (``prompt``,
``response``, ``ground_truth``, each dataset column, ``response_length``, ``truncated``), run-level
fields (``step``, ``max_response_length``) and the recipe's other kwargs as given.
Response: a JSON list with one entry per response (a number, ``{"score": x, ...}`` or null), or an
object ``{"scores": [...]}``.

Connection errors, timeouts, 429 and 5xx answers are retried with exponential back-off; other 4xx
answers fail at once (retrying a bad request does not help). Redirects are not followed: urllib would
re-send the request, ``Authorization`` and other headers included, to wherever the answer points; the
error names the target so the recipe can name it instead. Runs inside a reward process, so the
pool's wall-clock timeout still bounds the whole call, retries included. Standard library only.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Optional

_RETRY_CODES = (429, 500, 502, 503, 504)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's hook
        return None  # urllib then raises the 3xx answer as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirects)


def http_reward(*, url: str, request_timeout_s: float = 10.0, retries: int = 3, backoff_s: float = 0.5,
                headers: Optional[dict[str, str]] = None, **fields: Any) -> list:
    """POST the batch as JSON to ``url``; the endpoint answers with one score per response."""
    n = len(fields.get("response", []))
    body = json.dumps(fields, default=str).encode()
    head = {"Content-Type": "application/json", **(headers or {})}
    last: Exception = RuntimeError("no attempt made")
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            req = urllib.request.Request(url, data=body, headers=head, method="POST")
            with _OPENER.open(req, timeout=request_timeout_s) as answer:
                return _scores(json.loads(answer.read()), n, url)
        except urllib.error.HTTPError as e:
            with e:  # the error holds the answer's connection: close it, also on a retry
                _raise_unless_retryable(e, url)
            last = e
        except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout) as e:
            last = e
    what = f"{url}: no answer after {retries + 1} attempts; last: {type(last).__name__}: {last}"
    # A TimeoutError is reported as a timeout by the reward pool, like any other reward that ran out of time.
    timed_out = isinstance(last, (TimeoutError, socket.timeout)) or "timed out" in str(last)
    raise (TimeoutError(what) if timed_out else RuntimeError(what))


def _raise_unless_retryable(e: urllib.error.HTTPError, url: str) -> None:
    """A redirect or a 4xx other than 429 fails the call at once; 429 and 5xx return (retried)."""
    if 300 <= e.code < 400:
        raise RuntimeError(f"{url} answered HTTP {e.code}, a redirect to {e.headers.get('Location')}: "
                           "reward requests do not follow redirects (they would carry your headers "
                           "there); name the final URL in the recipe") from None
    if e.code not in _RETRY_CODES:
        detail = e.read()[:300].decode(errors="replace")
        raise RuntimeError(f"{url} answered HTTP {e.code} {e.reason}: {detail}") from None


def _scores(payload: Any, n: int, url: str) -> list:
    scores = payload.get("scores") if isinstance(payload, dict) else payload
    if not isinstance(scores, list) or len(scores) != n:
        raise ValueError(f"{url} answered {str(payload)[:200]!r}; expected a list of {n} scores "
                         "(or {\"scores\": [...]})")
    return scores
