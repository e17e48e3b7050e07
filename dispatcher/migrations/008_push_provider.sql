-- 008: the device's push provider, from pushProvider on mdm.devices ('pushy', 'fcm').
-- NULL: the default, the first of DISPATCHER_PUSH_PROVIDER. A device naming a provider
-- that is not configured has its commands end ERROR PROVIDER_UNAVAILABLE at their push
-- (dispatcher/lanes.py), never sent through another provider.
-- (A nullable column without default: no table rewrite.)

ALTER TABLE devices ADD COLUMN push_provider text;
