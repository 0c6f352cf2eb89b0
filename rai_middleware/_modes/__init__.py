"""The auth modes: one module per Returning.AI flow, behind one small interface (``Mode``).

The configuration maps each ``mode=`` value to its class (``_config.MODES``); nothing else
looks at the mode's name. A new flow is a new module here and one line there.
"""

from __future__ import annotations

from ._base import Mode, PageAuth, PageContext, Widget
from .access_key import AccessKeyMode
from .attributes import AttributesMode
from .iframe import IframeMode
from .proxy import ProxyMode

__all__ = [
    "AccessKeyMode",
    "AttributesMode",
    "IframeMode",
    "Mode",
    "PageAuth",
    "PageContext",
    "ProxyMode",
    "Widget",
]
