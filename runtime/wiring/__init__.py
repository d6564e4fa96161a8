"""What each role builds from the Config, and the deploy pipeline the gateway's three ways in share.

The layer between the state owners and executor below and the roles above: it imports no role (gateway,
asyncq.worker, streams, scheduler); each role imports the services it uses from here.
"""

from .services import Base, GatewayServices, WithAsyncQueue, WithExecutor

__all__ = ["Base", "GatewayServices", "WithAsyncQueue", "WithExecutor"]
