"""Media types and header names shared by client and service."""

JSON_MEDIA_TYPE = "application/json"
# A safetensors file whose `__metadata__[SAFETENSORS_REQUEST_KEY]` holds the request JSON and
# whose tensors are the hidden states, referenced from that JSON by name.
SAFETENSORS_MEDIA_TYPE = "application/vnd.r2m+safetensors"
SAFETENSORS_REQUEST_KEY = "request"
# An answer in the same format (split mode, on `Accept: SAFETENSORS_MEDIA_TYPE`): the answer JSON
# under this metadata key, its vector fields naming the file's tensors.
SAFETENSORS_RESPONSE_KEY = "response"
CHECKPOINT_MEDIA_TYPE = "application/octet-stream"

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REQUEST_ID_HEADER = "X-Request-ID"
RETRY_AFTER_HEADER = "Retry-After"
