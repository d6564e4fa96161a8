# A Bedrock AgentCore gateway tool, written as AWS's AgentCore developer guide shows one
# ("Lambda function targets": the tool name arrives in the client context, the tool input as the event).
def lambda_handler(event, context):
    toolName = context.client_context.custom["bedrockAgentCoreToolName"]
    print(context.client_context)
    print(event)
    print(f"Original toolName: , {toolName}")
    delimiter = "___"
    if delimiter in toolName:
        toolName = toolName[toolName.index(delimiter) + len(delimiter):]
    print(f"Converted toolName: , {toolName}")
    if toolName == "get_order_tool":
        return {"statusCode": 200, "body": f"Order Id {event['orderId']} is in shipped status"}
    return {"statusCode": 200, "body": f"Updated the order details successfully for id {event['orderId']}"}
