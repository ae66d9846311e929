"""Handlers of ``/v1/health``, ``/v1/jobs`` and what is under a job but its logs."""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web

from aiobatch import wire
from aiobatch.errors import JobNotFound, RuntimeClosed
from aiobatch.server.bodies import read_spec
from aiobatch.server.instance_lists import InstanceLists
from aiobatch.server.limits import Limits
from aiobatch.server.params import (
    flag_param,
    hours_param,
    instance_of,
    int_param,
    job_id_of,
    labels_param,
    query,
    state_param,
    text_param,
)
from aiobatch.server.responses import json_response
from aiobatch.server.served import ServedAPI
from aiobatch.server.streams import LongRequests
from aiobatch.states import JOB_TERMINAL, JobState

CLIENT_GONE = 499  # logged (never sent) when the peer left before the answer was ready


class JobHandlers:
    def __init__(self, api: ServedAPI, long_requests: LongRequests, limits: Limits) -> None:
        self.api = api
        self._instance_lists = InstanceLists(api, long_requests)
        self._long = long_requests
        self._limits = limits

    def routes(self) -> list[web.RouteDef]:
        job = wire.API_PREFIX + "/jobs/{job_id}"
        instance = job + "/tasks/{task}/instances/{index}"
        return [
            web.post(wire.API_PREFIX + "/jobs", self.submit),
            web.get(wire.API_PREFIX + "/jobs", self.list_jobs),
            web.get(job, self.get_job),
            web.delete(job, self.delete_job),
            web.get(job + "/wait", self.wait_job),
            *(web.post(f"{job}/{action}", self.job_action) for action in wire.JOB_ACTIONS),
            web.get(job + "/tasks/{task}", self.task_result),
            web.get(instance, self.instance),
            web.post(instance + "/stop", self.stop_instance),
            web.get(job + "/definition", self.definition),
            web.get(job + "/history", self.history),
            web.get(job + "/logview", self.logview),
        ]

    async def job_status(self, job_id: str) -> JobState:
        try:
            return self.api.cached_status(job_id)
        except JobNotFound:  # not in memory (ended long ago): ask properly
            return JobState((await self.api.job_snapshot(job_id)).status)

    async def submit(self, request: web.Request) -> web.Response:
        query(request)
        spec = await read_spec(request, self._limits.body_timeout_s)
        job = await self.api.submit(spec)
        body = wire.Submitted(
            id=job.id, name=job.name, status=job.state.value, tasks=job.get_task_names()
        )
        location = f"{wire.API_PREFIX}/jobs/{job.id}"
        return json_response(body, HTTPStatus.CREATED, {"Location": location})

    async def list_jobs(self, request: web.Request) -> web.Response:
        params = query(request, "status", "limit", "offset", repeatable=("label",))
        status = state_param(params, "status")
        labels = labels_param(request)
        # One answer is bounded however many jobs are stored; the Client pages for more.
        limit = int_param(params, "limit", 1, wire.MAX_JOBS_PAGE) or wire.DEFAULT_JOBS_PAGE
        offset = int_param(params, "offset") or 0
        jobs = await self.api.list_jobs(status=status, limit=limit, offset=offset, labels=labels)
        return json_response(jobs)

    async def get_job(self, request: web.Request) -> web.StreamResponse:
        instances = flag_param(query(request, "instances"), "instances")
        snapshot = await self.api.job_snapshot(job_id_of(request))
        if instances:
            return await self._instance_lists.job(request, snapshot)
        return json_response(snapshot)

    async def delete_job(self, request: web.Request) -> web.Response:
        stop = flag_param(query(request, "stop"), "stop")
        job_id = job_id_of(request)
        await self.api.delete_job(job_id, stop=stop)
        return json_response(wire.JobDeleted(id=job_id))

    async def wait_job(self, request: web.Request) -> web.Response:
        query(request)
        job_id = job_id_of(request)
        try:
            snapshot = await self._long.run(request, lambda: self.api.wait_job(job_id))
        except RuntimeClosed:
            if not self._long.closing:
                return web.Response(status=CLIENT_GONE)  # never sent: the peer has gone
            raise
        return json_response(snapshot)

    async def job_action(self, request: web.Request) -> web.Response:
        query(request)
        job_id, action = job_id_of(request), request.path.rsplit("/", 1)[1]
        if action == "stop":
            changed = await self.job_status(job_id) not in JOB_TERMINAL
            await self.api.stop_job(job_id)
        else:
            act = {
                "suspend": self.api.suspend_job,
                "resume": self.api.resume_job,
                "retry": self.api.retry_job,
            }[action]
            changed = await act(job_id)
        status = await self.job_status(job_id)
        done = wire.JobActionDone(id=job_id, action=action, changed=changed, status=status.value)
        return json_response(done)

    async def task_result(self, request: web.Request) -> web.StreamResponse:
        query(request)
        job_id, task = job_id_of(request), text_param(request.match_info["task"], "task")
        result = await self.api.task_result(job_id, task, instances=False)
        return await self._instance_lists.task(request, job_id, task, result)

    async def instance(self, request: web.Request) -> web.Response:
        query(request)
        return json_response(await self.api.instance_result(*instance_of(request)))

    async def stop_instance(self, request: web.Request) -> web.Response:
        query(request)
        job_id, task, index = instance_of(request)
        await self.api.stop_instance(job_id, task, index)
        return json_response(
            wire.InstanceActionDone(id=job_id, task=task, index=index, action="stop")
        )

    async def definition(self, request: web.Request) -> web.Response:
        query(request)
        return json_response(await self.api.job_definition(job_id_of(request)))

    async def history(self, request: web.Request) -> web.Response:
        params = query(request, "after", "limit")
        after = int_param(params, "after") or 0
        limit = int_param(params, "limit", 1, wire.MAX_HISTORY_PAGE) or wire.MAX_HISTORY_PAGE
        job_id = job_id_of(request)
        return json_response(await self.api.job_history(job_id, after=after, limit=limit))

    async def logview(self, request: web.Request) -> web.Response:
        hours = hours_param(query(request, "hours"))
        url = await self.api.logview_address(job_id_of(request), hours=hours)
        return json_response(wire.LogviewAddress(url=url))
