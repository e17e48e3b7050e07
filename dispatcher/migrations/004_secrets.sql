-- 004: the device's public key, to seal command secrets inside the push
-- (dispatcher/sealing.py, docs/sealed-secrets.md). PEM SubjectPublicKeyInfo, validated
-- at ingest (RSA >= 2048 bits or EC P-256); NULL: secrets go in clear through the
-- provider, unless DISPATCHER_REQUIRE_SEALED_SECRETS refuses them (NO_DEVICE_KEY).
--
-- commands.secret keeps its type; its format gains a key id ("v1:<kid>:" + nonce +
-- AES-256-GCM ciphertext, bound to the command id). Rows written before this version
-- (no key id) are read with the key whose id is "legacy" in DISPATCHER_SECRET_KEYS, or
-- end ERROR SECRET_UNREADABLE at their push (dispatcher/secretbox.py).

ALTER TABLE devices ADD COLUMN public_key text;
