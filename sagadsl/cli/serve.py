"""``saga-admin serve``: the web console (:mod:`sagadsl.web`) on uvicorn.

It binds 127.0.0.1 unless told otherwise, and refuses any other address
without an access token: the pages show every saga's input and errors, and
with ``--allow-actions`` anyone who reaches the port could retry them.
"""

from __future__ import annotations

import ipaddress

import click

from .app import CliError, cli, settings_of
from .options import import_option, import_saga_modules

__all__ = ["serve_command"]

_LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@cli.command("serve", short_help="Run the web console (needs sagadsl[web]).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but a loopback address needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--allow-actions", is_flag=True, help="Offer retry and cancel buttons (POST, CSRF-checked).")
@click.option("--token", envvar="SAGADSL_WEB_TOKEN", default=None, metavar="TOKEN",
              help="Require this token on every request [env: SAGADSL_WEB_TOKEN]: open the console "
                   "once with ?token=TOKEN, or send Authorization: Bearer TOKEN.")
@import_option
@click.pass_context
def serve_command(ctx: click.Context, host: str, port: int, allow_actions: bool, token: str | None,
                  modules: tuple[str, ...]) -> None:
    """Serve the web console: overview, saga list, each saga's page, JSON under /api/.

    \b
    Examples:
      saga-admin serve --import myapp.sagas
      SAGADSL_WEB_TOKEN=s3cret saga-admin serve --host 0.0.0.0 --allow-actions
    """
    token = token or None
    if not is_loopback(host) and token is None:
        raise click.UsageError(
            f"refusing to serve on {host} without --token: anyone who can reach it would see every "
            "saga's input and errors; pass --token TOKEN (or set SAGADSL_WEB_TOKEN), or keep the "
            "default --host 127.0.0.1", ctx)
    try:
        import uvicorn
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        from ..web import create_app
    except ImportError as exc:
        raise CliError(f"the web console needs its extra: pip install 'sagadsl[web]' ({exc})") from None
    # The saga classes, so that each saga's page can draw its step graph.
    import_saga_modules(modules)
    settings = settings_of(ctx)
    engine = settings.engine()
    app = create_app(engine, allow_actions=allow_actions, token=token)
    # Without a token only the Host names of this machine are answered, so that a web
    # page that rebinds its DNS name to 127.0.0.1 cannot read the console from a browser.
    served = (app if token is not None else
              TrustedHostMiddleware(app, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"]))
    shown_host = f"[{host}]" if ":" in host else host
    click.echo(f"sagadsl console on http://{shown_host}:{port}/ for {settings.masked_url} "
               f"({'actions enabled' if allow_actions else 'read only'}"
               f"{', token required' if token else ''}); Ctrl-C stops it", err=True)
    config = uvicorn.Config(served, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off")
    uvicorn.Server(config).run()
