import logging

logger = logging.getLogger()


def handler(event, context):
    logger.info("below the level")
    logger.warning("payment slow", extra={"orderId": 7})
    try:
        1 / 0  # noqa: B018 (raises)
    except ZeroDivisionError:
        logger.exception("division failed")
    print("a plain print")
    if event.get("fail"):
        raise ValueError("bad input")
    return "ok"
