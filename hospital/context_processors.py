from __future__ import annotations

from hospital.tenancy import active_memberships


def active_hospital(request) -> dict:
    """The active hospital and role, always visible in the page header."""
    membership = getattr(request, "membership", None)
    return {
        "active_hospital": getattr(request, "hospital", None),
        "active_role": membership.role if membership else None,
        "memberships": (lambda: list(active_memberships(request.user))) if membership else [],
    }
