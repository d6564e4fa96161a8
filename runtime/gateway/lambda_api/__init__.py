"""The Lambda control plane over the AWS API (botocore's lambda model), so that boto3, the AWS CLI and the
other AWS SDKs manage functions with `endpoint_url` set to the gateway.

functions.py: the reads of functions, versions, aliases and concurrency; changes.py: the writes of functions,
versions and aliases; settings.py: the writes of concurrency and event invoke configs; configs.py: account
settings and the reads of event invoke configs; sources.py: event source mappings; urls.py: function URL configs;
tags.py: tags; downloads.py: GetFunction's presigned Code.Location; shapes.py: Lambent's records in AWS's JSON
shapes; shared.py: errors, names and ARNs, request bodies, paging and changing $LATEST; unsupported.py: AWS's
answer for what is not built.
"""

from . import unsupported
from .functions import install

__all__ = ["install", "unsupported"]
