# The outbox keeps an event's CloudEvents extensions, subject and dataschema. Rows written
# before read as an event with none of them (the default fills existing rows in), and every
# new column is nullable, so a process of the previous version still inserting rows without
# them during a deploy is not refused.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('celery_events', '0001_initial'),
    ]

    operations = [
        migrations.AddField(
            model_name='outboxevent',
            name='extensions',
            field=models.JSONField(blank=True, default=dict, null=True),
        ),
        migrations.AddField(
            model_name='outboxevent',
            name='subject',
            field=models.TextField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='outboxevent',
            name='dataschema',
            field=models.TextField(blank=True, null=True),
        ),
    ]
