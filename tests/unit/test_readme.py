"""The README stays true: every setting documented, the two commands shown."""

from __future__ import annotations

import re
from pathlib import Path

from dispatcher.config import VARIABLES

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [name for name, _, _ in VARIABLES if f"`{name}`" not in README]
    assert not missing, f"document these settings in README.md: {missing}"


def test_the_two_commands_are_shown() -> None:
    assert "make run" in README
    assert "make test" in README


def test_the_deploy_section_shows_tls_sasl_and_verify_full() -> None:
    deploying = README.split("## Deploying", 1)[1].split("\n## ", 1)[0]
    for needed in ("DISPATCHER_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
                   "DISPATCHER_KAFKA_SASL_MECHANISM=SCRAM-SHA-512",
                   "DISPATCHER_KAFKA_SSL_CAFILE=", "DISPATCHER_KAFKA_SSL_CERTFILE=",
                   "sslmode=verify-full&sslrootcert=", "DISPATCHER_AUTO_MIGRATE=false"):
        assert needed in deploying, needed
    named = set(re.findall(r"\b(DISPATCHER_[A-Z0-9_]+)=", deploying))
    assert named <= {name for name, _, _ in VARIABLES}, named


def test_the_layout_names_every_module() -> None:
    layout = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    package = Path(__file__).resolve().parents[2] / "dispatcher"
    missing = [str(path.relative_to(package)) for path in sorted(package.rglob("*.py"))
               if path.name != "__init__.py" and path.name not in layout]
    missing += [d.name for d in package.iterdir()
                if d.is_dir() and d.name != "__pycache__" and f"{d.name}/" not in layout]
    assert not missing, f"README.md's Layout section does not name: {missing}"
