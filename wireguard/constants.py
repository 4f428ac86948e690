"""Protocol constants, named as in the WireGuard whitepaper (section 6) and the
kernel's ``drivers/net/wireguard/messages.h``.

Times are in seconds (floats), as every ``now`` in this package is.
"""

from __future__ import annotations

# Noise construction and identifier (whitepaper section 5.4).
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

# Sizes in bytes.
KEY_LEN = 32
HASH_LEN = 32
MAC_LEN = 16
TAG_LEN = 16
TAI64N_LEN = 12
COOKIE_LEN = 16
COOKIE_NONCE_LEN = 24

# Message types (whitepaper section 5.4.2 - 5.4.7).
MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT_DATA = 4

INITIATION_LEN = 148
RESPONSE_LEN = 92
COOKIE_REPLY_LEN = 64
TRANSPORT_HEADER_LEN = 16
TRANSPORT_MIN_LEN = TRANSPORT_HEADER_LEN + TAG_LEN
MESSAGE_PADDING_MULTIPLE = 16

# Timers and limits (whitepaper section 6.1).
REKEY_AFTER_MESSAGES = 2**60
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
REKEY_TIMEOUT_JITTER_MAX = 0.333
KEEPALIVE_TIMEOUT = 10.0
COOKIE_SECRET_MAX_AGE = 120.0
COOKIE_SECRET_LATENCY = 5.0
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18 retries

# Receive window (kernel messages.h): 8192 bits less one 64-bit word.
COUNTER_BITS_TOTAL = 8192
COUNTER_REDUNDANT_BITS = 64
COUNTER_WINDOW_SIZE = COUNTER_BITS_TOTAL - COUNTER_REDUNDANT_BITS
# A counter at or above this is never accepted, so the window can never wrap.
# messages.h: U64_MAX - COUNTER_WINDOW_SIZE - 1 (2^64 - 8130; wireguard-go's
# RejectAfterMessages is 2^64 - 2^13 - 1, lower still).
REJECT_AFTER_MESSAGES = (2**64 - 1) - COUNTER_WINDOW_SIZE - 1

# Kernel behaviour (messages.h, ratelimiter.c, device.h).
INITIATIONS_PER_SECOND = 50
MAX_STAGED_PACKETS = 128
MAX_QUEUED_INCOMING_HANDSHAKES = 4096
UNDER_LOAD_THRESHOLD = MAX_QUEUED_INCOMING_HANDSHAKES // 8
UNDER_LOAD_AFTER_TIME = 1.0
RATELIMIT_PACKETS_PER_SECOND = 20
RATELIMIT_PACKETS_BURSTABLE = 5
