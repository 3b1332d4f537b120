"""DistributedCharge: pay a wall charger in a stream of small Lightning payments.

Shared core. The two daemons live in the top-level packages ``car`` and ``wallunit``.
"""

__version__ = "0.1.0"
