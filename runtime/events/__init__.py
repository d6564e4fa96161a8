"""Translations between HTTP and the event shapes AWS hands to Lambda functions."""
