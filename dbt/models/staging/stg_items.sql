select
    cast(item_id as varchar) as item_id,
    title,
    cast(year as integer) as release_year,
    cast(coalesce(genres, []) as varchar[]) as genres,
    brand,
    cast(coalesce(categories, []) as varchar[]) as categories
from {{ source('raw', 'items') }}
