"""The Lambda control plane over the AWS API (botocore's lambda model), so that boto3, the AWS CLI and the
other AWS SDKs manage functions with `endpoint_url` set to the gateway.

functions.py: the reads of functions, versions, aliases, concurrency and tags; configs.py: account settings,
event invoke configs, event source mappings and function URL configs; downloads.py: GetFunction's presigned
Code.Location; shapes.py: Lambent's records in AWS's JSON shapes; shared.py: errors, names and ARNs, paging and
the one mapping of Lambent's versions onto Lambda's; unsupported.py: AWS's answer for what is not built.
"""

from . import unsupported
from .functions import install

__all__ = ["install", "unsupported"]
