"""Named leases with fencing tokens: the one node that runs a room's clock at a time (base, memory, redis, keeper)."""
