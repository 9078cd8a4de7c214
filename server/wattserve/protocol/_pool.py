"""The private protobuf descriptor pool that wattserve's generated protocol code registers into.

See proto/generate.py for why it is not the default pool.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
