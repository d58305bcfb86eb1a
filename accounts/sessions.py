"""The session's idle limit, which a page's own polling does not reset.

SESSION_SAVE_EVERY_REQUEST pushes the session's expiry SESSION_COOKIE_AGE past every
request. A study page or worklist polls every 3 s while a study is pending, so a screen
left unattended with patients on it never timed out. Views marked `polled` are requests
a page makes by itself: they are answered, but do not count as the user's activity.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth import SESSION_KEY as AUTH_SESSION_KEY
from django.contrib.sessions.middleware import SessionMiddleware


def polled(view):
    """Mark a view as one a page calls on a timer, not a person."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        request.keeps_session_idle = True
        return view(request, *args, **kwargs)

    return wrapper


class IdleSessionMiddleware(SessionMiddleware):
    """Django's session middleware, except that it leaves an unchanged session's expiry
    alone after a polled view."""

    def process_response(self, request, response):
        session = getattr(request, "session", None)
        if getattr(request, "keeps_session_idle", False) and session is not None and not session.modified:
            return response
        return super().process_response(request, response)


class EndRefusedSessionsMiddleware:
    """Ends a session whose account may no longer sign in (deactivated, or every membership
    ended: accounts.backends). Django only treats such a request as signed out and keeps the
    session, so restoring a membership, after a suspension or a suspected takeover, let the
    old cookie in again without a new sign-in (diff review)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if AUTH_SESSION_KEY in request.session and not request.user.is_authenticated:
            request.session.flush()
        return self.get_response(request)
