# The outbox and inbox tables.

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies: list[tuple[str, str]] = [
    ]

    operations = [
        migrations.CreateModel(
            name='InboxEntry',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('event_id', models.CharField(max_length=255)),
                ('handler', models.CharField(max_length=255)),
                ('event_name', models.CharField(max_length=255)),
                ('handled_at', models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
            ],
            options={
                'verbose_name': 'inbox entry',
                'verbose_name_plural': 'inbox entries',
                'db_table': 'celery_events_inbox',
                'ordering': ['-id'],
                'constraints': [models.UniqueConstraint(fields=('event_id', 'handler'), name='celery_events_inbox_once')],
            },
        ),
        migrations.CreateModel(
            name='OutboxEvent',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('event_id', models.CharField(max_length=255, unique=True)),
                ('name', models.CharField(max_length=255)),
                ('source', models.CharField(max_length=255)),
                ('time', models.CharField(max_length=40)),
                ('correlation_id', models.CharField(max_length=255)),
                ('causation_id', models.CharField(blank=True, max_length=255, null=True)),
                ('data', models.TextField()),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('sent_at', models.DateTimeField(blank=True, db_index=True, null=True)),
                ('failed_at', models.DateTimeField(blank=True, null=True)),
                ('attempts', models.PositiveIntegerField(default=0)),
                ('last_error', models.TextField(blank=True, default='')),
            ],
            options={
                'verbose_name': 'outbox event',
                'db_table': 'celery_events_outbox',
                'ordering': ['-id'],
                'indexes': [models.Index(condition=models.Q(('failed_at__isnull', True), ('sent_at__isnull', True)), fields=['id'], name='celery_events_outbox_unsent')],
            },
        ),
    ]
