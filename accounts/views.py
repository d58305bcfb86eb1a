from __future__ import annotations

from urllib.parse import urlsplit

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import Resolver404, resolve, reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.services import record_about_user
from hospital import audit
from hospital.tenancy import SESSION_KEY, active_memberships, resolve_membership


class PleuraLoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

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
    return redirect(next_url)
