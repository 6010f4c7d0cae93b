"""A streaming object-storage gateway: uploads of any size over HTTP into the local disk or S3."""

__version__ = "0.1.0"
