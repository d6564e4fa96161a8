import os
import signal


def handler(event, context):
    how = event.get("how", "exit")
    if how == "exit":
        os._exit(3)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "sysexit":
        raise SystemExit(4)
    return {"pid": os.getpid()}
