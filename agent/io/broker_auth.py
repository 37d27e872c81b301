"""The broker credentials of ``mqtt``: the password (from a file or a systemd credential, never from
YAML) and the TLS context. Both fail as a :class:`~agent.errors.ConfigError` naming the setting."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from agent.config import MqttConfig
from agent.errors import ConfigError


def read_password(cfg: MqttConfig, environ=None) -> str | None:
    """The broker password from ``password_file`` or the systemd credential; never from YAML."""
    env = os.environ if environ is None else environ
    if cfg.password_file is not None and cfg.password_credential is not None:
        raise ConfigError("mqtt: set password_file or password_credential, not both")
    path = None
    if cfg.password_credential is not None:
        creds = env.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise ConfigError(
                f"mqtt.password_credential={cfg.password_credential!r} but $CREDENTIALS_DIRECTORY is not set: run under "
                "systemd with LoadCredential=, or use password_file"
            )
        path = Path(creds) / cfg.password_credential
    elif cfg.password_file is not None:
        path = cfg.password_file
    if path is None:
        return None
    if cfg.username is None:
        raise ConfigError("mqtt: a password is configured but no username; set mqtt.username")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"mqtt password file {path} cannot be read: {exc.strerror or exc}") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ConfigError(f"mqtt password file {path} is empty")
    return password


def tls_context(cfg: MqttConfig, client_certificate: bool = True) -> ssl.SSLContext | None:
    """The broker's TLS settings; ``client_certificate=False`` leaves out the agent's own certificate
    (for connections made on someone else's behalf, such as the viewer's bridge)."""
    t = cfg.tls
    if not t.enabled:
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(t.ca_file) if t.ca_file else None)
        if t.cert_file is not None and client_certificate:
            ctx.load_cert_chain(str(t.cert_file), str(t.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt.tls: cannot load certificates ({exc}); check ca_file, cert_file and key_file") from None
    return ctx
