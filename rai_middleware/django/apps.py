"""``INSTALLED_APPS += ["rai_middleware.django"]``: the template tags and the system checks."""

from __future__ import annotations

from django.apps import AppConfig


class ReturningAIConfig(AppConfig):  # type: ignore[misc]  # Django ships no stubs
    name = "rai_middleware.django"
    # "django" would clash with Django's own apps; templates load the tags by this label's library.
    label = "rai_middleware"
    verbose_name = "Returning.AI widgets"

    def ready(self) -> None:
        # Registers the system checks (rai_middleware.E001...) with Django.
        from . import checks  # noqa: F401
