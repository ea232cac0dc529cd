"""The FastAPI application: routes, error handlers, and the model loader running beside them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI

from server.api.errors import install_error_handlers
from server.api.routes import router
from server.loader import ModelLoader
from server.model_holder import ModelHolder
from server.model_source.resolve import model_source
from server.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    holder = ModelHolder()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The loader runs beside the server so the probes answer (503 with a reason) while the model downloads.
        loader = asyncio.create_task(ModelLoader(settings, holder, model_source(settings)).run(), name="model-loader")
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            engine = holder.take()
            if engine is not None:
                await engine.close()

    app = FastAPI(title="ggufstack", version="0.1.0", lifespan=lifespan)
    app.state.holder = holder
    app.state.started = int(time.time())
    install_error_handlers(app)
    app.include_router(router)
    return app
