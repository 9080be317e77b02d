"""Host names the server answers to, pages that may post to it, and the proxies that may name the client."""

import pytest

from webui.hosts import HostPolicy, host_name, parse_proxy


def test_host_names_are_read_like_a_browser_writes_them():
    assert host_name("127.0.0.1:7860") == "127.0.0.1"
    assert host_name("[::1]:7860") == "::1"
    assert host_name("LocalHost") == "localhost"
    assert host_name("http://example.org:8080") == "example.org"
    assert host_name("a:b:c") is None and host_name("") is None


def test_a_loopback_server_answers_to_loopback_names_only():
    policy = HostPolicy.build("127.0.0.1")
    for host in ("127.0.0.1:7860", "localhost:7860", "[::1]:7860", "LOCALHOST"):
        assert policy.host_allowed(host), host
    # A DNS name rebound to 127.0.0.1 still carries its own name.
    for host in ("attacker.example:7860", "127.0.0.1.attacker.example", "", None, "x:y:z"):
        assert not policy.host_allowed(host), host


def test_named_hosts_and_share_links():
    policy = HostPolicy.build("10.1.2.3", ["chat.example.org"])
    assert policy.host_allowed("10.1.2.3:7860") and policy.host_allowed("Chat.Example.Org")
    assert not policy.host_allowed("other.example.org")
    assert not policy.host_allowed("abc.gradio.live")
    assert HostPolicy.build("127.0.0.1", share=True).host_allowed("abc.gradio.live")
    # Bound to every interface and told no name: any name (a password is required off loopback anyway).
    assert HostPolicy.build("0.0.0.0").host_allowed("192.168.1.5:7860")
    assert not HostPolicy.build("0.0.0.0", ["gpu.example.org"]).host_allowed("192.168.1.5:7860")


def test_only_the_ui_itself_may_post():
    policy = HostPolicy.build("127.0.0.1", ["chat.example.org"])
    assert policy.origin_allowed(None, "127.0.0.1:7860")  # not sent by a page (API clients)
    assert policy.origin_allowed("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert policy.origin_allowed("https://chat.example.org", "127.0.0.1:7860")  # behind a proxy that rewrites Host
    for origin in ("http://attacker.example", "http://localhost:8080", "null", "file://", "http://127.0.0.1:7861"):
        assert not policy.origin_allowed(origin, "127.0.0.1:7860"), origin


def test_trusted_proxies_are_addresses_or_networks():
    assert parse_proxy("127.0.0.1") == "127.0.0.1"
    assert parse_proxy("10.0.0.0/8") == "10.0.0.0/8"
    assert parse_proxy("::1") == "::1"
    with pytest.raises(ValueError):
        parse_proxy("proxy.example.org")
