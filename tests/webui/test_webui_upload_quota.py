"""Upload volume: bytes per client per minute, and the total kept on disk."""

from webui.upload_quota import UploadRate, UploadStore

MB = 1024 * 1024


def test_each_client_uploads_at_most_its_rate_per_minute():
    now = [0.0]
    rate = UploadRate(10 * MB, clock=lambda: now[0])
    assert rate.wait_for("10.0.0.1", 6 * MB) == 0
    now[0] = 20.0
    assert rate.wait_for("10.0.0.1", 4 * MB) == 0
    # 10 MB in the last minute: the next byte waits until the first upload is a minute old.
    assert rate.wait_for("10.0.0.1", 1) == 40.0
    assert rate.wait_for("10.0.0.2", 10 * MB) == 0  # another client has its own allowance
    now[0] = 60.0
    assert rate.wait_for("10.0.0.1", 6 * MB) == 0
    assert rate.wait_for("10.0.0.1", 1) == 20.0


def test_the_oldest_uploads_go_when_storage_is_full(tmp_path):
    forgotten = []
    store = UploadStore(5 * MB, forget=forgotten.append)
    paths = []
    for i in range(4):
        folder = tmp_path / f"hash{i}"
        folder.mkdir()
        path = folder / f"image{i}.png"
        path.write_bytes(b"x" * 10)
        paths.append(str(path))
        store.add([str(path)], 2 * MB)
    # 8 MB charged against 5 MB: the two oldest uploads are deleted, with their folders.
    assert forgotten == paths[:2]
    assert [(tmp_path / f"hash{i}").exists() for i in range(4)] == [False, False, True, True]
    assert store.total_bytes == 4 * MB
