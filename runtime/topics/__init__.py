"""SNS-style topics: subscriptions, filter policies, and the fan-out of a publish to asynchronous invocations."""
