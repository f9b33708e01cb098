"""The web console: see sagas, why they failed, and retry them from a browser.

``pip install 'sagadsl[web]'``, then ``saga-admin serve`` or mount
:func:`create_app` in an existing FastAPI/Starlette service::

    from sagadsl.web import create_app
    app.mount("/sagas", create_app(engine, allow_actions=True, token=os.environ["CONSOLE_TOKEN"]))

It is documented in ``docs/how-to/web-console.md``.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
