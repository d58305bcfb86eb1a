from django.conf import settings
from django.db import migrations, models

from config.concurrent_index import AddIndexConcurrentlyOnPostgreSQL


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction

    dependencies = [
        ("diagnostics", "0004_study_failure_code"),
        ("hospital", "0002_auditevent_append_only_trigger"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgreSQL(
            model_name="study",
            index=models.Index(fields=["hospital", "updated_at"], name="diagnostics_hospita_b33fb2_idx"),
        ),
    ]
