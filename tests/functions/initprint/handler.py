import time

print("init says hello")
INIT_AT = time.time()


def handler(event, context):
    return {"init_at": INIT_AT}
