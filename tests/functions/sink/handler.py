"""A destination: prints the record it receives, for the tests to read back from the logs."""

import json


def handler(event, context):
    print("SINK " + json.dumps(event, sort_keys=True))
    return "stored"
