"""app.keep_route_versions: FastAPI stops re-walking the route tree per request, and a router
that gains a route afterwards still serves it."""

import httpx
from fastapi import APIRouter, FastAPI

from vmplane.app import keep_route_versions


async def test_a_route_added_after_keeping_versions_is_served() -> None:
    inner = APIRouter()

    @inner.get("/a")
    async def a() -> dict[str, int]:
        return {"a": 1}

    outer = APIRouter(prefix="/x")
    outer.include_router(inner)
    app = FastAPI()
    app.include_router(outer)
    walks = 0
    compute = APIRouter._get_routes_version

    def counted(self: APIRouter, seen: set[int] | None = None) -> int:
        nonlocal walks
        walks += 1
        return compute(self, seen)

    APIRouter._get_routes_version = counted  # type: ignore[method-assign]
    try:
        keep_route_versions(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            walks = 0
            assert (await client.get("/x/a")).json() == {"a": 1}
            assert walks == 0  # answered from the kept versions

            @inner.get("/b")
            async def b() -> dict[str, int]:
                return {"b": 2}

            assert (await client.get("/x/b")).json() == {"b": 2}
            assert walks > 0  # the changed router was walked again
    finally:
        APIRouter._get_routes_version = compute  # type: ignore[method-assign]
