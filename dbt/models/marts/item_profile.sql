-- Feature table: an item's static attributes, valid from the start of the dataset.
select
    items.item_id,
    (select min(event_timestamp) from {{ ref('int_interactions') }}) as event_timestamp,
    items.title,
    items.release_year,
    items.genres,
    items.categories,
    items.category,
    items.brand
from {{ ref('int_items') }} as items
order by items.item_id
