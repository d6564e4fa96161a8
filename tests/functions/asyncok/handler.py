def handler(event, context):
    return {"doubled": event["n"] * 2}
