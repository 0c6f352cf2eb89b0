"""Django template tag libraries of ``rai_middleware.django`` (``{% load rai_middleware %}``)."""
