"""The REST API's limits and server settings, in one place (the guards, the admission queue and the routes read them).
"""
from dataclasses import dataclass
from typing import TYPE_CHECKING

from captioning.decoding.options import OPTION
from captioning.vision.images import MAX_BYTES

if TYPE_CHECKING:
    pass


MAX_IMAGES_PER_REQUEST = 16


MAX_BEAM_WIDTH = OPTION["beam_width"].high       # every decoding limit is declared once (decoding_options)


MAX_REQUEST_BYTES = MAX_IMAGES_PER_REQUEST * MAX_BYTES + 2**20     # every image at the limit + form overhead


DEFAULT_CONCURRENCY = 2                          # decodes at once; more only queue for the same CPU cores


ENCODE_BATCH = 4                                 # photos through the encoder at once: its activations grow with


                                                 # the batch, CPU throughput hardly does (bench/serve_memory.py)
SPOOL_BYTES = 256 * 1024                         # an upload above this waits on disk, not in memory


TRIM_AFTER_BYTES = 32 * 2**20                    # after a request this large, hand freed heap back to the OS


BODY_DEADLINE = 600.0                            # seconds for a whole request body, however it trickles in


PUBLIC_PATHS = ("/v1/health", "/docs", "/openapi.json")     # answered without the API key (no data, no CPU)


MIN_KEY_LENGTH = 16                              # a key anyone could guess protects nothing


DOCS_ASSETS = "/docs/assets"                     # Swagger UI's files, from the swagger-ui-bundle-v2 package


@dataclass
class ServerSettings:
    """How much one server takes on, and from whom: the documented defaults of ``python -m captioning serve``."""

    max_concurrent: int = DEFAULT_CONCURRENCY   # requests decoding at once (each holds one image decoded at a time)
    max_queue: int = 8                  # requests waiting for a slot (uploading or spooled); one more is 503
    queue_timeout: float = 60.0         # seconds a request may wait for a slot before 503 + Retry-After
    rate_per_minute: float = 60.0       # per client address, token bucket (0 = no limit); 429 + Retry-After
    rate_burst: int = 20                # requests a client may send at once before the rate applies
    body_timeout: float = 30.0          # 408 when an upload sends nothing for this long (whole body: BODY_DEADLINE)
    api_key: str | None = None          # required as "Authorization: Bearer KEY" when set
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (none: no CORS headers at all)

    def __post_init__(self):
        if self.max_concurrent < 1 or self.max_queue < 0 or self.rate_burst < 1:
            raise ValueError("--max-concurrent and --rate-burst must be >= 1, --max-queue >= 0")
        if min(self.queue_timeout, self.body_timeout) <= 0 or self.rate_per_minute < 0:
            raise ValueError("--queue-timeout and --body-timeout must be > 0 seconds, --rate-limit >= 0")
