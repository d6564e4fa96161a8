import logging


def _check(value):
    if value is None:
        raise ValueError("boom: no value")
    return value


def handler(event, context):
    logging.getLogger().error("about to fail")
    print("before the failure")
    return _check(event.get("value"))
