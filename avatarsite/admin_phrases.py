"""Django admin phrases built from a model's name, worded again in our Russian catalogue.

Django's Russian puts a nominative ``verbose_name`` where Russian needs another case;
listing the msgids here puts wordings that hold for any model name in ``locale/ru``,
which takes precedence over Django's. Nothing imports this module.
"""

from __future__ import annotations

from django.utils.translation import gettext_noop

ADMIN_PHRASES = (
    gettext_noop("Select %s"),
    gettext_noop("Select %s to change"),
    gettext_noop("Select %s to view"),
    gettext_noop("Add %s"),
    gettext_noop("Change %s"),
    gettext_noop("View %s"),
    gettext_noop("Add %(name)s"),
    gettext_noop("The {name} “{obj}” was added successfully."),
    gettext_noop("The {name} “{obj}” was changed successfully."),
    gettext_noop("The {name} “{obj}” was changed successfully. You may edit it again below."),
    gettext_noop("The %(name)s “%(obj)s” was deleted successfully."),
)
