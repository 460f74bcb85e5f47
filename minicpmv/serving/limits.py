"""The server's default limits, written once: ServerSettings, ImagePolicy and the `serve` flags
read them (this module imports nothing, so the CLI can use it without the serve extra)."""

MAX_QUEUE = 16  # requests admitted at once (running or waiting); more get 429
MAX_BATCH = 1  # greedy non-streamed requests decoded together (1: exactly model.chat's answers)
MAX_STREAMS = 4  # answers advancing in turn, a token each
MAX_BODY_MB = 32.0
MAX_IMAGES = 16  # per request
MAX_IMAGE_PIXELS = 6000 * 6000  # per image, checked from its header before decoding
MAX_REQUEST_PIXELS = 64_000_000  # all images of a request: decoded RGB is 3 bytes a pixel, about 200 MB
MAX_SERVER_PIXELS = 256_000_000  # images held by all admitted requests together, about 800 MB
HEAD_TIMEOUT_S = 10.0  # to send a whole request head (and how long an idle keep-alive stays)
BODY_TIMEOUT_S = 6 * HEAD_TIMEOUT_S  # to send a whole request body
MAX_CONNECTIONS = 256
# the names a server on this machine is reached by; any other Host is a page in the user's browser
# that resolved its own name to 127.0.0.1 (DNS rebinding)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
