# The database state store (CELERY_EVENTS["state"] = "database"): inbox leases, delivery
# records, worker processes kept alive, and dead letters. New tables only; nothing existing
# changes, so the previous version keeps running beside it during a deploy.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('celery_events', '0002_outbox_extensions'),
    ]

    operations = [
        migrations.CreateModel(
            name='DeliveryRecord',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('task_id', models.CharField(max_length=255, unique=True)),
                ('starts', models.IntegerField(default=0)),
                ('failures', models.IntegerField(default=0)),
                ('first_failed_at', models.FloatField(blank=True, null=True)),
                ('expires_at', models.DateTimeField(db_index=True)),
            ],
            options={
                'verbose_name': 'delivery record',
                'db_table': 'celery_events_delivery',
            },
        ),
        migrations.CreateModel(
            name='WorkerProcess',
            fields=[
                ('token', models.CharField(max_length=64, primary_key=True, serialize=False)),
                ('host', models.CharField(default='', max_length=255)),
                ('pid', models.IntegerField(default=0)),
                ('expires_at', models.DateTimeField(db_index=True)),
            ],
            options={
                'verbose_name': 'worker process',
                'db_table': 'celery_events_process',
            },
        ),
        migrations.CreateModel(
            name='DeadLetterRecord',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('service', models.CharField(max_length=255)),
                ('letter_id', models.CharField(max_length=255)),
                ('record', models.TextField()),
                ('score', models.FloatField()),
            ],
            options={
                'verbose_name': 'dead letter',
                'db_table': 'celery_events_dead_letter',
                'indexes': [models.Index(fields=['service', 'score'], name='celery_events_dead_by_time')],
                'constraints': [models.UniqueConstraint(fields=('service', 'letter_id'), name='celery_events_dead_letter_once')],
            },
        ),
        migrations.CreateModel(
            name='DeliveryLease',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('handler', models.CharField(max_length=255)),
                ('event_id', models.CharField(max_length=255)),
                ('state', models.CharField(default='', max_length=8)),
                ('lease', models.TextField(blank=True, default='')),
                ('process', models.CharField(blank=True, default='', max_length=64)),
                ('expires_at', models.DateTimeField(db_index=True)),
            ],
            options={
                'verbose_name': 'delivery lease',
                'db_table': 'celery_events_lease',
                'constraints': [models.UniqueConstraint(fields=('handler', 'event_id'), name='celery_events_lease_once')],
            },
        ),
    ]
