"""The ground floor: tiny modules every other part of nadir may use, importing nothing of nadir's
above them (errors, URL redaction, the name rule, containment, hashing, the config schema,
geometry, HTML tables, the stderr tee, named inputs, the frame every job runs in)."""
