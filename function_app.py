"""Guest Redemption Reset: the table of triggers. Each one decodes its input and calls shared/."""

import azure.functions as func

from shared.worker import handle_poison_message, handle_request_message

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("process_reset")
@app.queue_trigger(arg_name="msg", queue_name="%RESET_REQUEST_QUEUE%", connection="AzureWebJobsStorage")
async def process_reset(msg: func.QueueMessage) -> None:
    """A reset request from the queue: reset, or poison with a reason, or raise for a retry."""
    await handle_request_message(
        msg.get_body(), message_id=msg.id or "", dequeue_count=msg.dequeue_count or 1
    )


@app.function_name("record_poisoned_reset")
@app.queue_trigger(
    arg_name="msg", queue_name="%RESET_REQUEST_QUEUE%-poison", connection="AzureWebJobsStorage"
)
async def record_poisoned_reset(msg: func.QueueMessage) -> None:
    """A poisoned request: record Failed and publish the result; never raises."""
    await handle_poison_message(msg.get_body(), message_id=msg.id or "")
