"""The raw tables every dataset source writes: one schema across ml-100k, ml-1m and amazon-books-2018."""

import pyarrow as pa

RATINGS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("rating", pa.float64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),  # seconds since the epoch, UTC
        pa.field("file_order", pa.int64(), nullable=False),  # 0-based position in the original file
    ]
)

ITEMS = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("year", pa.int32()),
        pa.field("genres", pa.list_(pa.string())),  # movies
        pa.field("brand", pa.string()),  # books
        pa.field("categories", pa.list_(pa.string())),  # books: the category path, top level first
    ]
)

USERS = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("age", pa.int32()),
        pa.field("gender", pa.string()),
        pa.field("occupation", pa.string()),
        pa.field("zip_code", pa.string()),
    ]
)

REJECTS = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),
        pa.field("line_number", pa.int64(), nullable=False),  # 1-based, as an editor shows it
        pa.field("reason", pa.string(), nullable=False),
        pa.field("line", pa.string()),
    ]
)

TABLES = {"ratings": RATINGS, "items": ITEMS, "users": USERS}
