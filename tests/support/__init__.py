"""What the tests share, by topic; test modules import from here, never from a conftest.

Plugins (fixtures, loaded by tests/conftest.py):

* ``servers``  -- the broker, PostgreSQL, a migrated database, topics and settings per module
  (``fresh``: per test);
* ``fixtures`` -- the in-process service, its fake Pushy (``pushy.url``), a Kafka client and
  a test PKI (``pki``); for modules whose tests each run on ``fresh``, ``fresh_kafka`` and
  ``fresh_db`` (``kafka = pytest.fixture(fresh_kafka)``) and a started fake FCM
  (``serving_fcm``).

Helpers:

* ``events``    -- event factories (commands, devices, acks), ids and times;
* ``wait``      -- ``wait_for`` / ``until``: a condition with a deadline;
* ``kafka``     -- an outside client of the topics;
* ``db``        -- test databases (``PgServer``, ``create_database``), stored statuses;
* ``fakes``     -- questions to the fake Pushy (``was_pushed``, ``accepted_at_least``);
* ``service``   -- the service in-process (``running``);
* ``process``   -- `dispatcher run` as a subprocess (``Service``, ``Dispatcher``);
* ``lifecycle`` -- the one checker of status-event histories against the lifecycle;
* ``faults``    -- the fault suite's harness (plans, the device side, figures, the rig);
* ``figures``   -- measured figures, shown at the end of the run;
* ``proxy``     -- a fault-injecting TCP proxy; ``tlsutil`` -- a test PKI and TLS terminators;
* ``promserver`` -- a real Prometheus and the dashboard's queries; ``fuzz`` -- malformed inputs;
* ``api``       -- the types of the HTTP API tests' fixtures (``Token``, ``Register``).
"""
