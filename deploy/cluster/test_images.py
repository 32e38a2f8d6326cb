"""Single-binary docker-archive images and the DNS probe's packets."""

import hashlib
import io
import json
import socket
import struct
import tarfile

import pytest

from deploy.cluster import dnsprobe, images


def test_write_archive_is_a_docker_archive(tmp_path):
    binary = tmp_path / "probe"
    binary.write_bytes(b"\x7fELF fake")
    archive = images.write_archive(tmp_path / "out.tar", "chanfleet.local/x:1", binary, ["/x"])
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert manifest[0]["RepoTags"] == ["chanfleet.local/x:1"]
        layer = tar.extractfile(manifest[0]["Layers"][0]).read()
        config = json.load(tar.extractfile(manifest[0]["Config"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/x"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as files:
        member = files.getmember("x")
        assert member.mode == 0o755
        assert files.extractfile(member).read() == b"\x7fELF fake"
        assert files.getmember("tmp").mode == 0o1777


def response(ident, rcode=0, addresses=()):
    question = dnsprobe.query("web.default.svc.cluster.local", ident)[12:]
    answers = b"".join(
        b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton(address)
        for address in addresses
    )
    header = struct.pack(">HHHHHH", ident, 0x8180 | rcode, 1, len(addresses), 0, 0)
    return header + question + answers


def test_query_encodes_labels():
    packet = dnsprobe.query("a.bc", 7)
    assert packet[:2] == b"\x00\x07"
    assert packet[12:] == b"\x01a\x02bc\x00\x00\x01\x00\x01"


def test_a_records_reads_answers_and_errors():
    assert dnsprobe.a_records(response(9, addresses=["10.96.0.7"]), 9) == ["10.96.0.7"]
    with pytest.raises(LookupError):
        dnsprobe.a_records(response(9, rcode=3), 9)
    with pytest.raises(LookupError):
        dnsprobe.a_records(response(8), 9)
