"""The real loaders on small files in the original formats, and the real ml-100k fetch."""

import gzip
import json
import zlib

import pyarrow.parquet as pq
import pytest

from r4ec.config import Settings
from r4ec.data import DataError, load_dataset
from r4ec.data.amazon import k_core
from r4ec.data.fetch import fetch_recbole_wheel
from r4ec.data.movielens import load_ml100k_grouplens, split_title_year
from r4ec.data.schema import ITEMS, RATINGS, USERS
from r4ec.files import written_atomically
from tests.conftest import amazon_settings


def read(path):
    return pq.read_table(path)


def test_ml1m_loader_keeps_every_rating_in_file_order(ml1m_files, tmp_path):
    folder, written = ml1m_files
    summary = load_dataset(Settings(data_dir=tmp_path, dataset="ml-1m", source_path=folder))
    ratings = read(summary.out_dir / "ratings.parquet")
    assert ratings.schema.equals(RATINGS, check_metadata=False)
    assert ratings.num_rows == len(written)
    assert ratings.column("file_order").to_pylist() == list(range(len(written)))
    rows = ratings.to_pylist()
    assert [(int(r["user_id"]), int(r["item_id"]), r["rating"], r["timestamp"]) for r in rows] == written
    assert summary.rejects == {}


def test_ml1m_items_and_users_are_parsed(ml1m_files, tmp_path):
    summary = load_dataset(Settings(data_dir=tmp_path, dataset="ml-1m", source_path=ml1m_files[0]))
    items = {r["item_id"]: r for r in read(summary.out_dir / "items.parquet").to_pylist()}
    assert items["7"]["title"] == "Movie 7 é" and items["7"]["year"] == 1957
    assert items["10"]["title"] == "Movie 10, The"
    assert all(1 <= len(item["genres"]) <= 3 for item in items.values())
    users = read(summary.out_dir / "users.parquet")
    assert users.schema.equals(USERS, check_metadata=False)
    by_id = {r["user_id"]: r for r in users.to_pylist()}
    assert by_id["12"]["occupation"] == "programmer" and by_id["12"]["gender"] == "M"


@pytest.mark.parametrize(
    "text, expected",
    [("Toy Story (1995)", ("Toy Story", 1995)), ("City of Lost Children, The (1995) ", ("City of Lost Children, The", 1995)),
     ("unknown", ("unknown", None)), ("1984 (1984)", ("1984", 1984))],
)  # fmt: skip
def test_split_title_year(text, expected):
    assert split_title_year(text) == expected


def test_malformed_lines_are_counted_and_written_with_line_numbers(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "ratings.dat").write_text(
        "1::10::5::978300760\n"
        "1::11::3\n"  # line 2: missing field
        "2::10::seven::978300761\n"  # line 3: rating not a number
        "2::12::9::978300762\n"  # line 4: rating out of range
        "::13::4::978300763\n"  # line 5: empty user
        "3::10::4::soon\n"  # line 6: timestamp not an integer
        "3::14::2::978300799\n",
        encoding="latin-1",
    )
    (folder / "movies.dat").write_text("10::A (1990)::Drama\n11::B (1991)::\n", encoding="latin-1")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::X::56::16::70072\n3::M::25::99::55117\n")
    summary = load_dataset(Settings(data_dir=tmp_path / "data", dataset="ml-1m", source_path=folder))
    assert summary.counts == {"ratings": 2, "items": 1, "users": 1}
    rejects = read(summary.out_dir / "rejects.parquet").to_pylist()
    got = {(r["file"], r["line_number"]): r["reason"] for r in rejects}
    assert got == {
        ("ratings.dat", 2): "expected 4 fields, found 3",
        ("ratings.dat", 3): "rating is not a number: 'seven'",
        ("ratings.dat", 4): "rating 9.0 outside [1, 5]",
        ("ratings.dat", 5): "user_id is empty",
        ("ratings.dat", 6): "timestamp is not an integer: 'soon'",
        ("movies.dat", 2): "no genre",
        ("users.dat", 2): "gender is not M or F: 'X'",
        ("users.dat", 3): "unknown occupation code 99",
    }
    assert rejects[0]["line"] == "1::11::3"
    line = summary.line()
    assert "8 lines rejected" in line and "see rejects.parquet" in line
    # what was good is kept, with its original file order
    assert read(summary.out_dir / "ratings.parquet").column("file_order").to_pylist() == [0, 1]


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"ratings\.dat: file not found"):
        load_dataset(Settings(data_dir=tmp_path, dataset="ml-1m", source_path=tmp_path))
    folder = tmp_path / "amazon"
    folder.mkdir()
    (folder / "Books_5.json.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=r"Books_5\.json\.gz: cannot be read"):
        load_dataset(amazon_settings(tmp_path, folder))


def test_ml100k_grouplens_format(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    flags = ["0"] * 19
    flags[3] = flags[4] = flags[5] = "1"
    (folder / "u.item").write_bytes(f"242|Kolya (1996)|24-Jan-1997||http://x|{'|'.join(flags)}\n".encode("latin-1"))
    (folder / "u.user").write_text("196|49|M|writer|55105\n")
    summary = load_ml100k_grouplens(folder, tmp_path / "out")
    assert summary.counts == {"ratings": 2, "items": 1, "users": 1}
    item = read(summary.out_dir / "items.parquet").to_pylist()[0]
    assert (item["title"], item["year"], item["genres"]) == ("Kolya", 1996, ["Animation", "Children's", "Comedy"])


def naive_k_core(reviews, min_user, min_item):
    kept = list(reviews)
    while True:
        users, items = {}, {}
        for user, item, *_ in kept:
            users[user] = users.get(user, 0) + 1
            items[item] = items.get(item, 0) + 1
        smaller = [r for r in kept if users[r[0]] >= min_user and items[r[1]] >= min_item]
        if len(smaller) == len(kept):
            return kept
        kept = smaller


def test_amazon_loader_applies_the_k_core_until_it_holds(amazon_files, tmp_path):
    folder, reviews = amazon_files
    summary = load_dataset(amazon_settings(tmp_path, folder))
    ratings = read(summary.out_dir / "ratings.parquet")
    expected = naive_k_core(reviews, 5, 4)
    assert 0 < len(expected) < len(reviews)
    got = [(r["user_id"], r["item_id"], r["rating"], r["timestamp"]) for r in ratings.to_pylist()]
    assert got == expected  # same rows, same (file) order
    rounds = int(summary.notes[0].split(" rounds")[0].rsplit(" ", 1)[1])
    assert rounds >= 3, "the sample is meant to need several rounds"
    items = {r["item_id"]: r for r in read(summary.out_dir / "items.parquet").to_pylist()}
    assert read(summary.out_dir / "items.parquet").schema.equals(ITEMS, check_metadata=False)
    assert set(items) == {item for _, item, *_ in expected}
    book = items["B0001X"]
    assert (book["title"], book["brand"], book["categories"]) == ("Book 1", "Author 1", ["Books", "History", "Sub"])
    assert items["B0000X"]["brand"] is None  # empty brand is no brand


def test_amazon_bad_json_is_rejected_not_fatal(amazon_files, tmp_path):
    folder = tmp_path / "amazon"
    folder.mkdir()
    with gzip.open(amazon_files[0] / "Books_5.json.gz", "rt") as original:
        good = original.read().splitlines()
    bad = ['{"overall": 5.0, "reviewerID": "U1"', '{"overall": 5.0, "reviewerID": "U1", "unixReviewTime": 1}', "[1, 2]"]
    with gzip.open(folder / "Books_5.json.gz", "wt") as out:
        out.write("\n".join(good[:3] + bad + good[3:]) + "\n")
    (folder / "meta_Books.json.gz").write_bytes((amazon_files[0] / "meta_Books.json.gz").read_bytes())
    summary = load_dataset(amazon_settings(tmp_path / "data", folder))
    rejects = read(summary.out_dir / "rejects.parquet").to_pylist()
    assert [(r["line_number"], r["reason"].split(" (")[0]) for r in rejects] == [
        (4, "invalid JSON"), (5, "missing field asin"), (6, "line is not a JSON object"),
    ]  # fmt: skip


def test_k_core_on_a_hand_made_chain(tmp_path):
    """u3 leaves first, which starves item c, which then starves u2: three rounds that drop something."""
    import pyarrow as pa

    rows = [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"), ("u3", "c"), ("u4", "a"), ("u4", "b")]
    table = pa.Table.from_pylist(
        [{"user_id": u, "item_id": i, "rating": 5.0, "timestamp": 0, "file_order": n} for n, (u, i) in enumerate(rows)],
        schema=RATINGS,
    )
    pq.write_table(table, tmp_path / "r.parquet")
    kept, rounds = k_core(tmp_path / "r.parquet", min_user=2, min_item=2)
    assert sorted(zip(kept.column("user_id").to_pylist(), kept.column("item_id").to_pylist())) == [
        ("u1", "a"), ("u1", "b"), ("u4", "a"), ("u4", "b"),
    ]  # fmt: skip
    assert rounds == 3


def test_recbole_copy_is_verified(downloads):
    folder = fetch_recbole_wheel(downloads)
    inter = folder / "ml-100k.inter"
    original = inter.read_bytes()
    try:
        inter.write_bytes(original.replace(b"196\t242\t3", b"196\t242\t4", 1))
        with pytest.raises(DataError, match="checksum mismatch"):
            fetch_recbole_wheel(downloads)
    finally:
        inter.write_bytes(original)


def test_malformed_ids_are_rejects_per_format(amazon_files, tmp_path):
    """MovieLens ids are integers, Amazon ids printable text without spaces: an id holding a control character is
    a reject with its line, never a crash and never an id (str.strip would turn '\\x1f3' into a clean '3')."""
    ml1m = tmp_path / "ml-1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_text(
        "1::10::5::978300760\n"
        "1\x07::10::4::978300761\n"  # line 2: a bell in the user id
        "\x1f3::10::4::978300762\n"  # line 3: a unit separator str.strip() would remove
        "2::1O::3::978300763\n"  # line 4: letter O
        "+4::10::3::978300764\n",  # line 5: int() takes it, an id does not
        encoding="latin-1",
    )
    (ml1m / "movies.dat").write_text("10::A (1990)::Drama\n1\x000::B (1991)::Comedy\n", encoding="latin-1")
    (ml1m / "users.dat").write_text("1::F::1::10::48067\nu2::M::56::16::70072\n")
    summary = load_dataset(Settings(data_dir=tmp_path / "ml1m-data", dataset="ml-1m", source_path=ml1m))
    assert summary.counts == {"ratings": 1, "items": 1, "users": 1}
    assert {(r["file"], r["line_number"]): r["reason"] for r in read(summary.out_dir / "rejects.parquet").to_pylist()} == {
        ("ratings.dat", 2): "user_id is not an integer: '1\\x07'",
        ("ratings.dat", 3): "user_id is not an integer: '\\x1f3'",
        ("ratings.dat", 4): "item_id is not an integer: '1O'",
        ("ratings.dat", 5): "user_id is not an integer: '+4'",
        ("movies.dat", 2): "item_id is not an integer: '1\\x000'",
        ("users.dat", 2): "user_id is not an integer: 'u2'",
    }  # fmt: skip

    ml100k = tmp_path / "ml-100k"
    ml100k.mkdir()
    (ml100k / "u.data").write_text("196\t242\t3\t881250949\n19\x1b6\t242\t4\t881250950\n")
    (ml100k / "u.item").write_bytes(f"242|Kolya (1996)|24-Jan-1997||http://x|{'|'.join(['0'] * 18 + ['1'])}\n".encode())
    (ml100k / "u.user").write_text("196|49|M|writer|55105\n")
    summary = load_ml100k_grouplens(ml100k, tmp_path / "ml100k-data")
    assert summary.counts["ratings"] == 1
    assert [(r["line_number"], r["reason"]) for r in read(summary.out_dir / "rejects.parquet").to_pylist()] == [
        (2, "user_id is not an integer: '19\\x1b6'")
    ]

    books = tmp_path / "amazon"
    books.mkdir()
    with gzip.open(amazon_files[0] / "Books_5.json.gz", "rt") as original:
        good = original.read().splitlines()
    bad = [{"reviewerID": "U0\x0001"}, {"asin": "B0001 X"}, {"reviewerID": 17}, {"asin": "B0001X\u200b"}]
    records = [json.loads(line) for line in good[:4]]
    with gzip.open(books / "Books_5.json.gz", "wt") as out:
        out.write("\n".join([*good[:3], *(json.dumps({**r, **b}) for r, b in zip(records, bad)), *good[3:]]) + "\n")
    (books / "meta_Books.json.gz").write_bytes((amazon_files[0] / "meta_Books.json.gz").read_bytes())
    summary = load_dataset(amazon_settings(tmp_path / "amazon-data", books))
    rejects = read(summary.out_dir / "rejects.parquet").to_pylist()
    assert [(r["line_number"], r["reason"]) for r in rejects] == [
        (4, "reviewerID is not printable text without spaces: 'U0\\x0001'"),
        (5, "asin is not printable text without spaces: 'B0001 X'"),
        (6, "reviewerID is not a string: 17"),
        (7, "asin is not printable text without spaces: 'B0001X\\u200b'"),
    ]  # fmt: skip
    ratings = read(summary.out_dir / "ratings.parquet")
    assert all(value.isprintable() and " " not in value for value in ratings.column("user_id").to_pylist())


def test_a_truncated_gzip_keeps_the_lines_before_the_damage_and_says_where(amazon_files, tmp_path):
    """Cut Books_5.json.gz short: the whole lines before the cut are loaded exactly as a file of only those lines
    would be; the damage is a reject and a note with its line and byte offset; no staging file is left behind."""
    whole = gzip.decompress((amazon_files[0] / "Books_5.json.gz").read_bytes())
    compressed = gzip.compress(whole)
    cut = compressed[: len(compressed) * 2 // 3]
    readable = zlib.decompressobj(wbits=31).decompress(cut)  # what any reader can still get out of it
    kept = readable[: readable.rindex(b"\n") + 1]
    damaged_line, offset = kept.count(b"\n") + 1, len(kept)
    assert 100 < damaged_line - 1 < whole.count(b"\n")

    damaged, intact = tmp_path / "damaged", tmp_path / "intact"
    for folder, reviews in ((damaged, cut), (intact, gzip.compress(kept))):
        folder.mkdir()
        (folder / "Books_5.json.gz").write_bytes(reviews)
        (folder / "meta_Books.json.gz").write_bytes((amazon_files[0] / "meta_Books.json.gz").read_bytes())
    summary = load_dataset(amazon_settings(tmp_path / "damaged-data", damaged))
    reference = load_dataset(amazon_settings(tmp_path / "intact-data", intact))

    assert read(summary.out_dir / "ratings.parquet").equals(read(reference.out_dir / "ratings.parquet"))
    (reject,) = read(summary.out_dir / "rejects.parquet").to_pylist()
    assert (reject["file"], reject["line_number"]) == ("Books_5.json.gz", damaged_line)
    assert reject["reason"].startswith("damaged gzip: Compressed file ended before the end-of-stream marker")
    assert f"line {damaged_line:,} (uncompressed byte {offset:,})" in reject["reason"]
    assert reject["line"] == readable[offset:].decode()  # the partial line, as far as it goes
    line = summary.line()
    assert f"Books_5.json.gz is damaged at line {damaged_line:,} (uncompressed byte {offset:,})" in line
    assert f"{damaged_line - 1:,} lines before it were read" in line and "1 lines rejected" in line
    assert sorted(p.name for p in summary.out_dir.iterdir()) == [
        "items.parquet", "ratings.parquet", "rejects.parquet", "users.parquet",
    ]  # fmt: skip


def test_a_failed_load_leaves_no_staging_file(tmp_path):
    """The reviews are streamed into a staging parquet before the k-core; a load that stops there removes it."""
    folder = tmp_path / "amazon"
    folder.mkdir()
    (folder / "Books_5.json.gz").write_bytes(b"this is not gzip")
    settings = amazon_settings(tmp_path / "data", folder)
    with pytest.raises(DataError, match=r"Books_5\.json\.gz: cannot be read"):
        load_dataset(settings)
    assert list(settings.raw_dir.iterdir()) == []


def test_a_file_written_atomically_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "table.bin"
    with pytest.raises(RuntimeError), written_atomically(target) as partial:
        partial.write_bytes(b"half")
        raise RuntimeError("died while writing")
    assert list((tmp_path / "out").iterdir()) == []
    with written_atomically(target) as partial:
        partial.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list((tmp_path / "out").iterdir()) == [target]
