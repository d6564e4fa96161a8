import time


def handler(event, context):
    print("going to sleep", flush=True)
    time.sleep(event.get("sleep_s", 0))
    return {"slept": event.get("sleep_s", 0), "remaining_ms": context.get_remaining_time_in_millis()}
