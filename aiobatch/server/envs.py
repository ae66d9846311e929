"""Handlers of ``/v1/envs``: the compute envs as they stand, and changes to one of them."""

from __future__ import annotations

import msgspec
from aiohttp import web

from aiobatch import wire
from aiobatch.errors import SpecError
from aiobatch.server.bodies import read_body
from aiobatch.server.limits import Limits
from aiobatch.server.params import query, text_param
from aiobatch.server.responses import bad_request, json_response
from aiobatch.server.served import ServedAPI
from aiobatch.spec_checks import msgspec_error

MAX_CHANGE_BYTES = 64 * 1024  # an env change: a slot count and some host addresses

_decoder = msgspec.json.Decoder(wire.EnvChange)


class EnvHandlers:
    def __init__(self, api: ServedAPI, limits: Limits) -> None:
        self.api = api
        self._limits = limits

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(wire.API_PREFIX + "/envs", self.list_envs),
            web.patch(wire.API_PREFIX + "/envs/{name}", self.update_env),
        ]

    async def list_envs(self, request: web.Request) -> web.Response:
        query(request)
        return json_response(await self.api.list_envs())

    async def update_env(self, request: web.Request) -> web.Response:
        query(request)
        name = text_param(request.match_info["name"], "name")
        body = await read_body(
            request, limit=MAX_CHANGE_BYTES, timeout_s=self._limits.body_timeout_s
        )
        try:
            change = _decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise SpecError([msgspec_error("$", exc)]) from None
        except msgspec.DecodeError as exc:
            raise bad_request(f"the body is not JSON: {exc}") from None
        return json_response(await self.api.update_env(name, change))
