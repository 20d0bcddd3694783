"""The admin: jobs (run now, pause, resume) and their run history.

Nothing here runs a job inside a web request: "run now" queues a manual run
and "pause"/"resume" flag the job; the running scheduler carries both out
within about a second (see scheduler.control).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext, pgettext_lazy
from django_apscheduler import admin as _django_apscheduler_admin  # noqa: F401 - registers first
from django_apscheduler.models import DjangoJob, DjangoJobExecution

from scheduler import arguments, describe, health, requests, stats
from scheduler.models import Dashboard, Incident, Job, JobRun, Notification, SchedulerInstance
from scheduler.paginator import BoundedCountPaginator
from scheduler.requests import cancel_queued, set_paused

if TYPE_CHECKING:
    from django.urls import URLPattern
    from django_stubs_ext import StrOrPromise

    # ModelAdmin is generic in django-stubs only: Django's class takes no parameters.
    _AnyModelAdmin = admin.ModelAdmin[Any]
    _JobAdmin = admin.ModelAdmin[Job]
    _JobRunAdmin = admin.ModelAdmin[JobRun]
    _SchedulerInstanceAdmin = admin.ModelAdmin[SchedulerInstance]
    _DashboardAdmin = admin.ModelAdmin[Dashboard]
    _IncidentAdmin = admin.ModelAdmin[Incident]
    _NotificationInline = admin.TabularInline[Notification, Incident]
else:
    _AnyModelAdmin = object  # PermissionsFirst is a mixin
    _JobAdmin = _JobRunAdmin = _SchedulerInstanceAdmin = _DashboardAdmin = admin.ModelAdmin
    _IncidentAdmin = admin.ModelAdmin
    _NotificationInline = admin.TabularInline

# django-apscheduler's pages show its own history, which this app replaces.
for _model in (DjangoJob, DjangoJobExecution):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)


def _user(request: HttpRequest) -> str:
    return request.user.get_username()


class PermissionsFirst(_AnyModelAdmin):
    """Checks the permission before a view fetches or computes anything.

    Django's change, history and delete views fetch the object first (for
    jobs, with three subqueries over the runs) and only then ask about
    object-level permissions. These admins have none, so asking at the model
    level first gives the same answer, without a query and without telling a
    user who may not look whether an object exists.
    """

    def check_change_view(self, request: HttpRequest) -> None:
        if request.method == "POST":
            allowed = self.has_change_permission(request)
        else:
            allowed = self.has_view_or_change_permission(request)
        if not allowed:
            raise PermissionDenied

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        self.check_change_view(request)
        return super().change_view(request, object_id, form_url, extra_context)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        return super().history_view(request, object_id, extra_context)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_delete_permission(request):
            raise PermissionDenied
        return super().delete_view(request, object_id, extra_context)


@admin.register(Job)
class JobAdmin(PermissionsFirst, _JobAdmin):
    list_display = [
        "id",
        "name",
        "schedule_in_words",
        "raw_schedule",
        "next_run",
        "last_run",
        "last_duration",
        "state",
    ]
    list_filter = ["enabled", "paused", "kind"]
    search_fields = ["id", "name"]
    actions = ["run_now", "pause", "resume"]
    readonly_fields = [
        "id",
        "name",
        "func",
        "schedule_in_words",
        "raw_schedule",
        "timezone",
        "next_run",
        "state",
        "options",
        "synced_at",
    ]
    # One list as both: django-stubs types them as lists of different items (invariant).
    fields = readonly_fields  # type: ignore[assignment]
    change_form_template = "admin/scheduler/job/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        last = JobRun.objects.filter(job_id=OuterRef("pk")).exclude(status=JobRun.Status.QUEUED)
        last = last.order_by("-scheduled_at", "-id")
        return (
            cast("_JobAdmin", super())  # for mypy: not PermissionsFirst's ModelAdmin[Any]
            .get_queryset(request)
            .annotate(
                next_run_time=Subquery(
                    DjangoJob.objects.filter(id=OuterRef("pk")).values("next_run_time")[:1]
                ),
                last_status=Subquery(last.values("status")[:1]),
                last_duration_s=Subquery(last.values("duration")[:1]),
            )
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are declared in code

    def has_delete_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False  # removing a job from code removes it at the next start

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False  # read-only; the buttons below need their own permissions

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("scheduler.run_job")

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("scheduler.pause_job")

    @admin.display(description=_("schedule"))
    def schedule_in_words(self, job: Job) -> str:
        return describe.schedule_words(job.kind, job.schedule_fields, job.schedule)

    @admin.display(description=_("raw schedule"))
    def raw_schedule(self, job: Job) -> str:
        return format_html("<code>{}</code> ({})", job.schedule, job.timezone)

    @admin.display(description=_("next run"), ordering="next_run_time")
    def next_run(self, job: Job) -> StrOrPromise:
        if not job.enabled:
            return _("disabled")
        if job.paused:
            return _("paused")
        return describe.when(getattr(job, "next_run_time", None))

    @admin.display(description=_("last run"), ordering="last_status")
    def last_run(self, job: Job) -> str:
        status = getattr(job, "last_status", None)
        return describe.status_badge(status, JobRun.Status(status).label if status else None)

    @admin.display(description=_("last duration"))
    def last_duration(self, job: Job) -> str:
        return describe.duration_words(getattr(job, "last_duration_s", None))

    @admin.display(description=_("state"))
    def state(self, job: Job) -> str:
        label: StrOrPromise
        if not job.enabled:
            label, state = _("disabled in code"), "disabled"
        elif job.paused:
            label, state = _("paused"), "paused"
        else:
            label, state = pgettext_lazy("job state", "active"), "active"
        if job.pending_change:
            label = format_html("{} ({})", label, _("waiting for the scheduler"))
        return describe.state_badge(state, label)

    # Actions -----------------------------------------------------------------

    @admin.action(description=_("Run selected jobs now"), permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        runs = [requests.run_now(job.id, _user(request)) for job in queryset]
        self.message_user(
            request,
            ngettext(
                "Queued %(count)d run; the scheduler starts it within about a second.",
                "Queued %(count)d runs; the scheduler starts them within about a second.",
                len(runs),
            )
            % {"count": len(runs)},
            messages.SUCCESS,
        )

    @admin.action(description=_("Pause selected jobs"), permissions=["pause"])
    def pause(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        count = set_paused(queryset, True)
        self.message_user(
            request,
            ngettext("Paused %(count)d job.", "Paused %(count)d jobs.", count) % {"count": count},
            messages.SUCCESS,
        )

    @admin.action(description=_("Resume selected jobs"), permissions=["pause"])
    def resume(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        count = set_paused(queryset, False)
        self.message_user(
            request,
            ngettext("Resumed %(count)d job.", "Resumed %(count)d jobs.", count) % {"count": count},
            messages.SUCCESS,
        )

    # Buttons on a job's page ------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/run/", view(self.run_view), name=f"{prefix}_run"),
            path("<path:object_id>/pause/", view(self.pause_view), name=f"{prefix}_pause"),
            path("<path:object_id>/resume/", view(self.resume_view), name=f"{prefix}_resume"),
            *super().get_urls(),
        ]

    def _job(self, request: HttpRequest, object_id: str) -> Job:
        return get_object_or_404(self.get_queryset(request), pk=unquote(object_id))

    def _back(self, job: Job) -> HttpResponseRedirect:
        return HttpResponseRedirect(
            reverse("admin:scheduler_job_change", args=[job.pk], current_app=self.admin_site.name)
        )

    def run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        # Permission before method: a user who may not run jobs learns nothing more.
        if not self.has_run_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponse(status=405)
        job = self._job(request, object_id)
        run = requests.run_now(job.id, _user(request))
        self.message_user(
            request,
            _("Queued a run of %(job)s; the scheduler starts it within about a second.")
            % {"job": job.id},
            messages.SUCCESS,
        )
        return HttpResponseRedirect(
            reverse(
                "admin:scheduler_jobrun_change", args=[run.pk], current_app=self.admin_site.name
            )
        )

    def pause_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._set_paused_view(request, object_id, True)

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._set_paused_view(request, object_id, False)

    def _set_paused_view(self, request: HttpRequest, object_id: str, paused: bool) -> HttpResponse:
        if not self.has_pause_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponse(status=405)
        job = self._job(request, object_id)
        if (requests.pause if paused else requests.resume)(job.id):
            text = _("Paused %(job)s.") if paused else _("Resumed %(job)s.")
            self.message_user(request, text % {"job": job.id}, messages.SUCCESS)
        else:
            self.message_user(request, _("Nothing to change."), messages.WARNING)
        return self._back(job)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        self.check_change_view(request)  # before the figures below, a dozen queries
        job_id = unquote(object_id)  # the admin escapes "_" and other characters in URLs
        runs = JobRun.objects.filter(job_id=job_id)
        runs = runs.order_by("-scheduled_at", "-id")[:20]
        job = Job.objects.filter(pk=job_id).first()
        if job is None:  # Django's "does not exist" redirect; nothing to compute
            return super().change_view(request, object_id, form_url, extra_context)
        summary = stats.job_summary(job_id)
        fire_times = stats.next_fire_times(job) if job else []
        extra_context = {
            **(extra_context or {}),
            "recent_runs": runs,
            "summary": summary,
            "chart": describe.duration_chart(summary["runs"]),
            "legend": [(s, JobRun.Status(s).label) for s in JobRun.FINAL],
            "fire_times": [
                (describe.when_in(at, job.timezone), describe.when(at)) for at in fire_times
            ],
            "run_options": describe.run_options(
                job.run_options,
                job.options.get("max_instances") if isinstance(job.options, dict) else None,
            ),
            "can_run": self.has_run_permission(request),
            "can_pause": self.has_pause_permission(request),
        }
        return super().change_view(request, object_id, form_url, extra_context)


class JobFilter(admin.SimpleListFilter):
    """Jobs from the catalog: a DISTINCT over millions of runs would be slow."""

    title = _("job")
    parameter_name = "job_id__exact"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        ids = Job.objects.values_list("id", flat=True)
        return [(job_id, job_id) for job_id in ids]

    def queryset(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> QuerySet[JobRun]:
        if self.value():
            return queryset.filter(job_id=self.value())
        return queryset


class ExecutorFilter(admin.SimpleListFilter):
    """Where runs ran: the two choices are known (a DISTINCT over the runs would be slow)."""

    title = _("ran on")
    parameter_name = "executor"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, StrOrPromise]]:
        return [
            ("local", _("the scheduler")),
            ("celery", _("a Celery worker")),
            ("tasks", _("a task worker")),
            ("fleet", _("any worker fleet")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> QuerySet[JobRun]:
        if self.value() == "local":
            return queryset.filter(executor="")
        if self.value() in ("celery", "tasks"):
            return queryset.filter(executor=self.value())
        if self.value() == "fleet":
            return queryset.exclude(executor="")
        return queryset


@admin.register(JobRun)
class JobRunAdmin(PermissionsFirst, _JobRunAdmin):
    list_display = [
        "id",
        "status_badge",
        "job_id",
        "trigger",
        "attempt_text",
        "scheduled",
        "started",
        "duration_text",
        "hostname",
    ]
    list_display_links = ["id", "status_badge"]
    list_filter = ["status", JobFilter, "trigger", ExecutorFilter]
    date_hierarchy = "scheduled_at"
    search_fields = ["=job_id", "exception"]
    paginator = BoundedCountPaginator
    show_full_result_count = False
    # Facet counts would COUNT the whole table for every filter choice.
    show_facets = admin.ShowFacets.NEVER
    # History is read-only but for cancelling what has not started; the prune job
    # (jobs.prune_history) deletes old runs.
    actions = ["cancel"]
    list_per_page = 50
    change_list_template = "admin/scheduler/jobrun/change_list.html"
    change_form_template = "admin/scheduler/jobrun/change_form.html"
    fields = [
        "job_id",
        "job_name",
        "status_badge",
        "trigger",
        "attempt",
        "retry_of_link",
        "requested_by",
        "arguments_text",
        "key",
        "scheduled",
        "started",
        "finished",
        "duration_text",
        "lateness_text",
        "where",
        "hostname",
        "pid",
        "exception_text",
        "traceback_text",
        "output_text",
    ]
    # One list as both: django-stubs types them as lists of different items (invariant).
    readonly_fields = fields  # type: ignore[assignment]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: JobRun | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: JobRun | None = None) -> bool:
        return False

    def has_run_permission(self, request: HttpRequest) -> bool:
        # Cancelling a queued run undoes a "run now": the same permission.
        return request.user.has_perm("scheduler.run_job")

    def _run_url(self, run_id: int) -> str:
        return reverse(
            "admin:scheduler_jobrun_change", args=[run_id], current_app=self.admin_site.name
        )

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, run: JobRun) -> str:
        return describe.run_status(run)

    @admin.display(description=_("attempt"))
    def attempt_text(self, run: JobRun) -> str:
        if run.retry_of is None:
            return ""  # a first attempt, as nearly every run is
        return format_html(
            '{} (<a href="{}">#{}</a>)',
            _("attempt %(n)d") % {"n": run.attempt},
            self._run_url(run.retry_of),
            run.retry_of,
        )

    @admin.display(description=_("ran on"))
    def where(self, run: JobRun) -> str:
        if run.executor == "celery":
            waiting = run.status == JobRun.Status.QUEUED
            return format_html(
                "{} ({} <code>scheduler-run-{}</code>)",
                _("waiting for a Celery worker") if waiting else _("a Celery worker"),
                _("task id"),
                run.pk,
            )
        if run.executor == "tasks":
            waiting = run.status == JobRun.Status.QUEUED
            return str(_("waiting for a task worker") if waiting else _("a task worker"))
        return str(_("the scheduler")) if run.hostname else "—"

    @admin.display(description=_("arguments"))
    def arguments_text(self, run: JobRun) -> str:
        if not run.arguments:
            return "—"
        return format_html("<code>{}{}</code>", run.job_id, arguments.describe(run.arguments))

    @admin.display(description=_("retry of"))
    def retry_of_link(self, run: JobRun) -> str:
        if run.retry_of is None:
            return "—"
        return format_html('<a href="{}">#{}</a>', self._run_url(run.retry_of), run.retry_of)

    @admin.display(description=_("scheduled at"), ordering="scheduled_at")
    def scheduled(self, run: JobRun) -> str:
        return describe.when(run.scheduled_at)

    @admin.display(description=_("started at"), ordering="started_at")
    def started(self, run: JobRun) -> str:
        return describe.when(run.started_at)

    @admin.display(description=_("finished at"))
    def finished(self, run: JobRun) -> str:
        return describe.when(run.finished_at)

    @admin.display(description=_("duration"), ordering="duration")
    def duration_text(self, run: JobRun) -> str:
        return describe.duration_words(run.duration)

    @admin.display(description=_("lateness"))
    def lateness_text(self, run: JobRun) -> str:
        return describe.duration_words(run.lateness)

    @admin.display(description=_("exception"))
    def exception_text(self, run: JobRun) -> str:
        return _pre(run.exception)

    @admin.display(description=_("traceback"))
    def traceback_text(self, run: JobRun) -> str:
        return _pre(run.traceback)

    @admin.display(description=_("output"))
    def output_text(self, run: JobRun) -> str:
        return _pre(run.output)

    # Cancelling queued runs ------------------------------------------------------------

    @admin.action(description=_("Cancel selected queued runs"), permissions=["run"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[JobRun]) -> None:
        cancelled = cancel_queued(queryset, _cancel_reason(request))
        if cancelled:
            self.message_user(
                request,
                ngettext(
                    "Cancelled %(count)d queued run.", "Cancelled %(count)d queued runs.", cancelled
                )
                % {"count": cancelled},
                messages.SUCCESS,
            )
        if request.POST.get("select_across") == "1":
            # Every run the list's filters match: most were never queued, no count to give.
            if not cancelled:
                self.message_user(request, _("No queued run to cancel."), messages.WARNING)
            return
        left = len(request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)) - cancelled
        if left > 0:
            self.message_user(
                request,
                ngettext(
                    "%(count)d selected run was not queued (it had started or ended): "
                    "left as it is.",
                    "%(count)d selected runs were not queued (they had started or ended): "
                    "left as they are.",
                    left,
                )
                % {"count": left},
                messages.WARNING,
            )

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        view = self.admin_site.admin_view(self.cancel_view)
        return [
            path("<path:object_id>/cancel/", view, name=f"{prefix}_cancel"),
            *super().get_urls(),
        ]

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        # Permission before method, as the job's buttons: a user who may not learns nothing.
        if not self.has_run_permission(request):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponse(status=405)
        run = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404
        if cancel_queued(JobRun.objects.filter(pk=run.pk), _cancel_reason(request)):
            self.message_user(
                request, _("Cancelled run #%(id)d.") % {"id": run.pk}, messages.SUCCESS
            )
        else:
            self.message_user(
                request,
                _("Run #%(id)d was not queued any more (it had started or ended): left as it is.")
                % {"id": run.pk},
                messages.WARNING,
            )
        return HttpResponseRedirect(self._run_url(run.pk))

    # The run's page ----------------------------------------------------------------------

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: JobRun | None = None,
    ) -> HttpResponse:
        if obj is not None:
            context.update(
                attempts=_attempts(obj),
                can_cancel=self.has_run_permission(request),
                refresh=_refresh_seconds(obj),
            )
        return super().render_change_form(request, context, add, change, form_url, obj)


def _cancel_reason(request: HttpRequest) -> str:
    # Stored, so in English like every other reason the history holds.
    return f"Skipped: cancelled from the admin by {_user(request)}."


def _attempts(run: JobRun) -> list[JobRun]:
    """Every attempt of the run ``run`` is an attempt of, first first; [] if it has no other.

    The later ones through run_attempts; the first by its id (it may be pruned already).
    """
    first_id = run.retry_of or run.pk
    later = list(JobRun.objects.filter(retry_of=first_id).order_by("attempt", "id"))
    if not later:
        return []
    first = [run] if run.pk == first_id else list(JobRun.objects.filter(pk=first_id))
    return first + later


def _refresh_seconds(run: JobRun) -> int | None:
    """How often the run's page reloads to follow it; None once it has ended.

    Every second while it runs or is about to; a retry due later is looked at again
    when it is due (at most every 30 s), not every second for nothing.
    """
    if run.status == JobRun.Status.RUNNING:
        return 1
    if run.status != JobRun.Status.QUEUED:
        return None
    wait = (run.scheduled_at - timezone.now()).total_seconds()
    return int(min(max(wait, 1), 30))


def _pre(text: str) -> str:
    if not text:
        return "—"
    return format_html('<pre style="white-space:pre-wrap;margin:0">{}</pre>', text)


@admin.register(SchedulerInstance)
class SchedulerInstanceAdmin(PermissionsFirst, _SchedulerInstanceAdmin):
    list_display = ["__str__", "role_badge", "started", "heartbeat", "version", "id"]
    list_filter = ["role", "hostname"]
    # Each process owns its row. Deleting a live one would make the active scheduler
    # take that process's running runs for orphans and mark them interrupted while
    # they still run (lease.recover_orphans). No delete, hence no bulk actions at all.
    actions = None
    fields = ["id", "hostname", "pid", "role_badge", "version", "started", "heartbeat", "stopped"]
    readonly_fields = fields  # type: ignore[assignment]  # (as in JobRunAdmin)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: SchedulerInstance | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: SchedulerInstance | None = None
    ) -> bool:
        return False

    @admin.display(description=_("role"), ordering="role")
    def role_badge(self, instance: SchedulerInstance) -> str:
        return describe.state_badge(instance.role, instance.get_role_display())

    @admin.display(description=_("started at"), ordering="started_at")
    def started(self, instance: SchedulerInstance) -> str:
        return describe.when(instance.started_at)

    @admin.display(description=_("last heartbeat"), ordering="heartbeat_at")
    def heartbeat(self, instance: SchedulerInstance) -> str:
        age = (timezone.now() - instance.heartbeat_at).total_seconds()
        return _("%(when)s (%(age)s ago)") % {
            "when": describe.when(instance.heartbeat_at),
            "age": describe.duration_words(age),
        }

    @admin.display(description=_("stopped at"))
    def stopped(self, instance: SchedulerInstance) -> str:
        return describe.when(instance.stopped_at)


class OpenFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "open"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, StrOrPromise]]:
        return [("1", _("open")), ("0", _("resolved"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Incident]) -> QuerySet[Incident]:
        if self.value() in ("0", "1"):
            return queryset.filter(resolved_at__isnull=self.value() == "1")
        return queryset


class NotificationInline(_NotificationInline):
    model = Notification
    extra = 0
    can_delete = False
    fields = ["notifier", "state", "sent", "attempts", "last_error"]
    readonly_fields = fields  # type: ignore[assignment]  # (as in JobRunAdmin)

    def has_add_permission(self, request: HttpRequest, obj: Incident | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Incident | None = None) -> bool:
        return False

    @admin.display(description=_("sent at"))
    def sent(self, notification: Notification) -> str:
        if notification.sent_at is not None:
            return describe.when(notification.sent_at)
        if notification.given_up_at is not None:
            return str(
                _("given up at %(when)s") % {"when": describe.when(notification.given_up_at)}
            )
        return str(_("next try at %(when)s") % {"when": describe.when(notification.next_try_at)})


@admin.register(Incident)
class IncidentAdmin(PermissionsFirst, _IncidentAdmin):
    """What broke and when it was over, as the active scheduler found it (read-only)."""

    list_display = ["title", "state_badge", "kind", "job_id", "opened", "resolved", "occurrences"]
    list_filter = [OpenFilter, "kind"]
    search_fields = ["=job_id", "title"]
    actions = None
    inlines = [NotificationInline]
    fields = [
        "title",
        "state_badge",
        "kind",
        "job_id",
        "opened",
        "last_seen",
        "resolved",
        "occurrences",
        "run_link",
        "detail_text",
    ]
    readonly_fields = fields  # type: ignore[assignment]  # (as in JobRunAdmin)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Incident | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Incident | None = None) -> bool:
        return False

    @admin.display(description=_("state"))
    def state_badge(self, incident: Incident) -> str:
        if incident.is_open:
            return describe.status_badge("failed", _("open"))
        return describe.status_badge("succeeded", _("resolved"))

    @admin.display(description=_("opened at"), ordering="opened_at")
    def opened(self, incident: Incident) -> str:
        return describe.when(incident.opened_at)

    @admin.display(description=_("last seen at"))
    def last_seen(self, incident: Incident) -> str:
        return describe.when(incident.last_seen_at)

    @admin.display(description=_("resolved at"))
    def resolved(self, incident: Incident) -> str:
        return describe.when(incident.resolved_at)

    @admin.display(description=_("run"))
    def run_link(self, incident: Incident) -> str:
        links = [
            format_html(
                '<a href="{}">#{}</a>',
                reverse(
                    "admin:scheduler_jobrun_change", args=[pk], current_app=self.admin_site.name
                ),
                pk,
            )
            for pk in (incident.run_id, incident.resolved_by)
            if pk is not None
        ]
        return format_html_join(" → ", "{}", ((link,) for link in links)) if links else "—"

    @admin.display(description=_("detail"))
    def detail_text(self, incident: Incident) -> str:
        return _pre(incident.detail)


@admin.register(Dashboard)
class DashboardAdmin(_DashboardAdmin):
    """Is the scheduler alive, what is failing, what ran, what comes next."""

    def has_view_permission(self, request: HttpRequest, obj: Dashboard | None = None) -> bool:
        return request.user.has_perm("scheduler.view_jobrun")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Dashboard | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Dashboard | None = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.changelist_view)
        return [path("", view, name="scheduler_dashboard_changelist")]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        health_now = health.for_staff()
        figures: dict[str, Any] = {}
        # When the database cannot be read, the page says so rather than failing on
        # the figures, which come from the same database.
        if not health_now.get("error"):
            by_status = stats.last_day_by_status(now)
            figures = {
                "by_status": [
                    (status, JobRun.Status(status).label, count)
                    for status, count in by_status.items()
                ],
                "total_day": sum(by_status.values()),
                "queued": stats.queued_by_trigger(now),
                "failing": stats.failing_jobs(),
                "incidents": stats.open_incidents(),
                "upcoming": stats.next_runs(),
                "from_code": [
                    {**row, "call": arguments.describe(row["arguments"])}
                    for row in stats.next_queued(now)
                ],
                "slowest": stats.slowest_jobs(now),
            }
        context = {
            **self.admin_site.each_context(request),
            "title": _("Scheduler dashboard"),
            "opts": self.opts,
            "health": health_now,
            **figures,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/scheduler/dashboard.html", context)
