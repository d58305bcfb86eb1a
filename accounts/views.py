from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import Resolver404, resolve, reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.services import record_about_user
from hospital import audit
from hospital.tenancy import SESSION_KEY, active_memberships, resolve_membership

# Which of a person's hospitals this browser last worked in: a session that ended (idle
# time out) took its choice with it, and signing in again opened the first hospital by
# name, where the page kept open for another refused its review as "switched in another
# tab" (portal review). A hospital's code, not a patient's data.
LAST_HOSPITAL_COOKIE = "pleura_last_hospital"
LAST_HOSPITAL_SECONDS = 90 * 24 * 3600


def remember_hospital(response: HttpResponse, code: str) -> None:
    response.set_cookie(
        LAST_HOSPITAL_COOKIE,
        code,
        max_age=LAST_HOSPITAL_SECONDS,
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )


class SignInForm(AuthenticationForm):
    """Django's, whose refusal also names the lockout: a doctor who typed the right password
    after a few wrong ones was told it was wrong, and tried resets (fresh-machine review).
    The same words whether a lockout applies or not, so they tell an attacker nothing."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        minutes = max(1, settings.LOGIN_LOCKOUT_SECONDS // 60)
        self.error_messages = {
            **self.error_messages,
            "invalid_login": (
                "Please enter a correct email address and password. After several failed attempts, signing in is "
                f"blocked for up to {minutes} minutes, even with the right password: wait, or ask your hospital's "
                "admin."
            ),
        }


class PleuraLoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True
    authentication_form = SignInForm

    def form_valid(self, form):
        """Open the hospital this browser last worked in, if it is one of the person's
        (else the first by name), and remember the one opened."""
        remembered = self.request.COOKIES.get(LAST_HOSPITAL_COOKIE, "")
        if remembered:
            self.request.session[SESSION_KEY] = remembered  # before the login, which files its event there
        response = super().form_valid(form)
        if remembered:
            self.request.session[SESSION_KEY] = remembered  # a login after another person's starts afresh
        membership = resolve_membership(self.request)  # the remembered one only if it is theirs
        if membership is not None:
            remember_hospital(response, str(membership.hospital.code))
        return response

    def get_success_url(self):
        """Where `next` points, unless the role the person signs in with may not open it:
        a hospital admin sent on to the upload page landed on "Not allowed" (portal review).
        Then the worklist, which every role opens."""
        url = super().get_success_url()
        try:
            view = resolve(urlsplit(url).path).func
        except Resolver404:
            return url
        allowed = getattr(view, "allowed_roles", None)
        membership = resolve_membership(self.request) if allowed else None
        if membership is not None and membership.role not in allowed:
            return reverse("diagnostics:worklist")
        if allowed and membership is None and self.request.user.is_superuser:
            return reverse("admin:index")  # a platform operator with no hospital: its pages are the admin's
        return url


class PleuraLogoutView(auth_views.LogoutView):
    pass


class PleuraPasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("diagnostics:worklist")

    def form_valid(self, form):
        # The new password and its event, all or none (a password saved without its event is
        # a change nobody can account for).
        with transaction.atomic():
            response = super().form_valid(form)
            record_about_user(audit.Action.PASSWORD_CHANGED, self.request.user, request=self.request)
        messages.success(self.request, "Your password has been changed.")
        return response


@login_required
@require_POST
def switch_hospital(request: HttpRequest) -> HttpResponse:
    """Make another of the user's hospitals the active one for this session."""
    code = request.POST.get("hospital", "")
    membership = next((m for m in active_memberships(request.user) if str(m.hospital.code) == code), None)
    if membership is None:
        raise Http404("No such hospital.")
    request.session[SESSION_KEY] = str(membership.hospital.code)
    audit.record(
        audit.Action.HOSPITAL_SWITCHED, request=request, hospital=membership.hospital, target=membership.hospital
    )
    next_url = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = reverse_lazy("diagnostics:worklist")
    response = redirect(next_url)
    remember_hospital(response, str(membership.hospital.code))
    return response
