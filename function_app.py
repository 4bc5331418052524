"""Guest Redemption Reset: the table of triggers. Each one decodes its input and calls shared/."""

import azure.functions as func

from shared.api import handlers as api
from shared.bulk.job import run_bulk_job
from shared.reset.backlog import observe_backlog
from shared.reset.callbacks import handle_callback_message
from shared.reset.retention import run_retention
from shared.reset.sweeper import sweep
from shared.reset.worker import handle_poison_message, handle_request_message

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]  # others get a 405 problem with Allow


async def _http(handler: api.Handler, req: func.HttpRequest) -> func.HttpResponse:
    request = api.ApiRequest(
        method=req.method,
        url=req.url,
        body=req.get_body(),
        headers=dict(req.headers),
        params=dict(req.params),
        route_params=dict(req.route_params),
    )
    response = await handler(request)
    return func.HttpResponse(
        response.body_bytes(), status_code=response.status, headers=response.headers, mimetype=response.content_type
    )


@app.function_name("process_reset")
@app.queue_trigger(arg_name="msg", queue_name="%RESET_REQUEST_QUEUE%", connection="AzureWebJobsStorage")
async def process_reset(msg: func.QueueMessage) -> None:
    """A reset request from the queue: reset, hold, poison with a reason, or raise for a retry."""
    await handle_request_message(
        msg.get_body(), message_id=msg.id or "", dequeue_count=msg.dequeue_count or 1, inserted_at=msg.insertion_time
    )


@app.function_name("record_poisoned_reset")
@app.queue_trigger(arg_name="msg", queue_name="%RESET_REQUEST_QUEUE%-poison", connection="AzureWebJobsStorage")
async def record_poisoned_reset(msg: func.QueueMessage) -> None:
    """A poisoned request: record Failed and publish the result; raises only for a storage retry."""
    await handle_poison_message(msg.get_body(), message_id=msg.id or "", dequeue_count=msg.dequeue_count or 1)


@app.function_name("deliver_callback")
@app.queue_trigger(arg_name="msg", queue_name="%RESET_CALLBACK_QUEUE%", connection="AzureWebJobsStorage")
async def deliver_callback(msg: func.QueueMessage) -> None:
    """POST a finished request's outcome to its callbackUrl, off the reset's critical path."""
    await handle_callback_message(msg.get_body(), message_id=msg.id or "", dequeue_count=msg.dequeue_count or 1)


@app.function_name("sweep_stalled_requests")
@app.timer_trigger(arg_name="timer", schedule="%SWEEP_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def sweep_stalled_requests(timer: func.TimerRequest) -> None:
    """Requests stalled past their claim plus SWEEP_GRACE_SECONDS go back on the queue (schedule in UTC)."""
    await sweep()


@app.function_name("bulk_reset_job")
@app.timer_trigger(arg_name="timer", schedule="%BULK_SCHEDULE%", run_on_startup=False, use_monitor=True)
async def bulk_reset_job(timer: func.TimerRequest) -> None:
    """CSV files in <BULK_CONTAINER>/incoming/: validate, enqueue, report, move (schedule in UTC)."""
    await run_bulk_job()


@app.function_name("purge_finished_resets")
@app.timer_trigger(arg_name="timer", schedule="0 17 * * * *", run_on_startup=False, use_monitor=True)
async def purge_finished_resets(timer: func.TimerRequest) -> None:
    """Hourly: delete records finished RETENTION_DAYS ago, erase redeem URLs nobody fetched in REDEEM_URL_HOURS."""
    await run_retention()


@app.function_name("observe_backlog")
@app.timer_trigger(arg_name="timer", schedule="0 */5 * * * *", run_on_startup=False, use_monitor=False)
async def observe_backlog_job(timer: func.TimerRequest) -> None:
    """Every five minutes: poison depth and stuck requests, as metrics for the workbook and alerts."""
    await observe_backlog()


@app.route(route="resets", methods=ALL_METHODS)
async def submit_resets(req: func.HttpRequest) -> func.HttpResponse:
    return await _http(api.submit_resets, req)


@app.route(route="resets/{requestId}", methods=ALL_METHODS)
async def get_reset(req: func.HttpRequest) -> func.HttpResponse:
    return await _http(api.get_reset, req)


@app.route(route="health", methods=ALL_METHODS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    return await _http(api.health, req)


@app.route(route="openapi.json", methods=ALL_METHODS, auth_level=func.AuthLevel.ANONYMOUS)
async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return await _http(api.openapi, req)


@app.route(route="poison", methods=ALL_METHODS, auth_level=func.AuthLevel.ADMIN)
async def list_poison(req: func.HttpRequest) -> func.HttpResponse:
    return await _http(api.list_poison, req)


@app.route(route="poison/replay", methods=ALL_METHODS, auth_level=func.AuthLevel.ADMIN)
async def replay_poison(req: func.HttpRequest) -> func.HttpResponse:
    return await _http(api.replay_poison, req)


@app.route(route="breaker", methods=ALL_METHODS, auth_level=func.AuthLevel.ADMIN)
async def breaker_status(req: func.HttpRequest) -> func.HttpResponse:
    return await _http(api.breaker_status, req)


@app.route(route="breaker/close", methods=ALL_METHODS, auth_level=func.AuthLevel.ADMIN)
async def close_breaker(req: func.HttpRequest) -> func.HttpResponse:
    return await _http(api.close_breaker, req)
