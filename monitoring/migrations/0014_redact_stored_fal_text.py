"""Redact the fal texts stored before redaction at the choke points (issue 30).

fal's error details, logs and payloads could echo our key; rows written since are
redacted as they are written (``avatarsite.log_redaction.redact``). This pass applies
the same function to what older rows hold. Webhook delivery bodies stay as received.
"""

from django.db import migrations

TRAINING_TEXT = ("error_message", "last_check_error", "logs_tail", "stuck_reason", "staff_note")


def redact_stored(apps, schema_editor):
    from avatarsite.log_redaction import redact, redact_value

    Training = apps.get_model("monitoring", "Training")
    AvatarEvent = apps.get_model("monitoring", "AvatarEvent")
    changed = []
    for training in Training.objects.only("pk", "result", *TRAINING_TEXT).iterator(chunk_size=500):
        before = [getattr(training, name) for name in TRAINING_TEXT] + [training.result]
        for name in TRAINING_TEXT:
            setattr(training, name, redact(getattr(training, name) or ""))
        training.result = redact_value(training.result)
        if [getattr(training, name) for name in TRAINING_TEXT] + [training.result] != before:
            changed.append(training)
    Training.objects.bulk_update(changed, [*TRAINING_TEXT, "result"], batch_size=500)
    changed = []
    for event in AvatarEvent.objects.only("pk", "message", "details").iterator(chunk_size=1000):
        message, details = redact(event.message or ""), redact_value(event.details)
        if (message, details) != (event.message, event.details):
            event.message, event.details = message, details
            changed.append(event)
    AvatarEvent.objects.bulk_update(changed, ["message", "details"], batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0013_self_healing")]

    operations = [migrations.RunPython(redact_stored, migrations.RunPython.noop, elidable=True)]
