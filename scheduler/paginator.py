"""The runs list's paginator: it never counts the whole history."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django.core.paginator import EmptyPage, PageNotAnInteger, Paginator
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _

COUNT_LIMIT = 10_000

if TYPE_CHECKING:
    from django.core.paginator import Page
    from django.db.models import QuerySet

    _Paginator = Paginator[Any]  # generic in django-stubs only: Django's takes no parameters
else:
    _Paginator = Paginator


class BoundedCountPaginator(_Paginator):
    """Counts at most COUNT_LIMIT + 1 rows, so a page never waits on a full-table COUNT.

    Past the limit the page links stop at the limit, but any page number
    still works (``?p=N``); filters and the date hierarchy narrow the list.
    """

    @cached_property
    def count(self) -> int:
        runs = cast("QuerySet[Any]", self.object_list)  # the admin paginates a queryset
        return runs.order_by()[: COUNT_LIMIT + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > COUNT_LIMIT

    def validate_number(self, number: int | float | str) -> int:
        if not self.capped:
            return super().validate_number(number)
        try:
            number = int(number)
        except (TypeError, ValueError):
            raise PageNotAnInteger(_("That page number is not an integer")) from None
        if number < 1:
            raise EmptyPage(_("That page number is less than 1"))
        return number

    def page(self, number: int | str) -> Page[Any]:
        if not self.capped:
            return super().page(number)
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        # Django's Paginator._get_page hook is missing from django-stubs.
        return self._get_page(  # type: ignore[attr-defined, no-any-return]
            self.object_list[bottom : bottom + self.per_page], number, self
        )
