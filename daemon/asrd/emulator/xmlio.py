"""XML in and out: safe parsing of untrusted request bodies and response rendering (xmltodict)."""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import ParseError

import defusedxml
import defusedxml.ElementTree
import xmltodict

XML_DECL = b'<?xml version="1.0" encoding="utf-8"?>\n'


class MalformedXML(ValueError):
    """The body is not well-formed XML, or uses DTDs/entities (refused)."""


def parse(body: bytes) -> tuple[str, Any]:
    """Return ``(root tag, content)``; leaves are strings, empty elements None."""
    try:
        # defusedxml first: it rejects DTDs, entity declarations and external references
        # before xmltodict (expat) ever sees the document.
        defusedxml.ElementTree.fromstring(body, forbid_dtd=True)
        doc = xmltodict.parse(body, disable_entities=True, xml_attribs=False)
    except (ParseError, defusedxml.DefusedXmlException, ValueError) as exc:
        raise MalformedXML(str(exc)) from exc
    if not isinstance(doc, dict) or len(doc) != 1:
        raise MalformedXML("no single root element")
    ((root, content),) = doc.items()
    return str(root), content


def fragment(tag: str, content: Any) -> bytes:
    """One element (no declaration); None → ``<Tag/>``, lists → repeated elements."""
    text: str = xmltodict.unparse({tag: content}, full_document=False, short_empty_elements=True)
    return text.encode("utf-8")


def document(root: str, content: Any) -> bytes:
    """A complete document with declaration."""
    return XML_DECL + fragment(root, content)


def wrap(root: str, inner: bytes) -> bytes:
    """A document whose children are already-rendered fragments (cached JobsDetail)."""
    return XML_DECL + b"<" + root.encode() + b">" + inner + b"</" + root.encode() + b">"


def error_body(code: str, message: str, resource: str, request_id: str) -> bytes:
    """COS/CI error document; all four fields non-empty or the SDK reports code 'Unknown'."""
    return document(
        "Error",
        {
            "Code": code,
            "Message": message or code,
            "Resource": resource or "/",
            "RequestId": request_id,
            "TraceId": request_id,
        },
    )
