"""The HTTP layer: the application and its routes (:mod:`.app`), health (:mod:`.health`),
the two API dialects (:mod:`.aosp`, :mod:`.amapi`), the plumbing they share
(:mod:`.common`, :mod:`.commands`) and the OpenAPI document (:mod:`.openapi`)."""
