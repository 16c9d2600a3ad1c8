"""The hand-written mail bytes read back, through Python's own parser, as what we meant."""

from __future__ import annotations

import email
from email.header import decode_header, make_header
from email.policy import default

import pytest

from tasks.messaging.mime import address_header, alternative, checked_address, text_header

TEXT = "Hallo Jürgen,\n\ndanke für Ihre Bestellung. = 100 % sicher.\n" + "lang " * 40 + "\n"
HTML = "<p>Hallo J&uuml;rgen</p>\n<p>=_journeys_ never splits this</p>\n"


def parse(data: bytes):
    return email.message_from_bytes(data, policy=default)


def build(name: str = "Jürgen Groß", subject: str = "Ihre Bestellung #1001 – danke") -> bytes:
    headers = [("From", address_header("From", "Northwind", "hello@northwind.example")),
               ("To", address_header("To", name, "jurgen@example.com")),
               ("Subject", text_header("Subject", subject)),
               ("Message-ID", "<m1@northwind.example>")]
    return alternative(headers, TEXT, HTML, "<m1@northwind.example>")


def test_headers_and_both_parts_read_back_exactly():
    data = build()
    message = parse(data)
    assert str(message["Subject"]) == "Ihre Bestellung #1001 – danke"
    assert message["To"].addresses[0].display_name == "Jürgen Groß"
    assert message["To"].addresses[0].addr_spec == "jurgen@example.com"
    text, html = (p.get_content().replace("\r\n", "\n") for p in message.iter_parts())
    assert text == TEXT and html == HTML
    assert data.isascii() and b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 78


def test_long_non_ascii_names_and_subjects_fold_into_short_encoded_words():
    name, subject = "Jürgen Groß " * 30, "Grüße aus München – Ihre Bestellung " * 12
    data = build(name=name.strip(), subject=subject.strip())
    message = parse(data)
    assert str(message["Subject"]) == subject.strip()
    # RFC 2047 6.2: white space between encoded-words is ignored (Python's address parser
    # keeps it, so decode the raw header the way the RFC says a mail client does)
    raw_to = email.message_from_bytes(data)["To"]
    assert str(make_header(decode_header(raw_to))) == f"{name.strip()} <jurgen@example.com>"
    head = data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 100  # 78 + the short address


def test_names_with_specials_are_quoted():
    message = parse(build(name='Eve "the admin", <root>'))
    assert message["To"].addresses[0].display_name == 'Eve "the admin", <root>'
    assert message["To"].addresses[0].addr_spec == "jurgen@example.com"


@pytest.mark.parametrize("address", ["no-at-sign", "a@", "@b.example", "eve@exämple.com",
                                     "a b@example.com"])
def test_an_address_that_cannot_be_written_is_refused(address):
    with pytest.raises(ValueError):
        checked_address(address)


def test_a_header_value_with_a_newline_is_refused():
    with pytest.raises(ValueError, match="would break"):
        alternative([("Subject", "hi\r\nBcc: eve@attacker.example")], "t", "h", "<m>")
