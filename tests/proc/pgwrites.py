"""Claims, results and next run times written on PostgreSQL, where they travel as arrays.

Run with ``manage.py shell -c "import tests.proc.pgwrites"`` on a migrated
database; test_ha.py checks the rows it leaves. The cases are the ones where
one statement over arrays could differ from one statement per row: a claim
that conflicts, a row given twice (the last one counts), a column that is
NULL in every row, and a row whose status no longer allows a result.
"""

from datetime import UTC, datetime

from django_apscheduler.models import DjangoJob

from scheduler import bulk
from scheduler.jobstore import _TimeRow
from scheduler.models import JobRun
from scheduler.runner import Runner

AT = datetime(2026, 1, 1, 3, tzinfo=UTC)
runner = Runner()
claims, results = runner.claims, runner.results

first = claims.claim_many([claims.new_row(f"pg.{i}", f"job {i}", AT) for i in range(4)])
again = claims.claim_many([claims.new_row(f"pg.{i}", f"job {i}", AT) for i in (0, 4)])
print("won", sorted(run.job_id for run in first), sorted(run.job_id for run in again))

runs = {run.job_id: run for run in first}
JobRun.objects.filter(pk=runs["pg.3"].pk).update(status=JobRun.Status.MISSED)
group = [runs[job_id] for job_id in ("pg.0", "pg.2", "pg.3")]
for run in group:
    run.status, run.finished_at, run.duration, run.output = "succeeded", AT, 0.5, "out"
given_twice = JobRun.objects.get(pk=runs["pg.0"].pk)
given_twice.status, given_twice.finished_at, given_twice.exception = "failed", AT, "second"
results.write([*group, given_twice])

unfinished = runs["pg.1"]
unfinished.status, unfinished.finished_at, unfinished.duration = "interrupted", None, None
results.write([unfinished])

DjangoJob.objects.create(id="pg.job", next_run_time=AT, job_state=b"")
paused = _TimeRow.__new__(_TimeRow)
paused.pk, paused.next_run_time = "pg.job", None
bulk.update_many(DjangoJob, [paused], ["next_run_time"])
print("next run time", DjangoJob.objects.get(id="pg.job").next_run_time)
