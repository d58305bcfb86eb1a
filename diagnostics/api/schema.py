"""OpenAPI descriptions of the API's own pieces (imported by diagnostics.api.urls)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class IntegrationKeyScheme(OpenApiAuthenticationExtension):
    target_class = "hospital.api.IntegrationKeyAuthentication"
    name = "IntegrationKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A hospital's integration key: `Authorization: Bearer <key>`.",
        }
