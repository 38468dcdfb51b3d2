"""Start-up warnings: a config that loads but is weaker than it may look."""

from __future__ import annotations

import uuid

import pytest

from vtrio.config import model
from vtrio.config.advice import advisories

USER = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811")


def config(
    *,
    inbound_users: tuple[model.VMessUser, ...] = (model.VMessUser(USER),),
    aead_forced: bool = False,
    address: str = "vpn.example",
    user: model.VMessUser = model.VMessUser(USER),  # noqa: B008
    tls: bool = False,
) -> model.Config:
    stream = model.StreamSettings(security="tls" if tls else "none")
    return model.Config(
        inbounds=(
            model.Inbound(
                tag="in",
                protocol="vmess",
                listen="0.0.0.0",
                ports=(10086,),
                settings=model.VMessInboundSettings(
                    users=inbound_users, aead_forced=aead_forced
                ),
            ),
        ),
        outbounds=(
            model.Outbound(
                "proxy",
                "vmess",
                model.VMessOutboundSettings(
                    (model.VMessServer(address, 443, (user,)),)
                ),
                stream=stream,
            ),
        ),
    )


def test_an_aead_config_with_encryption_has_nothing_to_say() -> None:
    assert advisories(config()) == []


def test_legacy_users_are_named_unless_aead_is_forced() -> None:
    legacy = (model.VMessUser(USER), model.VMessUser(uuid.uuid4(), alter_id=4))
    (line,) = advisories(config(inbound_users=legacy))
    assert line.startswith("inbound in: 1 user(s) with alterId > 0")
    assert advisories(config(inbound_users=legacy, aead_forced=True)) == []
    (line,) = advisories(config(user=model.VMessUser(USER, alter_id=1)))
    assert line.startswith("outbound proxy (vpn.example:443): alterId > 0")


@pytest.mark.parametrize("security", [model.Security.NONE, model.Security.ZERO])
@pytest.mark.parametrize(
    ("address", "tls", "warned"),
    [
        ("vpn.example", False, True),
        ("8.8.8.8", False, True),
        ("vpn.example", True, False),
        ("127.0.0.1", False, False),
        ("10.1.2.3", False, False),
        ("localhost", False, False),
    ],
)
def test_a_clear_body_over_plain_tcp_to_a_remote_server_is_named(
    security: model.Security, address: str, tls: bool, warned: bool
) -> None:
    user = model.VMessUser(USER, security=security)
    found = advisories(config(address=address, user=user, tls=tls))
    assert found == (
        [
            f"outbound proxy ({address}:443): security {security.value} without TLS"
            " sends the traffic unencrypted"
        ]
        if warned
        else []
    )
