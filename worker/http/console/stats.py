"""A realm's stats: its counters of the last hour and the queues (tasks.stats.collect_stats, as
`mailworker stats`), and a chart of sent and failed (dead-lettered) mail per hour over the last day."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from config.errors import MailWorkerError
from worker.http.console.access import Visitor, visitor
from worker.http.console.chart import bar_chart
from worker.http.console.views import page
from worker.http.context import context_of

router = APIRouter()

HOURS = 24


@router.get("/realms/{realm}/stats")
def stats_page(request: Request, realm: str, who: Visitor = Depends(visitor)) -> Response:  # noqa: B008
    from tasks.stats import collect_stats

    realm = who.realm(realm)
    rt = context_of(request).runtime
    hourly = rt.stats.hourly(realm, HOURS)
    series = [(hour, counts.get("sent", 0), counts.get("dead", 0)) for hour, counts in hourly]
    try:
        overview = collect_stats(rt.settings)
        queues, problem = overview["queues"], None
        last_hour = overview["last_hour"].get(realm, {})
    except MailWorkerError as error:  # the broker does not answer: the chart is still worth showing
        queues, problem, last_hour = {}, str(error), rt.stats.last_hour(realm)
    return page("stats.html", who, realm=realm, chart=bar_chart(series), last_hour=last_hour,
                queues=queues, problem=problem, sent=sum(s for _, s, _ in series),
                failed=sum(f for _, _, f in series), tab="stats")  # fmt: skip
