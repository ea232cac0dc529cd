class ModelSourceError(Exception):
    """The model cannot be obtained; the message says why in one line."""


class SourceUnavailableError(ModelSourceError):
    """A transient failure (network, auth endpoint, throttling): worth retrying as-is."""


class VerificationError(ModelSourceError):
    """The bytes are not an acceptable model (checksum mismatch, not GGUF): never load them."""
