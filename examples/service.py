"""A plain WSGI service that starts a saga per request, with a worker beside it.

``POST /orders`` commits the saga as ``pending`` (``engine.submit``) and
answers ``202 Accepted`` at once; a :class:`~sagadsl.worker.Worker` thread in
the same process picks it up and runs it. ``GET /order-<id>`` reports its
progress; ``GET /order-<id>?wait=5`` first waits up to 5 seconds for its end
(``engine.wait``) instead of the client polling. ``POST /order-<id>/cancel``
cancels it (``engine.cancel``): at once if no worker started it yet (an
order may ask to start later, ``"start_in"`` seconds), else its executor
compensates what it did; ``409`` once it has ended. In production, run the worker as its own process instead
(``saga-admin worker --import myapp.sagas``), as many as you need.

    python examples/service.py          # serve on http://127.0.0.1:8000
    python examples/service.py --demo   # start, send two orders, print, stop
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from datetime import timedelta

from sagadsl import IdempotencyConflictError, InvalidStateError, Saga, SagaEngine, SagaError, SagaNotFoundError
from sagadsl import compensates, step
from sagadsl.worker import Worker

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass
class Order:
    order_id: str
    cents: int


class CheckoutSaga(Saga[Order], name="examples.service.checkout"):
    @step(idempotency_key="reserve-{order_id}")
    def reserve(self) -> str:
        return f"r-{self.input.order_id}"

    @compensates(reserve)
    def release(self, reservation: str) -> None:
        pass

    @step(idempotency_key="charge-{order_id}")
    def charge(self) -> str:
        if self.input.cents <= 0:
            raise ValueError("nothing to charge")
        return f"pay-{self.input.order_id}"


def make_app(engine: SagaEngine) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """The WSGI application: one saga per ``POST /orders``."""

    def reply(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(data)))])
        return [data]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if method == "POST" and path == "/orders":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            payload = json.loads(environ["wsgi.input"].read(length) or b"{}")
            order = Order(str(payload["order_id"]), int(payload["cents"]))
            # The client's Idempotency-Key makes a retried request return the same saga.
            key = environ.get("HTTP_IDEMPOTENCY_KEY") or f"order-{order.order_id}"
            saga_id = f"order-{order.order_id}"
            start_in = payload.get("start_in")
            try:
                engine.submit(CheckoutSaga, order, saga_id=saga_id, idempotency_key=key,
                              start_after=timedelta(seconds=float(start_in)) if start_in else None)
            except IdempotencyConflictError as exc:
                return reply(start_response, "409 Conflict", {"error": exc.code, "detail": str(exc)})
            return reply(start_response, "202 Accepted", {"saga_id": saga_id, "status_url": f"/{saga_id}"})
        if method == "POST" and path.startswith("/order-") and path.endswith("/cancel"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            reason = str(json.loads(environ["wsgi.input"].read(length) or b"{}").get("reason") or "")
            try:
                outcome = engine.cancel(path[1:-len("/cancel")], reason or "cancelled by the client")
            except SagaNotFoundError:
                return reply(start_response, "404 Not Found", {"error": "no such saga"})
            except InvalidStateError as exc:  # ended, compensating, or past its pivot: nothing to undo here
                return reply(start_response, "409 Conflict", {"error": exc.code, "detail": str(exc)})
            return reply(start_response, "202 Accepted", {"outcome": outcome})
        if method == "GET" and path.startswith("/order-"):
            wait = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("wait")
            if wait:
                try:
                    engine.wait(path[1:], timeout=min(float(wait[0]), 30.0))
                except (SagaError, TimeoutError):
                    pass  # failed, not found or still running: the record below says which
            record = engine.get(path[1:])
            if record is None:
                return reply(start_response, "404 Not Found", {"error": "no such saga"})
            return reply(start_response, "200 OK", {
                "saga_id": record.id, "status": record.status.value,
                "steps": {s.name: s.status.value for s in record.steps},
                "error": record.error.error if record.error else None,
            })
        return reply(start_response, "404 Not Found", {"error": f"no route for {method} {path}"})

    return app


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def call(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as refused:
        return {"http_status": refused.code, **json.load(refused)}


def serve(database_url: str, port: int, demo: bool) -> None:
    engine = SagaEngine(database_url)
    worker = Worker(engine, concurrency=4, poll_interval=0.1)
    worker_thread = threading.Thread(target=worker.run, name="saga-worker")
    worker_thread.start()
    server = make_server("127.0.0.1", port, make_app(engine), handler_class=QuietHandler)
    print(f"serving on http://127.0.0.1:{server.server_port} with a worker thread", flush=True)
    try:
        if not demo:
            server.serve_forever()
            return
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        for order_id, cents in (("A1", 1500), ("A2", 0)):
            accepted = call(base, "POST", "/orders", {"order_id": order_id, "cents": cents})
            print(f"POST /orders {order_id} -> 202 {accepted['saga_id']}")
            # The server waits for the saga's end (engine.wait), up to 10 s.
            state = call(base, "GET", f"/{accepted['saga_id']}?wait=10")
            print(f"GET /{state['saga_id']} -> {state['status']} {state['steps']}")
        again = call(base, "POST", "/orders", {"order_id": "A1", "cents": 1500})
        print(f"POST /orders A1 again -> 202 {again['saga_id']} (same saga, not run twice)")
        later = call(base, "POST", "/orders", {"order_id": "A3", "cents": 900, "start_in": 60})
        cancelled = call(base, "POST", f"/{later['saga_id']}/cancel", {"reason": "customer changed their mind"})
        state = call(base, "GET", f"/{later['saga_id']}")
        print(f"POST /{later['saga_id']}/cancel -> 202 {cancelled['outcome']}; GET -> {state['status']}")
        refused = call(base, "POST", "/order-A1/cancel", {"reason": "too late"})
        print(f"POST /order-A1/cancel -> {refused['http_status']} {refused['error']}")
    finally:
        if demo:
            server.shutdown()
        server.server_close()
        worker.stop()
        worker_thread.join()
        engine.close()
        print("worker stopped, server closed")


if __name__ == "__main__":
    demo = "--demo" in sys.argv
    if demo:
        with tempfile.TemporaryDirectory() as tmp:
            serve(f"sqlite:///{Path(tmp) / 'service.db'}", 0, demo=True)
    else:
        serve("sqlite:///service.db", 8000, demo=False)
