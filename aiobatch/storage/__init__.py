"""Storage backends that stage inputs in and outputs out: ``file://`` (and, later, ``s3://``)."""
