def something_else(event, context):
    return "wrong name"
