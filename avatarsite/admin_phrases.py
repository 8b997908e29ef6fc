"""Django admin phrases that our Russian catalogue words again.

Django builds "Select %s to change", "Add %s", "The {name} “{obj}” was changed" from a
model's ``verbose_name``, which is in the nominative ("доставка вебхука"); Django's own
Russian puts it where Russian needs another case ("Выберите доставка вебхука") or a
masculine past tense ("был изменен" for every model). Listing the msgids here puts them
in ``locale/ru`` (``makemessages`` extracts them), and catalogues in LOCALE_PATHS take
precedence over Django's, so the admin uses wordings that hold for any model name
("Выберите объект для изменения: доставка вебхука"). Nothing imports this module.
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
