"""Drop the single-column indexes on JobRun.job_id and JobRun.instance.

Every index is written by each run's INSERT; these two add nothing:
run_job_recent starts with job_id, and running rows (the only ones looked up
by instance) are found through run_status_recent. The indexes are dropped by
name, because Django's AlterField rebuilds the whole table on SQLite.
"""

from django.db import migrations, models

COLUMNS = ("job_id", "instance")


def drop_indexes(apps, schema_editor):
    model = apps.get_model("scheduler", "JobRun")
    for column in COLUMNS:
        # On PostgreSQL also the varchar_pattern_ops ("_like") twin.
        for name in schema_editor._constraint_names(model, [column], index=True, unique=False):
            schema_editor.execute(schema_editor._delete_index_sql(model, name))


def create_indexes(apps, schema_editor):
    model = apps.get_model("scheduler", "JobRun")
    for column in COLUMNS:
        schema_editor.add_index(model, models.Index(fields=[column], name=f"run_{column}"))


class Migration(migrations.Migration):
    dependencies = [
        ("scheduler", "0003_dashboard"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="jobrun",
                    name="instance",
                    field=models.CharField(blank=True, max_length=32),
                ),
                migrations.AlterField(
                    model_name="jobrun",
                    name="job_id",
                    field=models.CharField(max_length=255, verbose_name="job"),
                ),
            ],
            database_operations=[migrations.RunPython(drop_indexes, create_indexes)],
        ),
    ]
