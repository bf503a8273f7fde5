"""Node credentials: only the shared secret makes one, for one room, for a short time."""

from __future__ import annotations

import time

import pytest

from engine.nodes.credential import PREFIX, CredentialError, NodeCredentials, is_node_credential
from signaling.tokens import mint

SECRET = "node-secret-" + "k" * 32


def test_a_credential_names_its_node_for_its_room() -> None:
    credentials = NodeCredentials(SECRET)
    token = credentials.mint("edge.example-1", "show")
    assert is_node_credential(token) and token.startswith(PREFIX)
    assert credentials.verify(token, "show") == "edge.example-1"


@pytest.mark.parametrize("forge", [
    lambda token: NodeCredentials("another-" + SECRET).mint("edge", "show"),  # another deployment's secret
    lambda token: token[:-1] + ("0" if token[-1] != "0" else "1"),  # a changed MAC
    lambda token: token.replace(token.split(".")[3], str(int(token.split(".")[3]) + 3600)),  # a longer life
    lambda token: PREFIX + "x.y",  # not the format
    lambda token: PREFIX + "!!!.c2hvdw.1.00",  # not base64
])
def test_anything_but_a_credential_from_the_secret_is_unauthorized(forge) -> None:
    credentials = NodeCredentials(SECRET)
    with pytest.raises(CredentialError) as refused:
        credentials.verify(forge(credentials.mint("edge", "show")), "show")
    assert refused.value.code == "unauthorized"


def test_a_viewer_token_is_no_node_credential() -> None:
    viewer = mint(SECRET, "show", "viewer", "ana")
    assert not is_node_credential(viewer)
    with pytest.raises(CredentialError):
        NodeCredentials(SECRET).verify(viewer, "show")


def test_expired_and_other_room_credentials_are_refused() -> None:
    credentials = NodeCredentials(SECRET)
    old = credentials.mint("edge", "show", ttl=10, now=time.time() - 60)
    with pytest.raises(CredentialError) as expired:
        credentials.verify(old, "show")
    assert expired.value.code == "unauthorized" and "expired" in expired.value.message
    with pytest.raises(CredentialError) as other:
        credentials.verify(credentials.mint("edge", "show"), "backstage")
    assert other.value.code == "forbidden"
    with pytest.raises(ValueError):
        credentials.mint("edge", "show", ttl=0)
