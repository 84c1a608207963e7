"""transports: thin drivers that feed lmtp_core over real connections.

The blocking, asyncio and trio drivers arrive with the transports issue.
"""
