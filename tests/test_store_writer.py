"""The store writer: Go's JSON bytes, atomic files, names, copies, deletions, commits."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson
import pytest

from bridge.models.names import ModelName
from bridge.models.ollama_store import StoreError
from bridge.models.store_writer import (
    CONFIG_MEDIA_TYPE,
    Descriptor,
    DigestMismatch,
    StoreWriter,
    go_json,
    manifest_bytes,
    media_type,
    parse_manifest,
)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def leftovers(root: Path) -> list[str]:
    """Temporary files anywhere in the store (there must never be any after an operation)."""
    return sorted(p.name for p in root.rglob(".tmp-*"))


@pytest.fixture
def writer(tmp_path: Path) -> StoreWriter:
    return StoreWriter(tmp_path / "models")


def model(writer: StoreWriter, name: str, *contents: bytes) -> ModelName:
    """A model whose layers hold `contents` (first one the weights)."""
    n = ModelName.parse(name)
    layers = []
    for i, data in enumerate(contents):
        digest, _ = writer.put_bytes(data)
        kind = "model" if i == 0 else "license"
        layers.append(Descriptor(media_type(kind), digest, len(data)))
    config, _ = writer.put_bytes(b"{}")
    writer.write_manifest(n, manifest_bytes(Descriptor(CONFIG_MEDIA_TYPE, config, 2), layers))
    return n


# --- Go's encoding/json -------------------------------------------------------------------------


def test_go_json_escapes_html_and_sorts_only_maps() -> None:
    assert go_json({"stop": ["<|im_start|>", "a&b"]}) == (
        b'{"stop":["\\u003c|im_start|\\u003e","a\\u0026b"]}\n'
    )
    assert (
        go_json({"b": 1, "a": {"d": 2, "c": 3}}, sort_keys=True) == b'{"a":{"c":3,"d":2},"b":1}\n'
    )
    assert go_json({"b": 1, "a": 2}, newline=False) == b'{"b":1,"a":2}'


def test_go_json_numbers_and_controls_as_go_writes_them() -> None:
    assert go_json([1.0, 0.7, 1e-7, 1e21, 0.00001, -2.5, 0.0], newline=False) == (
        b"[1,0.7,1e-7,1e+21,0.00001,-2.5,0]"
    )
    assert (
        go_json("a\u0001\b\f\n\t\u2028é", newline=False) == b'"a\\u0001\\b\\f\\n\\t\\u2028\xc3\xa9"'
    )


def test_manifest_bytes_are_ollamas() -> None:
    cfg = Descriptor(CONFIG_MEDIA_TYPE, "sha256:" + "c" * 64, 10)
    layers = [Descriptor(media_type("model"), "sha256:" + "a" * 64, 5, from_="m.gguf")]
    assert manifest_bytes(cfg, layers) == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json",'
        b'"digest":"sha256:' + b"c" * 64 + b'","size":10},'
        b'"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:'
        + b"a" * 64
        + b'","size":5,"from":"m.gguf"}]}\n'
    )


def test_parse_manifest_refuses_digests_that_escape_the_store() -> None:
    bad = {"layers": [{"mediaType": "x", "digest": "sha256:../../etc/passwd", "size": 1}]}
    with pytest.raises(StoreError):
        parse_manifest(orjson.dumps(bad))


# --- blobs ------------------------------------------------------------------------------------


def test_put_bytes_is_content_addressed_and_idempotent(writer: StoreWriter) -> None:
    d, created = writer.put_bytes(b"hello")
    assert d == digest_of(b"hello") and created
    assert writer.blob_path(d).read_bytes() == b"hello"
    assert writer.blob_path(d).name == "sha256-" + d[7:]
    assert writer.put_bytes(b"hello") == (d, False)
    assert oct(writer.blob_path(d).stat().st_mode & 0o777) == "0o644"
    assert leftovers(writer.root) == []


def test_sink_with_the_wrong_digest_leaves_nothing(writer: StoreWriter) -> None:
    sink = writer.sink()
    sink.write(b"some bytes")
    with pytest.raises(DigestMismatch) as info:
        sink.commit(digest_of(b"other bytes"))
    assert info.value.got == digest_of(b"some bytes")
    assert list(writer.blobs_dir.iterdir()) == []


def test_an_abandoned_sink_leaves_nothing(writer: StoreWriter) -> None:
    with writer.sink() as sink:
        sink.write(b"partial")
    assert list(writer.blobs_dir.iterdir()) == []


def test_blob_paths_only_for_real_digests(writer: StoreWriter) -> None:
    for bad in ("sha256:../x", "md5:" + "a" * 32, "sha256:" + "g" * 64, "sha256-" + "a" * 63):
        with pytest.raises(StoreError):
            writer.blob_path(bad)


# --- names, copy, delete ----------------------------------------------------------------------


def test_existing_name_reuses_the_stored_spelling(writer: StoreWriter) -> None:
    model(writer, "Llama3:Latest", b"w")
    assert writer.existing_name(ModelName.parse("llama3:LATEST")).display == "Llama3:Latest"
    # Part by part, as Ollama's getExistingName does: the tag matches an existing tag.
    assert writer.existing_name(ModelName.parse("other")).display == "other:Latest"


def test_copy_shares_blobs_and_delete_keeps_what_others_use(writer: StoreWriter) -> None:
    a = model(writer, "a", b"weights", b"license-a")
    writer.copy(a, ModelName.parse("b"))
    b_path = writer.manifest_path(ModelName.parse("b"))
    assert b_path.read_bytes() == writer.manifest_path(a).read_bytes()
    blobs = sorted(p.name for p in writer.blobs_dir.iterdir())

    assert writer.delete(a) == []  # b still uses every blob
    assert sorted(p.name for p in writer.blobs_dir.iterdir()) == blobs
    removed = writer.delete(ModelName.parse("b"))
    assert len(removed) == 3
    assert list(writer.blobs_dir.iterdir()) == []
    # Empty folders go too; the manifests folder itself stays.
    assert list(writer.manifests_dir.iterdir()) == []


def test_delete_of_one_model_keeps_blobs_shared_with_another(writer: StoreWriter) -> None:
    a = model(writer, "a", b"shared", b"only-a")
    model(writer, "ns/b:v1", b"shared")
    assert writer.delete(a) == [digest_of(b"only-a")]
    assert writer.has_blob(digest_of(b"shared"))
    assert writer.has_blob(digest_of(b"{}"))


def test_copy_or_delete_of_a_missing_model(writer: StoreWriter) -> None:
    with pytest.raises(FileNotFoundError):
        writer.copy(ModelName.parse("nope"), ModelName.parse("x"))
    with pytest.raises(FileNotFoundError):
        writer.delete(ModelName.parse("nope"))


def test_commit_model_writes_blobs_then_manifest(writer: StoreWriter) -> None:
    weights, _ = writer.put_bytes(b"weights")
    name = ModelName.parse("made")
    cfg = b'{"model_format":"gguf"}\n'
    layers = [
        Descriptor(media_type("model"), weights, 7),
        Descriptor(media_type("system"), digest_of(b"be brief"), 8),
    ]
    raw, created = writer.commit_model(
        name,
        Descriptor(CONFIG_MEDIA_TYPE, digest_of(cfg), len(cfg)),
        layers,
        {digest_of(b"be brief"): b"be brief", digest_of(cfg): cfg},
    )
    assert writer.manifest_path(name).read_bytes() == raw
    assert set(created) == {digest_of(b"be brief"), digest_of(cfg)}
    assert leftovers(writer.root) == []


def test_a_failed_commit_leaves_no_manifest_and_no_new_blobs(writer: StoreWriter) -> None:
    name = ModelName.parse("broken")
    missing = Descriptor(media_type("model"), digest_of(b"never uploaded"), 3)
    with pytest.raises(StoreError):
        writer.commit_model(
            name,
            Descriptor(CONFIG_MEDIA_TYPE, digest_of(b"{}"), 2),
            [missing],
            {digest_of(b"{}"): b"{}"},
        )
    assert not writer.manifest_path(name).exists()
    assert list(writer.blobs_dir.iterdir()) == []


def test_manifest_writes_replace_whole_files(writer: StoreWriter) -> None:
    name = ModelName.parse("m")
    writer.write_manifest(name, b"one")
    writer.write_manifest(name, b"two")
    path = writer.manifest_path(name)
    assert path.read_bytes() == b"two"
    assert sorted(os.listdir(path.parent)) == ["latest"]
