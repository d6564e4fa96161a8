def handler(event, context):
    if event.get("ok"):
        return {"ok": True}
    return {"values": {1, 2, 3}}
